"""Arguments of ``AgentWorkerDeployment``: pydantic v2 models, validated again by the provider's ``check()``.

Secret values (``livekit_api_key``, ``livekit_api_secret``, ``provider_keys``) are ``SecretStr`` here so
they never appear in a repr or an error; the resource passes them to the provider as Pulumi secrets and
the provider writes them to Secrets Manager. State keeps ARNs and keyed fingerprints, never the values.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from contract.deployment import (
    DEFAULT_HTTP_PORT,
    HTTP_HOST_ENV,
    HTTP_PORT_ENV,
    CallCapacity,
    CallProtectionMinutes,
    max_calls_for,
    worker_env,
)
from contract.metadata import AgentConfig
from contract.models import run_problems
from contract.settings import WorkerSettings, settings_problems
from contract.types import LOCAL_ENVIRONMENT, SECRET_FIELDS, AgentName, EcsEnvironmentName
from contract.types import Model as _Model
from contract.wire import LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV, LIVEKIT_URL_ENV
from infra.ecs import naming
from infra.ecs import validation as v

# Env names the two LiveKit credentials are injected as (from Secrets Manager, with valueFrom).
LIVEKIT_SECRET_ENV = {"livekit_api_key": LIVEKIT_API_KEY_ENV, "livekit_api_secret": LIVEKIT_API_SECRET_ENV}

DEFAULT_CALL_PROTECTION_MINUTES = 60

PROBED_HOSTS = ("", "0.0.0.0", "127.0.0.1", "::")  # where the default health check reaches it
DEFAULT_HEALTH_COMMAND = [
    "CMD-SHELL",
    f"python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{DEFAULT_HTTP_PORT}/', timeout=4)\""
    " || exit 1",
]


class HealthCheck(_Model):
    """Container health check (default: the livekit-agents worker's HTTP health endpoint on port 8081)."""

    command: list[str] = Field(default_factory=lambda: list(DEFAULT_HEALTH_COMMAND), min_length=2)
    interval_seconds: int = Field(30, ge=5, le=300)
    timeout_seconds: int = Field(5, ge=2, le=60)
    retries: int = Field(3, ge=1, le=10)
    start_period_seconds: int = Field(60, ge=0, le=300)

    @field_validator("command")
    @classmethod
    def _command_form(cls, value: list[str]) -> list[str]:
        if value[0] not in ("CMD", "CMD-SHELL"):
            raise ValueError('must start with "CMD" or "CMD-SHELL"')
        return value

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheck:
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError("timeout_seconds: must be shorter than interval_seconds")
        return self


class Deployment(_Model):
    """Rolling deployment settings; the circuit breaker always stops a failing rollout."""

    min_healthy_percent: int = Field(100, ge=0, le=100)
    max_percent: int = Field(200, ge=100, le=200)
    rollback: bool = True

    @model_validator(mode="after")
    def _can_progress(self) -> Deployment:
        if self.min_healthy_percent == 100 and self.max_percent == 100:
            raise ValueError("max_percent: with min_healthy_percent 100 it must exceed 100, or no task can be replaced")
        return self


class Autoscaling(_Model):
    """Application Auto Scaling of the service's desired count: target tracking on calls, and on CPU.

    The calls policy keeps the tasks' average ``CallUtilization`` (calls held / ``max_calls``, published by
    each worker: ``contract.metrics``) at ``calls_target_percent``. The CPU policy (``cpu_target_percent``,
    ``null`` to drop it) adds tasks when calls cost more CPU than the task size allows for; with two policies
    the service scales out when either asks and in only when both agree.
    """

    min_count: int = Field(ge=0, le=1000)
    max_count: int = Field(ge=1, le=1000)
    calls_target_percent: float = Field(70.0, gt=0, le=100)
    cpu_target_percent: float | None = Field(60.0, gt=0, le=100)
    scale_in_cooldown_seconds: int = Field(300, ge=0, le=3600)
    scale_out_cooldown_seconds: int = Field(60, ge=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_count > self.max_count:
            raise ValueError(f"min_count: {self.min_count} is greater than max_count {self.max_count}")
        return self


class EcrRepository(_Model):
    """An ECR repository owned (created and deleted) by the deployment."""

    name: str | None = Field(None, min_length=2, max_length=256, pattern=v.REPOSITORY_NAME_RE.pattern)
    scan_on_push: bool = True
    keep_last_images: int = Field(30, ge=1, le=10000)
    tag_mutability: Literal["MUTABLE", "IMMUTABLE"] = "MUTABLE"


class PolicyStatement(_Model):
    """An extra IAM statement for the task role (what the worker itself may do on AWS)."""

    actions: list[str] = Field(min_length=1)
    resources: list[str] = Field(min_length=1)

    @field_validator("actions")
    @classmethod
    def _no_wildcards(cls, value: list[str]) -> list[str]:
        for action in value:
            service, sep, name = action.partition(":")
            if "*" in action or not sep or not service or not name:
                raise ValueError(f"{action!r} is not a specific action (service:Action, no '*')")
        return value


class EcsWorkerSettings(_Model):
    """The settings of a worker deployment a stack file declares under ``agents.<name>.ecs`` (every field here)."""

    image: str = Field(min_length=1, max_length=1024, description="repository URI plus tag or digest")
    cpu: int = 1024
    memory: int = 2048
    cpu_architecture: Literal["X86_64", "ARM64"] = "X86_64"
    stop_timeout_seconds: int = Field(120, ge=30, le=120, description="SIGTERM-to-SIGKILL grace (Fargate max 120)")
    health_check: HealthCheck | None = Field(default_factory=HealthCheck)
    extra_env: dict[str, str] = Field(default_factory=dict, max_length=50)
    service_name: str | None = Field(None, pattern=v.CLUSTER_OR_SERVICE_RE.pattern)
    desired_count: int = Field(1, ge=0, le=1000)
    deployment: Deployment = Field(default_factory=Deployment)
    autoscaling: Autoscaling | None = None
    call_protection_minutes: CallProtectionMinutes | None = Field(
        DEFAULT_CALL_PROTECTION_MINUTES,
        description="while a task holds calls, scale-in and deployments leave it running (ECS task scale-in "
        "protection) for this long, renewed every half period; null: off",
    )
    log_retention_days: int = 30
    ecr_repository: EcrRepository | None = None
    task_role_statements: list[PolicyStatement] = Field(default_factory=list, max_length=20)
    tags: v.Tags = Field(default_factory=dict)
    wait_for_steady_state: bool = False
    steady_state_timeout_seconds: int = Field(900, ge=10, le=3600)

    @field_validator("cpu")
    @classmethod
    def _fargate_cpu(cls, value: int) -> int:
        if value not in v.FARGATE_SIZES:
            raise ValueError(f"{value} is not a Fargate cpu value (one of {', '.join(map(str, v.FARGATE_SIZES))})")
        return value

    @field_validator("memory")
    @classmethod
    def _fargate_memory(cls, value: int, info: ValidationInfo) -> int:
        cpu = info.data.get("cpu")
        if cpu in v.FARGATE_SIZES:
            problem = v.fargate_size_error(cpu, value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in v.LOG_RETENTION_DAYS:
            raise ValueError(
                f"{value} is not a CloudWatch Logs retention (one of {', '.join(map(str, v.LOG_RETENTION_DAYS))})"
            )
        return value

    @field_validator("extra_env")
    @classmethod
    def _extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            _check_env_name(name)
        return value

    @model_validator(mode="after")
    def _image_and_scaling(self) -> Self:
        if self.ecr_repository is not None and v.IMAGE_REF_RE.match(self.image):
            pass  # ":tag" or "@sha256:..." in the owned repository
        elif v.IMAGE_REF_RE.match(self.image):
            raise ValueError("image: a bare :tag or @digest needs ecr_repository (a repository this resource owns)")
        elif not v.IMAGE_RE.match(self.image):
            hint = ' or, with ecr_repository, ":tag" / "@sha256:<digest>"' if self.ecr_repository else ""
            raise ValueError(f"image: must be a full reference (registry/repository:tag or @sha256:<digest>){hint}")
        if self.autoscaling is not None:
            a = self.autoscaling
            if not a.min_count <= self.desired_count <= a.max_count:
                raise ValueError(
                    f"desired_count: {self.desired_count} is outside autoscaling min_count..max_count "
                    f"({a.min_count}..{a.max_count})"
                )
        return self


def _check_env_name(name: str) -> None:
    if not v.ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not an environment variable name (A-Z, 0-9, _; starting with a letter)")
    if v.reserved_env_name(name):
        raise ValueError(f"{name!r} is reserved (set by the deployment, or {'/'.join(v.RESERVED_ENV_PREFIXES)})")


class AgentWorkerArgs(EcsWorkerSettings):
    """Everything one agent worker deployment declares (one deployment per ``agent_name``)."""

    agent_name: AgentName = Field(description="LiveKit agent name the worker registers")
    stack: str = Field(pattern=v.STACK_RE.pattern)
    environment: EcsEnvironmentName

    livekit_url: str = Field(pattern=r"^wss?://[^\s/]+(/\S*)?$")
    livekit_api_key: SecretStr = Field(min_length=1, max_length=4096)
    livekit_api_secret: SecretStr = Field(min_length=1, max_length=4096)
    provider_keys: dict[str, SecretStr] = Field(default_factory=dict, max_length=20)
    worker: AgentConfig = Field(default_factory=AgentConfig, description="the worker's default layer")
    max_calls: CallCapacity | None = Field(
        None, description="calls one task serves at once (default: from cpu and memory)"
    )

    cluster_name: str = Field(pattern=v.CLUSTER_OR_SERVICE_RE.pattern)
    create_cluster: bool = False
    subnets: list[str] = Field(min_length=1, max_length=16)
    security_groups: list[str] = Field(default_factory=list, max_length=5)
    assign_public_ip: bool = False
    death_queue_url: str | None = Field(
        None, pattern=v.SQS_QUEUE_URL_RE.pattern,
        description="SQS queue of the stack's stopped tasks (``infra.ecs.death_queue``): the worker recovers their "
        "calls; the container gets it as SIPHON_DEATH_QUEUE_URL",
    )  # fmt: skip
    death_queue_arn: str | None = Field(
        None, pattern=v.SQS_QUEUE_ARN_RE.pattern,
        description="ARN of that queue: the task role may receive, delete and extend its messages, nothing else",
    )  # fmt: skip

    @field_validator("subnets")
    @classmethod
    def _subnet_ids(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not v.SUBNET_RE.match(s)]
        if bad:
            raise ValueError(f"not subnet ids: {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("lists a subnet twice")
        return value

    @field_validator("security_groups")
    @classmethod
    def _sg_ids(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not v.SECURITY_GROUP_RE.match(s)]
        if bad:
            raise ValueError(f"not security group ids: {', '.join(map(repr, bad))}")
        return value

    @field_validator("provider_keys")
    @classmethod
    def _provider_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            _check_env_name(name)
            if not secret.get_secret_value():
                raise ValueError(f"{name!r} has an empty value")
            if len(secret.get_secret_value()) > 65536:
                raise ValueError(f"{name!r} is longer than 65536 characters (Secrets Manager limit)")
        return value

    @field_validator("worker")
    @classmethod
    def _worker_runs_its_models(cls, value: AgentConfig, info: ValidationInfo) -> AgentConfig:
        """The worker can run these defaults: outside `local` all three kinds set and none a test model, and each
        provider's credential among ``provider_keys`` (the same rule the stack file is checked with)."""
        if "environment" not in info.data or "provider_keys" not in info.data:
            return value  # reported on those fields
        problems = run_problems(value, environment=info.data["environment"], credentials=info.data["provider_keys"],
                                defaults=True)  # fmt: skip
        text = "; ".join(f"{p.field}: {p.message('add it to provider_keys')}" for p in problems)
        if text:
            raise ValueError(text)
        return value

    @model_validator(mode="after")
    def _capacity_fits_the_task(self) -> Self:
        """A declared ``max_calls`` is at most what the task's size holds (``contract.deployment.max_calls_for``): a
        task given more calls than its CPU and memory hold is killed with every call on it. Not in ``local``, whose
        ECS deployment (on moto) runs nothing: its ``local:`` worker processes take ``max_calls``."""
        holds = max_calls_for(self.cpu, self.memory)
        if self.max_calls is None or self.max_calls <= holds or self.environment == LOCAL_ENVIRONMENT:
            return self  # `local`: moto runs no task; its local worker processes serve the calls with test models
        size = v.smallest_fargate_size(lambda cpu, memory: max_calls_for(cpu, memory) >= (self.max_calls or 0))
        bigger = f", or give the task cpu: {size[0]} and memory: {size[1]}" if size else ""
        raise ValueError(
            f"max_calls: {self.max_calls} calls at once do not fit a task of cpu {self.cpu} and memory {self.memory}, "
            f"which holds {holds} (a call's job takes about 128 cpu units and 256 MiB): lower max_calls to {holds}"
            f"{bigger}"
        )

    @model_validator(mode="after")
    def _worker_starts(self) -> Self:
        """The worker starts with the environment this deployment gives its container (``extra_env`` included), as
        its own settings read it (``contract.settings``), and its health server listens where the health check
        probes."""
        if not self.extra_env:
            return self  # only the deployment's own variables: its fields check them
        environ = {**self.worker_environment, **dict.fromkeys(self.secret_names, "[secret]")}
        if problems := settings_problems(environ):
            raise ValueError("extra_env: the worker would stop at start: " + "; ".join(problems))
        settings = WorkerSettings.from_env(environ)
        probed = self.health_check is not None and self.health_check.command == DEFAULT_HEALTH_COMMAND
        if probed and (settings.http_port != DEFAULT_HTTP_PORT or settings.http_host not in PROBED_HOSTS):
            where = f"{settings.http_host or '*'}:{settings.http_port}"
            raise ValueError(
                f"extra_env: {HTTP_PORT_ENV}/{HTTP_HOST_ENV} move the worker's health server to {where}, but the "
                f"health check probes 127.0.0.1:{DEFAULT_HTTP_PORT}: every task would be marked unhealthy and "
                "replaced; drop them, or set health_check.command to probe where the server listens"
            )
        return self

    @model_validator(mode="after")
    def _no_clash(self) -> AgentWorkerArgs:
        clash = sorted(set(self.extra_env) & set(self.provider_keys))
        if clash:
            raise ValueError(f"extra_env: {', '.join(clash)} also set in provider_keys")
        if (self.death_queue_url is None) != (self.death_queue_arn is None):
            missing = "death_queue_arn" if self.death_queue_arn is None else "death_queue_url"
            raise ValueError(f"{missing}: death_queue_url and death_queue_arn go together: set {missing} too")
        return self

    @property
    def worker_environment(self) -> dict[str, str]:
        """The plain (non-secret) environment of the worker's container: ``extra_env`` under what the deployment
        sets (``contract.deployment.worker_env``)."""
        return {
            **self.extra_env,
            LIVEKIT_URL_ENV: self.livekit_url,
            **worker_env(
                agent_name=self.agent_name,
                environment=self.environment,
                defaults=self.worker,
                max_calls=self.effective_max_calls,
                # Drain running calls within the SIGTERM-to-SIGKILL grace ECS gives the container (leave time to exit).
                drain_timeout=max(self.stop_timeout_seconds - 10, 1),
                # The worker publishes its call load under the service's names: the calls scaling policy reads it.
                metric_cluster=self.cluster_name,
                metric_service=self.effective_service_name,
                # The worker protects its task while it holds calls (task_policy allows it).
                call_protection_minutes=self.call_protection_minutes,
                # The worker recovers the calls of the stack's stopped tasks (task_policy lets it read this queue).
                death_queue_url=self.death_queue_url,
            ),
        }

    @property
    def secret_names(self) -> list[str]:
        """The variables the container gets from Secrets Manager (the LiveKit credentials, the provider keys)."""
        return [*LIVEKIT_SECRET_ENV.values(), *self.provider_keys]

    @property
    def effective_max_calls(self) -> int:
        """The declared call capacity of one task, else the default for its cpu and memory."""
        return self.max_calls or max_calls_for(self.cpu, self.memory)

    @property
    def effective_service_name(self) -> str:
        """``service_name``, or ``siphon-<environment>-<agent_name>`` (``naming.default_service_name``)."""
        return self.service_name or naming.default_service_name(self.environment, self.agent_name)

    def secret_values(self) -> dict[str, str]:
        """Env name -> plaintext for every injected secret (only ever sent to Secrets Manager)."""
        out = {env: getattr(self, field).get_secret_value() for field, env in LIVEKIT_SECRET_ENV.items()}
        out.update({name: s.get_secret_value() for name, s in self.provider_keys.items()})
        return out

    def public_fields(self) -> dict[str, Any]:
        """JSON-able dump of every field except the secret ones (what state may hold)."""
        return self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
