"""The code base stays lint-clean, formatted and type-checked (ruff and mypy as configured in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(argv):
    run = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules a source file imports (``from x import y``: ``x``, and ``x.y`` when ``y`` may be a module);
    ``top_level_only``: only those run at import time (not in functions, not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = []
    if top_level_only:
        todo: list[ast.AST] = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                todo += node.orelse
            elif isinstance(node, ast.If | ast.Try | ast.With):
                todo += [*ast.iter_child_nodes(node)]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                nodes.append(node)
    else:
        nodes = list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_contract_package_imports_only_pydantic_phonenumbers_and_the_standard_library():
    """pydantic-settings (a base dependency) counts as pydantic: the worker's settings are the contract a deployment's
    environment is checked against."""
    allowed = {"contract", "pydantic", "pydantic_settings", "phonenumbers", *sys.stdlib_module_names}
    found = {
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "contract").rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] not in allowed
    }
    assert found == set()


def test_no_infra_module_imports_the_worker():
    found = {
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "infra").rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] == "worker"
    }
    assert found == set()


def test_the_worker_modules_import_each_other_without_a_cycle():
    """Every import counts, those inside functions too (none of the worker's may close a cycle)."""
    modules = {_module(p): p for p in (REPO / "worker").rglob("*.py")}
    graph = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module) :], module])
        if module not in done:
            for imported in sorted(graph[module]):
                visit(imported, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert graph["worker.main"], "the walk sees the worker's imports"
