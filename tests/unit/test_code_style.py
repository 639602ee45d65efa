"""The code stays in one style: ruff's lint rules and formatter (configured in pyproject.toml) pass on the repo."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = ["llama_index_twostage", "tests", "benchmarks", "examples"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *CHECKED], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


PACKAGE = REPO / "llama_index_twostage"
# Data flows one way: no folder imports what lies downstream of it, and no component reads the settings (the
# factory, the CLI and the evaluation hand each component its own config).
FORBIDDEN = {
    "store": ("ingest", "stage1", "stage2", "settings", "pipeline", "cli", "evaluation"),
    "ingest": ("stage1", "stage2", "settings", "pipeline", "cli", "evaluation"),
    "stage1": ("stage2", "settings", "pipeline", "cli", "evaluation"),
    "stage2": ("stage1", "settings", "pipeline", "cli", "evaluation"),
}


def imported_modules(path: Path) -> set[str]:
    """Every ``llama_index_twostage`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name.split(".", 2)[1] for name in found if name.startswith("llama_index_twostage.")}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_component_imports_downstream_or_the_settings(folder: str) -> None:
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(imported_modules(path) & set(FORBIDDEN[folder]))
        for path in (PACKAGE / folder).rglob("*.py")
    }
    assert {path: modules for path, modules in wrong.items() if modules} == {}
