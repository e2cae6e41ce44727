"""The worker's settings, read from its environment when it starts (the variables are ``contract.deployment``'s,
and a deployment sets them with ``contract.deployment.worker_env``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from difflib import get_close_matches
from typing import Any, Literal

from pydantic import AliasChoices, AliasGenerator, Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.providers.env import parse_env_vars

from contract.deployment import (
    AGENT_NAME_ENV,
    AGENT_URI_ENV,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRIC_INTERVAL,
    DEFAULTS_ENV,
    MAX_CALLS_LIMIT,
    MAX_PROTECTION_MINUTES,
    CallCapacity,
    CallProtectionMinutes,
    defaults_env_name,
)
from contract.metadata import AgentConfig
from contract.resolve import worker_defaults
from contract.types import (
    DEFAULT_RING_TIMEOUT,
    LOCAL_ENVIRONMENT,
    EnvironmentName,
    LiveKitAgentName,
    RingTimeout,
    describe_errors,
)
from contract.wire import LIVEKIT_AGENT_NAME_ENV

WARM_PROCESSES = 8
"""Idle job processes a worker with a capacity keeps warm by default. livekit-agents initializes at most one job
process per core at a time, so a burst beyond the warm ones waits for them in turn (bench/sip_calls.py --against
stock); an idle process, forked from the preloaded forkserver, holds about 27 MiB of its own (PSS)."""


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("siphon_worker_environ", default=None)
"""The environment settings are read from: ``None``, the process's; else a given one (``settings_problems``)."""


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source, reading ``_ENVIRON`` when one is given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _ENVIRON.get()
        if given is None:
            return super()._load_env_vars()
        return parse_env_vars(given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _FromEnviron(BaseSettings):
    """Settings read from the environment only (no init values, files or secrets directories)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment (``_Environ``) after init values, as pydantic-settings orders them."""
        return init_settings, _Environ(settings_cls)


class _DefaultsFromEnv(_FromEnviron, AgentConfig):
    """The default layer as the environment sets it (``DEFAULTS_ENV``; provider dicts as JSON)."""

    model_config = SettingsConfigDict(
        alias_generator=AliasGenerator(validation_alias=defaults_env_name), env_ignore_empty=True
    )


class SettingsError(SystemExit):
    """A worker setting in the environment is invalid: the worker stops at start with this message (exit 1)."""


class WorkerSettings(_FromEnviron):
    """The worker's own settings, read from its environment (as the deployment sets it) when it starts.

    Each field is the variable ``SIPHON_<FIELD>`` (the agent name also ``LIVEKIT_AGENT_NAME``); the default
    layer is one variable per ``AgentConfig`` field (``DEFAULTS_ENV``: ``SIPHON_DEFAULT_LLM``,
    ``SIPHON_SYSTEM_INSTRUCTIONS``, ``SIPHON_ALLOW_INTERRUPTIONS``, ...). An invalid value stops the worker at
    start (``SettingsError``) naming the variable and what to write.
    ``SIPHON_MAX_JOBS``: the worker's call capacity. LiveKit only hands jobs to workers whose reported load
    is below its target load (``SIPHON_LOAD_THRESHOLD``, 0.7 as on livekit-server), so the worker reports
    load = target x active calls / capacity: it is full, for the server and for itself, at exactly that
    many calls. Without it, load is host CPU, which starves a busy small host.
    """

    model_config = SettingsConfigDict(env_prefix="SIPHON_", env_ignore_empty=True, frozen=True)

    agent_name: LiveKitAgentName = Field(
        "siphon-agent", validation_alias=AliasChoices(AGENT_NAME_ENV, LIVEKIT_AGENT_NAME_ENV),
        description="the agent name the worker registers (letters, digits, '_', '-', '.')",
    )  # fmt: skip
    environment: EnvironmentName | None = Field(
        None, description=f"the stack environment the worker serves, e.g. prod; `{LOCAL_ENVIRONMENT}` runs test models"
    )
    ring_timeout: RingTimeout = Field(DEFAULT_RING_TIMEOUT, description="seconds an outbound call may ring, 1 to 120")
    participant_wait: float = Field(
        10.0, gt=0, description="seconds an inbound job waits for its caller to join before it ends, e.g. 10"
    )
    connect_timeout: float = Field(
        20.0, gt=0, le=120, description="seconds a job may take to join its room before it ends, e.g. 20"
    )
    audio_timeout: float = Field(
        20.0, gt=0, le=120,
        description="seconds, once the agent session starts, for the caller to receive the agent's audio track "
        "(the bridge answers an inbound caller then) before the job hangs up and ends, e.g. 20",
    )  # fmt: skip
    stt_timeout: float = Field(
        5.0, gt=0, le=60,
        description="seconds a speech-to-text provider may take to open its stream, or stay silent after the caller "
        "spoke, before the next entry of its chain is tried (one provider alone: retried once, then the call is "
        "handed over), e.g. 5",
    )  # fmt: skip
    llm_timeout: float = Field(
        8.0, gt=0, le=120,
        description="seconds an LLM may take to answer (its first token, or between tokens) before the next entry of "
        "its chain is tried (one alone: retried once, then the call is handed over), e.g. 8",
    )  # fmt: skip
    tts_timeout: float = Field(
        5.0, gt=0, le=60,
        description="seconds a text-to-speech provider may take to connect or to send its next audio before the next "
        "entry of its chain is tried (one alone: retried once, then the call is handed over), e.g. 5",
    )  # fmt: skip
    load_threshold: float = Field(0.7, gt=0, le=1, description="LiveKit's target load, a fraction such as 0.7")
    http_port: int = Field(
        DEFAULT_HTTP_PORT, ge=0, le=65535, description="port of the health server (0: any free port)"
    )
    http_host: str = Field("", description="address the health server listens on (empty: every address)")
    max_jobs: CallCapacity | None = Field(None, description=f"calls the worker serves at once, 1 to {MAX_CALLS_LIMIT}")
    job_executor: Literal["process", "thread"] = Field("process", description="process or thread")
    num_idle_processes: int | None = Field(
        None, ge=0, description=f"job processes kept warm, e.g. 2 (default: the capacity, at most {WARM_PROCESSES})"
    )
    drain_timeout: int = Field(1800, ge=0, description="seconds to finish running calls after SIGTERM")
    metric_cluster: str | None = Field(None, description="ECS cluster the call metric is published under")
    metric_service: str | None = Field(None, description="ECS service the call metric is published under")
    metric_interval: float = Field(
        DEFAULT_METRIC_INTERVAL, ge=1, le=60, description="seconds between call-metric lines, 1 to 60, e.g. 15"
    )
    call_protection_minutes: CallProtectionMinutes | None = Field(
        None, description=f"minutes of ECS task protection per renewal while calls run, 1 to {MAX_PROTECTION_MINUTES}"
    )
    worker_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,128}$",
        description="this worker's id in its call ledger, e.g. worker-3 (default: its ECS task id, else host.pid)",
    )
    death_queue_url: str | None = Field(
        None, pattern=r"^https?://\S+$",
        description="URL of the SQS queue that receives the stack's stopped ECS tasks (set by the ECS deployment): "
        "the worker recovers their calls (worker.stopped_tasks), e.g. https://sqs.us-east-1.amazonaws.com/"
        "123456789012/siphon-prod-worker-deaths",
    )  # fmt: skip
    ecs_agent_uri: str | None = Field(
        None, validation_alias=AGENT_URI_ENV, description="the ECS agent's endpoint (set by ECS in every task)"
    )
    _defaults: AgentConfig = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Read the default layer too, so that a bad default also stops the worker at start."""
        self._defaults = worker_defaults(_DefaultsFromEnv(), offline=self.offline_models)

    @property
    def idle_processes(self) -> int | None:
        """Job processes kept warm, each ready for a call (its models built): ``SIPHON_NUM_IDLE_PROCESSES``, else the
        capacity up to ``WARM_PROCESSES``, else (no capacity) livekit-agents' default, one per core."""
        if self.num_idle_processes is not None:
            return self.num_idle_processes
        return min(self.max_jobs, WARM_PROCESSES) if self.max_jobs else None

    @property
    def offline_models(self) -> bool:
        """Whether this worker may run the offline test models (only in the ``local`` environment)."""
        return self.environment == LOCAL_ENVIRONMENT

    @property
    def defaults(self) -> AgentConfig:
        """The worker's default layer (its environment's, over ``BUILTIN_DEFAULTS``)."""
        return self._defaults

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read the process's environment (or ``environ``); raise ``SettingsError`` naming each invalid variable and
        what to write."""
        problems = []
        with _reading(environ):
            try:
                settings = cls()
            except ValidationError as e:
                problems = [_problem(loc, message) for loc, message in describe_errors(e)]
        if problems:
            raise SettingsError("invalid worker settings:" + "".join(f"\n  {p}" for p in problems))
        return settings


def settings_problems(environ: Mapping[str, str]) -> list[str]:
    """What keeps a worker whose environment is exactly ``environ`` from starting (``VARIABLE: message; expected:
    ...``, as it would stop with), and each ``SIPHON_`` variable that no setting reads (a misspelt name is ignored,
    so the setting it meant silently keeps its default). Deployments check their environment with this."""
    unread = [_unread(name) for name in sorted(environ) if name.startswith("SIPHON_") and name not in SETTING_ENV]
    try:
        WorkerSettings.from_env(environ)
    except SettingsError as e:
        return [line.strip() for line in str(e).splitlines()[1:]] + unread
    return unread


def _unread(name: str) -> str:
    close = get_close_matches(name, SETTING_ENV, n=1)
    return f"{name}: no worker setting has this name, so it would be ignored" + (
        f"; did you mean {close[0]}?" if close else f" (the settings: {', '.join(SETTING_ENV)})"
    )


@contextmanager
def _reading(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _problem(loc: str, message: str) -> str:
    """``VARIABLE: message; expected: <what the field takes>``."""
    name = loc.split(".")[0]
    info: FieldInfo | None = WorkerSettings.model_fields.get(name)
    variable = f"SIPHON_{name.upper()}" if info else name
    if info is None:  # a default-layer variable, or an alias
        info = AgentConfig.model_fields.get({v: k for k, v in DEFAULTS_ENV.items()}.get(name, ""))
    return f"{variable}: {message}" + (f"; expected: {info.description}" if info and info.description else "")


_OWN = {f"SIPHON_{name.upper()}" for name in WorkerSettings.model_fields if name != "ecs_agent_uri"}
SETTING_ENV: tuple[str, ...] = tuple(sorted(_OWN | set(DEFAULTS_ENV.values())))
"""Every ``SIPHON_`` variable a worker reads."""
