"""What a deployment tells a worker: the variables it reads, its call capacity and health port, and the one function
that builds its environment (``worker_env``: the ECS task definition, the stack's local worker processes and the
rehearsal's containers all call it; ``contract.settings.WorkerSettings`` reads it back).
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field

from contract.metadata import MODEL_KINDS, AgentConfig

AGENT_NAME_ENV = "SIPHON_AGENT_NAME"
ENVIRONMENT_ENV = "SIPHON_ENVIRONMENT"  # the stack environment the worker serves; only `local` runs test models
MAX_JOBS_ENV = "SIPHON_MAX_JOBS"  # the worker's call capacity (calls at once), set by every deployment
DRAIN_TIMEOUT_ENV = "SIPHON_DRAIN_TIMEOUT"  # seconds to finish running calls after SIGTERM
METRIC_CLUSTER_ENV = "SIPHON_METRIC_CLUSTER"  # ECS names the call metric is published under (worker.call_metric)
METRIC_SERVICE_ENV = "SIPHON_METRIC_SERVICE"
CALL_PROTECTION_ENV = "SIPHON_CALL_PROTECTION_MINUTES"  # ECS task scale-in protection while calls run
HTTP_PORT_ENV = "SIPHON_HTTP_PORT"  # the worker's health server
HTTP_HOST_ENV = "SIPHON_HTTP_HOST"
DEATH_QUEUE_ENV = "SIPHON_DEATH_QUEUE_URL"  # SQS queue of the stack's stopped ECS tasks (worker.stopped_tasks)
AGENT_URI_ENV = "ECS_AGENT_URI"  # set by the ECS container agent in every task's containers
DEFAULT_METRIC_INTERVAL = 15.0  # seconds between call-metric lines (SIPHON_METRIC_INTERVAL, worker.call_metric)

MAX_PROTECTION_MINUTES = 2880  # ECS's limit for one task protection period (48 h)
CallProtectionMinutes = Annotated[int, Field(ge=1, le=MAX_PROTECTION_MINUTES)]
"""Minutes one ECS task scale-in protection period lasts (``worker.task_protection``), renewed while calls run."""
MAX_CALLS_LIMIT = 200  # upper bound of a capacity: one worker process supervises every call's job
CallCapacity = Annotated[int, Field(ge=1, le=MAX_CALLS_LIMIT)]
"""Calls one worker serves at once (``SIPHON_MAX_JOBS``; ``max_calls`` in a stack file and the ECS arguments)."""
DEFAULT_HTTP_PORT = 8081  # the worker's health server (the ECS health check probes it)


def max_calls_for(cpu_units: int, memory_mib: int) -> int:
    """Default call capacity of a worker with this much CPU (1024 = one vCPU) and memory: a call's job
    process takes about an eighth of a vCPU and 256 MiB with cloud models."""
    return max(1, min(cpu_units // 128, memory_mib // 256, MAX_CALLS_LIMIT))


def defaults_env_name(field_name: str) -> str:
    """The variable that sets one ``AgentConfig`` field of the worker defaults: ``SIPHON_DEFAULT_LLM`` for the
    model kinds, ``SIPHON_<FIELD>`` for the others (``SIPHON_SYSTEM_INSTRUCTIONS``, ``SIPHON_ALLOW_INTERRUPTIONS``)."""
    return f"SIPHON_DEFAULT_{field_name.upper()}" if field_name in MODEL_KINDS else f"SIPHON_{field_name.upper()}"


DEFAULTS_ENV: dict[str, str] = {name: defaults_env_name(name) for name in AgentConfig.model_fields}
"""AgentConfig field -> environment variable the worker reads its default for that field from."""


def defaults_env(layer: AgentConfig) -> dict[str, str]:
    """The variables that make a worker use ``layer`` as its defaults (JSON for what is not a string)."""
    values = layer.model_dump(mode="json")
    return {
        DEFAULTS_ENV[name]: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for name, v in values.items()
        if v is not None
    }


def worker_env(
    *,
    agent_name: str | None = None,
    environment: str | None = None,
    defaults: AgentConfig | None = None,
    max_calls: int | None = None,
    drain_timeout: int | None = None,
    metric_cluster: str | None = None,
    metric_service: str | None = None,
    call_protection_minutes: int | None = None,
    http_port: int | None = None,
    http_host: str | None = None,
    death_queue_url: str | None = None,
) -> dict[str, str]:
    """The environment that gives a worker these settings; a setting left ``None`` is not set (the worker's
    default applies). ``defaults``: the worker's default layer (``defaults_env``)."""
    values: dict[str, object] = {
        AGENT_NAME_ENV: agent_name,
        ENVIRONMENT_ENV: environment,  # outside `local`, the worker never runs the offline test models
        MAX_JOBS_ENV: max_calls,
        DRAIN_TIMEOUT_ENV: drain_timeout,
        METRIC_CLUSTER_ENV: metric_cluster,
        METRIC_SERVICE_ENV: metric_service,
        CALL_PROTECTION_ENV: call_protection_minutes,
        HTTP_PORT_ENV: http_port,
        HTTP_HOST_ENV: http_host,
        DEATH_QUEUE_ENV: death_queue_url,  # the worker recovers the calls of the stack's stopped tasks
    }
    env = {name: str(value) for name, value in values.items() if value is not None}
    return {**env, **(defaults_env(defaults) if defaults is not None else {})}
