"""The environment manager starts, reports and tears down real processes, and explains failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    assert (  # stacks/local.yaml: two support-agent workers (local.processes: 2)
        "Local workers running: worker-support-agent, worker-support-agent-2, worker-sales-agent, "
        "worker-reminders-agent (a worker that dies is restarted)"
    ) in out.stdout
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


def _process_tree(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` (whatever its session), as pid -> start time (to tell reused pids)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        started[int(entry.name)] = fields[19]
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out[child] = started[child]
            todo.append(child)
    return out


def _alive(tree: dict[int, str]) -> list[str]:
    left = []
    for pid, start in tree.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[19] == start and fields[0] != "Z":
            left.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
    return left


def _dev_local(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`./dev local` as a terminal starts it: its own process group, output to a file we can read."""
    out = tmp_path / "dev-local.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(["./dev", "local", "--run-dir", str(tmp_path / "run"), *args], cwd=tools.REPO,
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while "Press Ctrl-C to stop." not in out.read_text(errors="replace"):
        assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, out.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    return proc, out


def test_one_ctrl_c_of_dev_local_stops_every_process_it_started_workers_first(tmp_path):
    proc, out = _dev_local(tmp_path)
    tree = _process_tree(proc.pid)
    names = " ".join(
        Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") for p in tree if Path(f"/proc/{p}").exists()
    )
    for service in ("redis-server", "livekit-server", "livekit-sip", "moto_server", "worker.main"):
        assert service in names, f"{service} not running under ./dev local"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole foreground group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C must not abort the teardown
    assert proc.wait(timeout=120) == 0, out.read_text()[-3000:]
    text = out.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert _alive(tree) == [], text[-2000:]
    log = (tmp_path / "run" / "worker-support-agent.log").read_text()
    assert "draining worker" in log or "shutting down" in log.lower(), log[-2000:]


def test_sigterm_to_siphon_local_stops_every_process_it_started(tmp_path):
    proc, out = _dev_local(tmp_path, "--no-deploy")
    tree = _process_tree(proc.pid)
    assert len(tree) >= 5
    argv = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in tree}
    leader = next(p for p, a in argv.items() if Path(a[0].decode()).name.startswith("python") and b"localenv.cli" in a)
    os.kill(leader, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    assert "Traceback" not in out.read_text()
    assert _alive(tree) == []
