"""The package as a user installs it: a wheel built from this checkout, in a fresh virtualenv outside the checkout,
runs the CLI and a default two-stage query (the editable install the tests otherwise use would hide missing
package data, such as ``auto``'s calibration pairs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def source_tree(into: Path) -> Path:
    """The checkout's sources (tracked, and new files git does not ignore) without what builds leave behind: an
    ``egg-info`` of the editable install would otherwise tell setuptools which data files to ship."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    return into


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel alone; the project's dependencies come from the test environment's
    site-packages as a plain path (its ``.pth`` hooks, the editable install of this package among them, do not run)."""
    root = tmp_path_factory.mktemp("installed")
    sources = source_tree(root / "sources")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", root / "dist", sources, cwd=root)
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    venv_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip()
    Path(venv_site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = (root / "dist").glob("llama_index_twostage-*.whl")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=root)
    return python.parent


def test_the_installed_wheel_runs_the_cli_and_a_default_query(venv_bin, tmp_path, embed_model_dir, rerank_model_dir):
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment |= {
        "TWOSTAGE_EMBED_MODEL": embed_model_dir,
        "TWOSTAGE_RERANK_MODEL": rerank_model_dir,
        "TWOSTAGE_PERSIST_DIR": str(tmp_path / "chroma"),
        "TWOSTAGE_MODEL_CACHE_DIR": str(tmp_path / "cache"),  # a fresh `auto` calibration: it reads the package data
        "TWOSTAGE_RECALL_K": "3",
        "TWOSTAGE_TOP_K": "2",
    }
    where = run(venv_bin / "python", "-c", "import llama_index_twostage as m; print(m.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv_bin.parent)), where  # the wheel's copy, not the checkout's
    assert not (Path(where).parent / "testing").exists()  # test support stays in tests/ (POSIX-only, checkout)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "volcano.txt").write_text("A volcano erupts when magma rises through the crust and escapes as lava.")
    (docs / "tides.txt").write_text("Ocean tides are caused mainly by the gravitational pull of the moon.")
    (docs / "insulin.txt").write_text("Insulin is a hormone made by the pancreas; it lowers blood glucose.")
    twostage = venv_bin / "twostage"
    assert "ingest" in run(twostage, "--help", cwd=tmp_path, env=environment)
    assert "3 added" in run(twostage, "ingest", docs, cwd=tmp_path, env=environment)
    info = run(twostage, "info", cwd=tmp_path, env=environment)
    assert "nodes:           3" in info and "rerank backend:  " in info
    answer = run(twostage, "query", "why does magma come out of a volcano?", cwd=tmp_path, env=environment)
    assert "volcano erupts" in answer.splitlines()[1]  # the best result, after the table's header
