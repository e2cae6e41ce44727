"""The worker's ``AgentServer``: its job processes (preload, prewarm, warm processes), its capacity gate, the
watchers of its calls (metric, ECS task protection, crash watch, call ledger) and the start check of its models."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Protocol

# No model weights at run time: never preload livekit-agents' bundled local inference models.
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")

from livekit.agents import (
    AgentServer,
    JobExecutorType,
    JobProcess,
    JobRequest,
)
from livekit.plugins import silero  # noqa: F401  (plugins register at import, on the main thread: not in prewarm)

from contract import models as specs
from contract.deployment import DEFAULTS_ENV, ENVIRONMENT_ENV
from contract.metadata import MODEL_KINDS, entry_fields
from contract.settings import SettingsError, WorkerSettings
from worker import stopped_tasks, turn_taking
from worker.call import Built, entrypoint, spec_key
from worker.call_metric import CallGauge
from worker.dead_job import CrashWatch
from worker.dead_worker import CallLedger, own_worker_id
from worker.models import bounds, registry
from worker.task_protection import TaskProtection

logger = logging.getLogger("siphon.worker")


def check_default_models(settings: WorkerSettings) -> list[str]:
    """Outside ``local``: build every default model once, at start (before the worker registers), so that a worker
    that could only answer with the wrong models never takes a call; raises ``SettingsError`` naming each variable
    and what is missing. Returns the plugin modules of the defaults (preloaded for the job processes)."""
    if settings.offline_models:
        return []
    problems: list[str] = []
    modules: list[str] = []
    for kind in MODEL_KINDS:
        variable, value = DEFAULTS_ENV[kind], getattr(settings.defaults, kind)
        if value is None:
            problems.append(f"{variable}: not set; set the agent's default {kind}, e.g. {specs.EXAMPLE_SPECS[kind]}")
            continue
        for field, spec in entry_fields(kind, value):  # a fallback chain: every entry, as validate checks them
            where = variable + field.removeprefix(kind).replace(".", " entry ")
            try:
                norm = specs.parse_spec(kind, spec)
                if specs.is_offline(norm):
                    raise registry.SpecUnavailable(specs.offline_refusal(norm))
                registry.build(norm)
            except (specs.SpecError, registry.SpecUnavailable) as err:
                problems.append(f"{where}: {err}")
                continue
            modules.append(specs.PROVIDERS[kind][norm.provider].module)
    if problems:
        where = f"{ENVIRONMENT_ENV}={settings.environment}" if settings.environment else f"{ENVIRONMENT_ENV} unset"
        raise SettingsError(
            f"the worker cannot build its default models ({where}; only `local` runs the offline test models):"
            + "".join(f"\n  {p}" for p in problems)
        )
    return sorted(set(modules))


def prewarm(proc: JobProcess) -> None:
    """Once per job process, before it is handed a call: settings, the default VAD (already loaded where the process
    was forked from the forkserver, ``worker.preload``), the default models."""
    settings = WorkerSettings.from_env()
    turn_taking.session_options(settings.defaults)  # lru-cached: a no-op where the forkserver preloaded it
    proc.userdata["settings"] = settings
    built: Built = {}
    vad = turn_taking.session_options(settings.defaults)["vad"]
    for kind in MODEL_KINDS:
        default = getattr(settings.defaults, kind)
        with contextlib.suppress(registry.SpecUnavailable):  # a call resolves it again, and says why it cannot
            r = registry.resolve(kind, default, None, offline=settings.offline_models, vad=vad,
                                 timeout=bounds.attempt_timeout(settings, kind))  # fmt: skip
            if not r.fallback_reason:
                built[(kind, spec_key(default))] = r
    proc.userdata["models"] = built


class CallWatcher(Protocol):
    """Told the number of running calls at every load computation; started with the server."""

    def observe(self, active: int) -> None:
        """Record the worker's current number of running calls."""

    def start(self) -> None:
        """Begin (a daemon thread)."""


PRELOAD = ["worker.preload"]
"""Imported once in the forkserver that job processes fork from (Linux): work no call should pay for."""


def build_server(settings: WorkerSettings | None = None, preload: list[str] | None = None) -> AgentServer:
    """The worker's ``AgentServer``, registered under the configured agent name; ``preload``: more modules for the
    job processes to fork with (the default models' plugins)."""
    settings = settings or WorkerSettings.from_env()
    kwargs: dict[str, object] = {}
    if settings.idle_processes is not None:
        kwargs["num_idle_processes"] = settings.idle_processes
    threshold = settings.load_threshold
    # With a capacity, the gate below decides exactly; livekit-agents' own check (an unlimited threshold turns
    # it off) counts each job waiting for a process as threshold / idle processes, and so turned bursts away.
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD if settings.job_executor == "thread" else JobExecutorType.PROCESS,
        load_threshold=math.inf if settings.max_jobs else threshold,
        port=settings.http_port,
        host=settings.http_host,
        drain_timeout=settings.drain_timeout,
        preload_modules=[*PRELOAD, *(preload or [])],
        **kwargs,  # type: ignore[arg-type]
    )
    on_request = None
    if settings.max_jobs:  # full at exactly max_jobs calls, for the server (target load) and for the worker
        capacity = settings.max_jobs
        # on ECS: the call metric the service scales on, and no scale-in stopping the task while it holds calls
        watchers: list[CallWatcher] = [w for w in (
            CallGauge.for_deployment(
                settings.metric_cluster, settings.metric_service, capacity, settings.metric_interval
            ),
            TaskProtection.for_task(settings.ecs_agent_uri, settings.call_protection_minutes),
        ) if w is not None]  # fmt: skip

        def load(s: AgentServer) -> float:
            active = len(s.active_jobs)
            for watcher in watchers:
                watcher.observe(active)
            return min(1.0, threshold * active / capacity)

        server.load_fnc = load
        on_request = CapacityGate(server, capacity)
        for watcher in watchers:
            watcher.start()
    server.setup_fnc = prewarm
    CrashWatch(settings.agent_name).attach(server)  # a job process that dies mid-call: its call is taken over
    # a worker that dies with calls: whoever sees it die (ECS, the local supervisor) has them taken over
    settings = settings.model_copy(update={"worker_id": own_worker_id(settings.worker_id)})
    CallLedger(settings.agent_name, settings.worker_id or "").attach(server)
    stopped_tasks.attach(server, settings)  # on ECS: recover the calls of the project's stopped tasks
    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=on_request)
    return server


class CapacityGate:
    """Accept a job only while running plus accepting jobs stay below the capacity.

    livekit-agents' own check estimates the load of jobs accepted but not yet running (a burst could
    overshoot, or be turned away while processes start); this count is exact. A refused job goes back to
    LiveKit (another worker, or none: the caller keeps ringing until the trunk's ringing timeout, then gets
    a SIP refusal).
    """

    def __init__(self, server: AgentServer, capacity: int) -> None:
        self._server = server
        self._capacity = capacity
        self._accepting = 0

    async def __call__(self, req: JobRequest) -> None:
        """Answer one job request."""
        busy = len(self._server.active_jobs) + self._accepting
        if busy >= self._capacity:
            logger.warning("at capacity; refusing the job", extra={"room": req.room.name, "capacity": self._capacity})
            await req.reject()
            return
        self._accepting += 1
        try:
            await req.accept()
        finally:
            self._accepting -= 1
