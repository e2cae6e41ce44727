"""A supervised child process: started in its own process group, logged to a file, health-checked, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service failed to start or become healthy; the message quotes its log."""


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file (empty if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Supervised:
    """One running service process."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    health: Callable[[], bool] | None = None
    restartable: bool = False  # a worker: restarted when it dies (``LocalEnv.revive``); a server's death stops all
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    started_at: float = field(default=0.0, init=False)  # time.monotonic() of the last start

    def start(self) -> None:
        """Start the process detached into its own process group, output to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float, check: Callable[[], bool] | None = None) -> float:
        """Poll ``check`` (default: the service's health check) until it passes; return seconds taken.

        Raise with the log tail if the process dies or the timeout passes.
        """
        check = check or self.health
        if check is None:
            raise ValueError(f"{self.name} has no health check")
        t0 = time.monotonic()
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ServiceError(
                    f"{self.name} exited with code {code} during start-up; log {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                if check():
                    return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise ServiceError(
                    f"{self.name} not healthy after {timeout:.0f}s; log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, for tests)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> bool:
        """SIGTERM the process (it shuts its own children down, as a container runtime would ask it to),
        then SIGKILL whatever is left of its process group after ``grace`` seconds or once it exits.

        Return True when the process itself exited on SIGTERM within ``grace`` (False: it had to be killed).
        """
        if self.proc is None:
            return True
        clean = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                clean = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        return clean
