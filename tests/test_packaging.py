"""Product vs tooling: the wheel ships ``infra`` and ``worker`` only, and they never import development code."""

from __future__ import annotations

import ast
import shutil
import subprocess
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVELOPMENT = ("localenv", "bench", "tests")


def test_the_wheel_ships_infra_and_worker_only(tmp_path):
    uv = shutil.which("uv")
    assert uv, "uv is installed by ./dev setup"
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
        scripts = next(z.read(n).decode() for n in z.namelist() if n.endswith("entry_points.txt"))
    assert {t for t in tops if not t.endswith(".dist-info")} == {"infra", "worker"}
    assert "localenv" not in scripts and "siphon-infra = infra.cli:main" in scripts


def test_product_code_never_imports_development_code():
    offenders = []
    for path in [*(REPO / "infra").rglob("*.py"), *(REPO / "worker").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in DEVELOPMENT]
    assert offenders == []


def test_the_image_extra_installs_exactly_the_plugins_of_the_registered_model_providers():
    """What `validate` accepts is what the image can build: every provider in the registry has its LiveKit plugin in
    the `worker` extra (which the image installs), and the extra carries no model plugin the registry does not use."""
    import tomllib

    from worker.models.registry import PROVIDERS

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    pinned = {req.split("==")[0] for req in extra}
    registered = {p.package for kinds in PROVIDERS.values() for p in kinds.values() if not p.offline}
    plugins = {name for name in pinned if name.startswith("livekit-plugins-")} - {"livekit-plugins-silero"}  # VAD
    assert plugins == registered
    assert all("==" in req for req in extra), "the image installs exact versions"
