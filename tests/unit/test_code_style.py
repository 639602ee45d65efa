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


# --- the import graph: one way only ---------------------------------------------------------------------------------

PACKAGE = REPO / "llama_index_twostage"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, modules: set[str]) -> set[str]:
    """The library's modules ``path`` imports anywhere: at the top, inside functions (lazily) or for types only."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; importing a package counts as importing what its ``__init__`` re-exports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    direct = {name: imported_names(path, set(paths)) - {name} for name, path in paths.items()}
    packages = {name for name, path in paths.items() if path.name == "__init__.py"}

    def through_packages(targets: set[str], seen: frozenset[str] = frozenset()) -> set[str]:
        expanded = set()
        for target in targets - seen:
            expanded |= through_packages(direct[target], seen | {target}) if target in packages else {target}
        return expanded

    return {name: through_packages(targets) for name, targets in direct.items() if name not in packages}


def a_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (a depth-first walk that meets a module still on its path), or []."""
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str]:
        for target in sorted(graph[node]):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done:
                circle = walk(target, [*path, target])
                if circle:
                    return circle
        done.add(node)
        return []

    return next(
        (circle for start in sorted(graph) if start not in done for circle in [walk(start, [start])] if circle), []
    )


def test_no_module_imports_one_that_imports_it_back():
    """Dependencies go one way (evaluation: artifacts -> compare -> runner -> report -> diagnosis -> traces), lazy and
    type-only imports included: a circle is a design that has not decided which side owns what."""
    graph = import_graph()
    evaluation = "llama_index_twostage.evaluation."
    assert evaluation + "plots" in graph[evaluation + "artifacts"]  # a lazy import counts
    assert evaluation + "traces" in graph[evaluation + "report"]
    assert a_circle(graph) == []
    assert a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# Data flows one way: no folder imports what lies downstream of it, and no component reads the settings (the
# factory, the CLI and the evaluation hand each component its own config).
FORBIDDEN = {
    "store": ("ingest", "stage1", "stage2", "settings", "pipeline", "cli", "evaluation"),
    "ingest": ("stage1", "stage2", "settings", "pipeline", "cli", "evaluation"),
    "stage1": ("stage2", "settings", "pipeline", "cli", "evaluation"),
    "stage2": ("stage1", "settings", "pipeline", "cli", "evaluation"),
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_component_imports_downstream_or_the_settings(folder: str) -> None:
    inside = f"llama_index_twostage.{folder}."
    wrong = {
        module: sorted({target.split(".")[1] for target in targets} & set(FORBIDDEN[folder]))
        for module, targets in import_graph().items()
        if module.startswith(inside)
    }
    assert {module: parts for module, parts in wrong.items() if parts} == {}
