"""The environment manager starts, reports and tears down real processes, and explains failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localenv import tools
from localenv.manager import LocalEnv
from localenv.process import ServiceError


def _pids_of(run_dir: Path, marker: str | None = None) -> list[int]:
    """PIDs of processes whose command line mentions the run folder, or whose environment holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                env = (entry / "environ").read_bytes().decode(errors="replace") if marker else ""
            except OSError:
                continue
            if str(run_dir) in cmd or (marker and marker in env):
                pids.append(int(entry.name))
    return pids


def test_readme_main_command_deploys_prints_routing_and_leaves_nothing_running(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "localenv.cli", "up", "--once", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for var in (
        "LIVEKIT_URL=ws://127.0.0.1:",
        "LIVEKIT_API_KEY=",
        "LIVEKIT_API_SECRET=",
        "AWS_ENDPOINT_URL=http://127.0.0.1:",
    ):
        assert f"export {var}" in out.stdout
    secret = next(line for line in out.stdout.splitlines() if "LIVEKIT_API_SECRET=" in line).split("=", 1)[1]
    assert len(secret) >= 32
    for log in ("redis.log", "livekit-server.log", "moto.log", "pulumi-up.log", "worker-support-agent.log"):
        assert (run_dir / log).stat().st_size > 0, log
    assert "Deployed stack `local`" in out.stdout
    assert "Local workers running: worker-support-agent, worker-sales-agent, worker-reminders-agent" in out.stdout
    assert "| +15550100100 | support" in out.stdout and "SDR_" in out.stdout
    url = next(line for line in out.stdout.splitlines() if "LIVEKIT_URL=" in line).split("=", 1)[1]
    assert _pids_of(run_dir, f"LIVEKIT_URL={url}") == [], "a service or worker outlived the command"


def test_a_service_that_dies_at_start_is_reported_with_its_log(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    broken = cache / f"livekit-server-{tools.LIVEKIT_SERVER_VERSION}" / "bin" / "livekit-server"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("SIPHON_CACHE", str(cache))
    run_dir = tmp_path / "run"
    with pytest.raises(ServiceError) as err:
        LocalEnv.start(run_dir)
    assert "livekit-server exited with code 3" in str(err.value)
    assert "boom: cannot start" in str(err.value)
    assert _pids_of(run_dir) == [], "redis and moto must be stopped when a later service fails"
