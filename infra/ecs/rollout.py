"""Waiting for a rolling deployment to finish (opt-in: moto never rolls a deployment out)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
    while True:
        service = describe()
        state = rollout_state(service, task_definition_arn)
        if state == "done":
            return
        if state == "failed":
            reasons = [d.get("rolloutStateReason", "") for d in service.get("deployments", [])]
            raise RolloutFailed(
                f"service {service.get('serviceName')!r}: rollout of {task_definition_arn} failed: "
                + "; ".join(r for r in reasons if r)
            )
        if clock() >= deadline:
            raise RolloutTimeout(
                f"service {service.get('serviceName')!r} did not reach a steady state on {task_definition_arn} "
                f"within {timeout_seconds:.0f}s (wait_for_steady_state / steady_state_timeout_seconds)"
            )
        sleep(poll_seconds)
