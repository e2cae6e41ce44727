"""Product vs tooling: ``contract``, ``infra`` and ``worker`` never import development code, and the worker image
carries every project package the worker imports (what the wheel ships: tests/test_wheel_contents.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVELOPMENT = ("localenv", "bench", "tests")
PRODUCT = ("contract", "infra", "worker")


def test_product_code_never_imports_development_code():
    offenders = []
    for path in [p for package in PRODUCT for p in (REPO / package).rglob("*.py")]:
        offenders += [f"{path.relative_to(REPO)}: {n}" for n in _imports(path) if n.split(".")[0] in DEVELOPMENT]
    assert offenders == []


def _imports(path: Path) -> list[str]:
    """The modules a source file imports (``from x import y``: ``x``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_the_worker_image_carries_every_project_package_the_worker_imports():
    """The image copies packages one by one (worker/Dockerfile, .dockerignore): each project package ``worker/`` (or
    what it imports) needs must be in the build context and copied, and ``infra`` never is."""
    needed, todo = set(), ["worker"]
    while todo:
        package = todo.pop()
        needed.add(package)
        todo += sorted(
            {n.split(".")[0] for p in (REPO / package).rglob("*.py") for n in _imports(p)} & set(PRODUCT) - needed
        )
    dockerfile = (REPO / "worker" / "Dockerfile").read_text()
    context = (REPO / ".dockerignore").read_text().splitlines()
    copied = {p for p in PRODUCT if f"COPY {p}/ /app/{p}/" in dockerfile and f"!{p}/" in context}
    assert needed == {"contract", "worker"}
    assert copied == needed


def test_the_image_extra_installs_exactly_the_plugins_of_the_registered_model_providers():
    """What `validate` accepts is what the image can build: every provider in the registry has its LiveKit plugin in
    the `worker` extra (which the image installs), and the extra carries no model plugin the registry does not use."""
    import tomllib

    from contract.models import PROVIDERS

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    pinned = {req.split("==")[0] for req in extra}
    registered = {p.package for kinds in PROVIDERS.values() for p in kinds.values() if not p.offline}
    plugins = {name for name in pinned if name.startswith("livekit-plugins-")} - {"livekit-plugins-silero"}  # VAD
    assert plugins == registered
    assert all("==" in req for req in extra), "the image installs exact versions"
