"""While the worker holds calls, its ECS task is protected from scale-in and deployments.

Scaling on calls (``worker.call_metric``) also scales in, and ECS chooses which tasks to stop without
knowing which of them are talking to callers: a stopped task drains for at most ``stop_timeout_seconds``
(120 s on Fargate), then its calls are cut. ECS task scale-in protection is the fix AWS provides: a protected
task is skipped by service scale-in and by rolling deployments.

So, when ``ECS_AGENT_URI`` is set (the ECS agent sets it in every task) and the deployment asks for it
(``SIPHON_CALL_PROTECTION_MINUTES``), the worker:

- turns protection on (``PUT $ECS_AGENT_URI/task-protection/v1/state``) when its first call starts, for that
  many minutes;
- renews it every half period while calls continue;
- turns it off when the last call ends, so the task can be scaled in again.

If the worker dies, the protection lapses at the end of the period. A refused request (no permission, the
task is not part of a service) is logged with ECS's reason and retried every ``retry_s`` seconds; it never
affects a call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("siphon.worker")

STATE_PATH = "/task-protection/v1/state"

Put = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


def agent_put(agent_uri: str, timeout: float = 5.0) -> Put:
    """A PUT of a JSON body to the agent's task-protection endpoint: (HTTP status, JSON answer)."""

    def put(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            agent_uri.rstrip("/") + STATE_PATH,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as err:  # the agent answers refusals with a 4xx/5xx and a JSON reason
            return err.code, _json(err.read())

    return put


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": {"Message": raw[:200].decode(errors="replace")}}
    return value if isinstance(value, dict) else {}


def _reason(status: int, answer: dict[str, Any]) -> str:
    problem = answer.get("failure") or answer.get("error") or {}
    if isinstance(problem, dict):
        parts = [str(problem[k]) for k in ("Code", "Reason", "Message", "Detail") if problem.get(k)]
        if parts:
            return f"HTTP {status}: " + "; ".join(parts)
    return f"HTTP {status}: {json.dumps(answer)[:200]}"


class TaskProtection:
    """Keeps the task protected exactly while ``observe`` reports calls (a daemon thread talks to the agent)."""

    def __init__(
        self, put: Put, minutes: int, *, retry_s: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._put = put
        self._minutes = minutes
        self._retry_s = retry_s
        self._clock = clock
        self._active = 0
        self._protected = False
        self._renew_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()

    @classmethod
    def for_task(cls, agent_uri: str | None, minutes: int | None) -> TaskProtection | None:
        """The protection an ECS deployment asks for (both set), else None (outside ECS, or turned off)."""
        if not (agent_uri and minutes):
            return None
        return cls(agent_put(agent_uri), minutes)

    @property
    def protected(self) -> bool:
        """Whether the agent last confirmed the task as protected."""
        return self._protected

    def observe(self, active: int) -> None:
        """Record the worker's current number of calls; a change between none and some acts at once."""
        was, self._active = self._active, active
        if (was > 0) != (active > 0):
            self._wake.set()

    def step(self) -> float:
        """Bring the protection in line with the calls held; the seconds until the next step is due."""
        now = self._clock()
        if self._active > 0 and (not self._protected or now >= self._renew_at):
            if self._request(True):
                self._protected, self._renew_at = True, now + self._minutes * 30.0
            else:
                return self._retry_s
        elif self._active == 0 and self._protected:
            if self._request(False):
                self._protected = False
            else:
                return self._retry_s
        return max(self._renew_at - now, 0.0) if self._protected else self._retry_s

    def _request(self, enabled: bool) -> bool:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self._minutes
        try:
            status, answer = self._put(body)
        except OSError as err:  # the agent did not answer
            status, answer = 0, {"error": {"Message": f"{type(err).__name__}: {err}"}}
        protection = answer.get("protection")
        if status == 200 and isinstance(protection, dict):
            logger.info(
                "task scale-in protection " + ("on while calls run" if enabled else "off: no calls"),
                extra={"calls": self._active, "expires": protection.get("ExpirationDate"),
                       "minutes": self._minutes if enabled else None},
            )  # fmt: skip
            return True
        logger.warning(
            "ECS refused to change task scale-in protection; retrying",
            extra={"enabled": enabled, "reason": _reason(status, answer), "retry_s": self._retry_s},
        )
        return False

    def start(self) -> None:
        """Run ``step`` whenever calls start or stop, when a renewal is due, and to retry, until ``stop``."""
        threading.Thread(target=self._run, name="siphon-task-protection", daemon=True).start()

    def stop(self) -> None:
        """Stop acting (the last state stays with ECS until it expires)."""
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            delay = self.step()
            self._wake.wait(timeout=delay)
