"""``./dev local`` behaves like the deployment: ``local.processes`` workers per agent, a worker that dies is
restarted and logged, and only a server's death stops the environment."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from infra.stack.load import load, stack_path
from localenv.deploy import start_workers, worker_name
from localenv.manager import LocalEnv

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
