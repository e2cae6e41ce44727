"""``./dev local`` behaves like the deployment: ``local.processes`` workers per agent, a worker that dies is
restarted and logged, and only a server's death stops the environment."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from infra.stack.load import load, stack_path
from localenv.deploy import start_workers, worker_name
from localenv.manager import LocalEnv
from tests.test_localenv import _dev_local

STACK_PROCESSES = 2  # stacks/local.yaml: support-agent runs two local workers


def test_the_local_stack_runs_two_support_workers() -> None:
    stack, _ = load(stack_path("local"))
    local = stack.agents["support-agent"].local
    assert local is not None and local.processes == STACK_PROCESSES


def test_local_processes_run_n_workers_and_a_killed_worker_is_restarted_without_tearing_down(
    local_env: LocalEnv, tmp_path: Path
) -> None:
    """Two workers of one agent; one is killed (its whole process group, SIGKILL): the environment stays up (no
    ServiceError), the other worker is untouched, the killed one is started again, logged, and healthy within
    10 s."""
    agent = f"siphon-local-{uuid.uuid4().hex[:6]}"
    settings = {"SIPHON_ENVIRONMENT": "local", "SIPHON_MAX_JOBS": "2", "SIPHON_NUM_IDLE_PROCESSES": "1"}
    workers = start_workers(local_env, {agent: settings}, {agent: 2})
    try:
        assert [w.name for w in workers] == [worker_name(agent, 0), worker_name(agent, 1)] == [
            f"worker-{agent}", f"worker-{agent}-2"]  # fmt: skip
        victim, other = workers
        assert victim.proc is not None and other.proc is not None
        other_pid, victim_pid = other.proc.pid, victim.proc.pid
        killed = time.monotonic()
        victim.kill()
        lines: list[str] = []
        back = None
        while time.monotonic() - killed < 20:
            local_env.check_alive()  # a dead worker never stops the environment
            lines += local_env.revive()
            if victim.alive() and victim.proc.pid != victim_pid:
                try:
                    if victim.health is not None and victim.health():
                        back = time.monotonic() - killed
                        break
                except OSError:
                    pass
            time.sleep(0.2)
        assert back is not None, f"the killed worker is not back: {lines}\n{victim.log_path.read_text()[-2000:]}"
        assert back < 10.0, back
        assert len(lines) == 1 and lines[0].startswith(f"{victim.name} died (exit code -9); restarted"), lines
        assert f"siphon-local: {lines[0]}" in victim.log_path.read_text()
        assert other.alive() and other.proc.pid == other_pid, "the other worker is untouched"
        print(f"killed worker healthy again after {back:.2f}s")
    finally:
        for w in workers:
            local_env.release(w)


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent:
                out.append(int(entry.name))
    return out


def _descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _support_workers(root: int) -> list[int]:
    """Main processes of the support-agent workers under ``./dev local`` (the command ``worker.main start``)."""
    pids = []
    for pid in _descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.main" in cmd and b"start" in cmd and b"SIPHON_AGENT_NAME=support-agent" in env:
            pids.append(pid)
    return pids


def test_dev_local_with_two_workers_survives_the_kill_of_one_and_brings_it_back(tmp_path: Path) -> None:
    """``./dev local`` (stacks/local.yaml: two support-agent workers): one worker's process group is killed with
    SIGKILL; the environment stays up, says which worker died and that it restarted it, and the worker registers
    with LiveKit again within 10 s; Ctrl-C still stops everything."""
    proc, out = _dev_local(tmp_path)
    try:
        workers = _support_workers(proc.pid)
        assert len(workers) == STACK_PROCESSES, (workers, out.read_text()[-2000:])
        logs = [tmp_path / "run" / "worker-support-agent.log", tmp_path / "run" / "worker-support-agent-2.log"]

        def registered() -> int:
            return sum(p.read_text(errors="replace").count('"registered worker"') for p in logs)

        deadline = time.monotonic() + 60  # healthy (HTTP) comes before registered with LiveKit
        while registered() < STACK_PROCESSES and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registered() == STACK_PROCESSES, out.read_text()[-2000:]
        killed = time.monotonic()
        os.killpg(workers[0], signal.SIGKILL)
        back = None
        while time.monotonic() - killed < 30:
            assert proc.poll() is None, out.read_text()[-3000:]
            if registered() > STACK_PROCESSES:
                back = time.monotonic() - killed
                break
            time.sleep(0.1)
        text = out.read_text(errors="replace")
        assert back is not None and back < 10.0, (back, text[-3000:])
        assert "died (exit code -9); restarted" in text, text[-3000:]
        assert "siphon-local: worker-support-agent" in text, text[-3000:]
        assert len(_support_workers(proc.pid)) == STACK_PROCESSES
        print(f"./dev local: the killed worker registered again after {back:.2f}s")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 0, out.read_text()[-3000:]
