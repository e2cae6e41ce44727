"""The local supervisor reports a worker's death, as ECS reports a stopped task (``worker.dead_worker``).

``./dev local`` and the tests start workers as child processes, so they see every death at once: a thread per
worker waits for its process, and when it exits abnormally (killed, crashed), the dead worker's calls are
recovered (``worker.dead_worker.report_death``). When no other worker of its agent is running, its calls are
ended at once (a BYE) rather than offered to a worker that is not there.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable

from livekit import api

from worker.dead_worker import local_worker_id, report_death

logger = logging.getLogger("siphon.local")


class DeathWatch:
    """Watches worker processes; reports the abnormal exit of any to ``worker.dead_worker`` (module docstring)."""

    def __init__(self, livekit_url: str, api_key: str, api_secret: str, say: Callable[[str], object] = print) -> None:
        self._credentials = (livekit_url, api_key, api_secret)
        self._say = say
        self._agents: dict[subprocess.Popen[bytes], str] = {}
        self._lock = threading.Lock()
        self.reports: list[tuple[str, list[str]]] = []  # (worker id, outcome per call), in order

    def watch(self, proc: subprocess.Popen[bytes], agent_name: str) -> None:
        """Watch one worker process (its main process: the pid its call ledger is named by) of ``agent_name``."""
        with self._lock:
            self._agents[proc] = agent_name
        threading.Thread(target=self._wait, args=(proc,), name=f"death-watch-{proc.pid}", daemon=True).start()

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            agent = self._agents.pop(proc)
            alive = any(a == agent and p.poll() is None for p, a in self._agents.items())
        if code == 0:
            return  # a clean stop drained its calls first
        worker_id = local_worker_id(proc.pid)
        try:
            outcomes = report_death(worker_id, agent_alive=alive, make_api=lambda: api.LiveKitAPI(*self._credentials))
        except Exception as err:  # LiveKit unreachable: said, never raised into the supervisor
            outcomes = [f"recovery failed: {type(err).__name__}: {str(err)[:200]}"]
        self.reports.append((worker_id, outcomes))
        if outcomes:
            self._say(f"siphon-local: worker {worker_id} of {agent} died (exit code {code}); its calls: "
                      + "; ".join(outcomes))  # fmt: skip
