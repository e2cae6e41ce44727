"""The worker keeps its ECS task protected from scale-in exactly while it holds calls (``worker.task_protection``).

Over real HTTP against a local stand-in for the ECS agent's endpoint (``tests/ecs_agent_endpoint.py``); the
worker wiring is proven by a real call in ``tests/test_worker_live.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from contract.deployment import CALL_PROTECTION_ENV
from contract.settings import SettingsError, WorkerSettings
from tests.ecs_agent_endpoint import agent_endpoint
from worker.task_protection import TaskProtection, agent_put


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_call_protects_the_task_and_the_last_call_ending_releases_it() -> None:
    with agent_endpoint() as agent:
        tp = TaskProtection(agent_put(agent.uri), 30)
        tp.step()
        assert agent.puts == [], "no call, no request"
        tp.observe(1)
        tp.step()
        tp.observe(3)
        tp.step()
        assert agent.puts == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}] and tp.protected
        tp.observe(0)
        tp.step()
        assert agent.enabled() == [True, False] and not agent.protected and not tp.protected


def test_protection_is_renewed_every_half_period_while_calls_continue() -> None:
    clock = Clock()
    with agent_endpoint() as agent:
        tp = TaskProtection(agent_put(agent.uri), 10, clock=clock)
        tp.observe(1)
        assert tp.step() == 300.0, "next renewal in half of 10 minutes"
        clock.now += 299
        tp.step()
        assert len(agent.puts) == 1
        clock.now += 1
        tp.step()
        assert agent.enabled() == [True, True]


def test_a_refusal_is_logged_with_the_reason_ecs_gives_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    with agent_endpoint() as agent, caplog.at_level(logging.WARNING, "siphon.worker"):
        agent.refuse = True
        tp = TaskProtection(agent_put(agent.uri), 30, retry_s=7)
        tp.observe(1)
        assert tp.step() == 7 and not tp.protected
        assert "AccessDeniedException" in caplog.records[-1].reason  # type: ignore[attr-defined]
        agent.refuse = False
        tp.step()
        assert tp.protected and agent.enabled() == [True, True]


def test_an_agent_that_does_not_answer_is_retried_without_raising() -> None:
    tp = TaskProtection(agent_put("http://127.0.0.1:9", timeout=1), 30, retry_s=5)
    tp.observe(1)
    assert tp.step() == 5 and not tp.protected


def test_the_thread_acts_as_soon_as_calls_start_and_stop() -> None:
    with agent_endpoint() as agent:
        tp = TaskProtection(agent_put(agent.uri), 30, retry_s=60)
        tp.start()
        try:
            tp.observe(1)
            _wait(lambda: agent.enabled() == [True])
            tp.observe(0)
            _wait(lambda: agent.enabled() == [True, False])
        finally:
            tp.stop()


def _wait(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("the protection thread did not act within 5 s")


def test_outside_ecs_or_turned_off_there_is_no_protection() -> None:
    assert TaskProtection.for_task(None, 60) is None
    assert TaskProtection.for_task("http://169.254.170.2/api/x", None) is None
    assert TaskProtection.for_task("http://169.254.170.2/api/x", 60) is not None


def test_a_period_ecs_would_refuse_stops_the_worker_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CALL_PROTECTION_ENV, "0")
    with pytest.raises(SettingsError, match=CALL_PROTECTION_ENV):
        WorkerSettings.from_env()
