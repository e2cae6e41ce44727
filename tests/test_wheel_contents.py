"""The wheel ships the product only: ``contract``, ``infra`` and ``worker``, and no test, benchmark or rehearsal
tooling, neither as modules (``tests/``, ``localenv/``, ``bench/``) nor as code kept inside the product packages (the
sipp carrier, a benchmark's request log, a test's peek into a lock)."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("contract", "infra", "worker")
DEVELOPMENT = ("tests", "localenv", "bench")
# Code that serves only the tests, the benchmarks or the rehearsal, and was once in the product packages.
TOOLING = {
    "the sipp carrier (localenv/carrier.py)": re.compile(r"\bclass Carrier\b|\bdef uas_scenario\b|\bCarrier\("),
    "the benchmark request log (bench/sip_deploy.py Calls)": re.compile(r"SIPHON_LIVEKIT_CALL_LOG|CALL_LOG_ENV"),
    "Claims.held() for tests": re.compile(r"\bdef held\("),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = shutil.which("uv")
    assert uv, "uv is not installed: run `./dev setup` (it puts uv on PATH for ./dev test)"
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([uv, "build", "--wheel", "--out-dir", str(out), str(REPO)],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def _modules(wheel: zipfile.ZipFile) -> list[str]:
    return [n for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")]


def test_the_wheel_ships_contract_infra_and_worker_only(wheel: zipfile.ZipFile) -> None:
    files = _modules(wheel)
    assert {n.split("/")[0] for n in files} == set(PRODUCT)
    for package in PRODUCT:
        assert f"{package}/__init__.py" in files, package
    assert "infra/cli.py" in files and "worker/main.py" in files
    scripts = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "siphon-infra = infra.cli:main" in scripts and "siphon-worker = worker.main:main" in scripts
    assert "localenv" not in scripts
    print(f"{len(files)} files in the product packages ({len(wheel.namelist())} with the metadata)")


def test_the_wheel_holds_no_test_benchmark_or_rehearsal_module(wheel: zipfile.ZipFile) -> None:
    found = [n for n in wheel.namelist() if set(Path(n).parts[:-1]) & set(DEVELOPMENT)]
    found += [n for n in wheel.namelist() if Path(n).stem in DEVELOPMENT or Path(n).stem.startswith("test_")]
    assert found == []


def test_the_wheel_holds_no_tooling_code(wheel: zipfile.ZipFile) -> None:
    found = [
        f"{name}: {what}"
        for name in wheel.namelist()
        if name.endswith(".py")
        for what, pattern in TOOLING.items()
        if pattern.search(wheel.read(name).decode())
    ]
    assert found == []
