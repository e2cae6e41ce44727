"""Waiting for a rolling deployment to finish (opt-in: moto never rolls a deployment out)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tenacity


class RolloutFailed(RuntimeError):
    """The deployment circuit breaker stopped (and possibly rolled back) the rollout."""


class RolloutTimeout(TimeoutError):
    """The service did not reach a steady state in time."""


def rollout_state(service: dict[str, Any], task_definition_arn: str) -> str:
    """``done``, ``failed`` or ``pending`` for the deployment of ``task_definition_arn``.

    Done: the PRIMARY deployment runs that revision, is COMPLETED (or, where rolloutState is not
    reported, is the only deployment with running == desired).
    """
    deployments = service.get("deployments", [])
    for d in deployments:
        if d.get("taskDefinition") == task_definition_arn and d.get("rolloutState") == "FAILED":
            return "failed"
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
    if primary is None or primary.get("taskDefinition") != task_definition_arn:
        return "pending"
    state = primary.get("rolloutState")
    if state == "COMPLETED":
        return "done"
    if state is None and len(deployments) == 1 and primary.get("runningCount") == primary.get("desiredCount"):
        return "done"
    return "pending"


def wait_for_steady_state(
    describe: Callable[[], dict[str, Any]],
    task_definition_arn: str,
    timeout_seconds: float,
    *,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll ``describe()`` (returns the service) until the rollout is done; raise on failure or timeout."""
    deadline = clock() + timeout_seconds
    service = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda s: rollout_state(s, task_definition_arn) == "pending"),
        stop=lambda _: clock() >= deadline,
        wait=tenacity.wait_fixed(poll_seconds),
        sleep=sleep,
        retry_error_callback=lambda attempt: attempt.outcome.result() if attempt.outcome else {},
    )(describe)
    state, name = rollout_state(service, task_definition_arn), service.get("serviceName")
    if state == "failed":
        reasons = "; ".join(r for d in service.get("deployments", []) if (r := d.get("rolloutStateReason", "")))
        raise RolloutFailed(f"service {name!r}: rollout of {task_definition_arn} failed: {reasons}")
    if state == "pending":
        raise RolloutTimeout(
            f"service {name!r} did not reach a steady state on {task_definition_arn} within {timeout_seconds:.0f}s "
            "(wait_for_steady_state / steady_state_timeout_seconds)"
        )
