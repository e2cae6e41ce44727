"""Rules AWS enforces (and moto does not): Fargate sizes, log retention values, name and image formats.

Agent and environment names are ``contract.types`` types (shared with the stack file and LiveKit).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field

from contract.deployment import (
    AGENT_NAME_ENV,
    CALL_PROTECTION_ENV,
    DEATH_QUEUE_ENV,
    DEFAULTS_ENV,
    DRAIN_TIMEOUT_ENV,
    ENVIRONMENT_ENV,
    MAX_JOBS_ENV,
    METRIC_CLUSTER_ENV,
    METRIC_SERVICE_ENV,
)

# Fargate task sizes: cpu units -> allowed memory (MiB).
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}

# CloudWatch Logs PutRetentionPolicy accepts exactly these.
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip

STACK_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CLUSTER_OR_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
SECURITY_GROUP_RE = re.compile(r"^sg-[0-9a-f]{8,17}$")
REPOSITORY_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
TAG_KEY_RE = re.compile(r"^[\w.:/=+@ -]{1,128}$")
# Full reference: registry host (with a dot, a port or localhost) / repository path, then :tag or @digest.
IMAGE_RE = re.compile(
    r"^(?P<repository>(?P<registry>(?:[a-zA-Z0-9-]+\.)+[a-zA-Z0-9-]+(?::\d+)?|localhost(?::\d+)?)"
    r"/[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))$"
)
# Relative reference into the repository the resource owns: ":tag" or "@sha256:...".
IMAGE_REF_RE = re.compile(r"^(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$")
SQS_QUEUE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sqs:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,80}$")
SQS_QUEUE_URL_RE = re.compile(r"^https?://[^\s/]+/\d{12}/[A-Za-z0-9_-]{1,80}$")
ECR_REGISTRY_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
# Environment names the resource sets itself; user variables and provider keys may not use them.
RESERVED_ENV_PREFIXES = ("LIVEKIT_", "AWS_", "ECS_")
RESERVED_ENV_NAMES = frozenset({AGENT_NAME_ENV, ENVIRONMENT_ENV, DRAIN_TIMEOUT_ENV, MAX_JOBS_ENV, METRIC_CLUSTER_ENV,
                                METRIC_SERVICE_ENV, CALL_PROTECTION_ENV, DEATH_QUEUE_ENV,
                                *DEFAULTS_ENV.values()})  # fmt: skip


def smallest_fargate_size(fits: Callable[[int, int], bool]) -> tuple[int, int] | None:
    """The smallest Fargate ``(cpu, memory)`` for which ``fits(cpu, memory)``, or None."""
    sizes = sorted((cpu, memory) for cpu, memories in FARGATE_SIZES.items() for memory in memories)
    return next((size for size in sizes if fits(*size)), None)


def fargate_size_error(cpu: int, memory: int) -> str | None:
    """Why ``cpu``/``memory`` is not a Fargate size, or None when it is one."""
    if cpu not in FARGATE_SIZES:
        return f"cpu {cpu} is not a Fargate value (one of {', '.join(map(str, FARGATE_SIZES))})"
    allowed = FARGATE_SIZES[cpu]
    if memory not in allowed:
        return (
            f"{memory} MiB is not allowed with cpu {cpu} on Fargate "
            f"(from {allowed[0]} to {allowed[-1]} MiB in steps of {allowed[1] - allowed[0] if len(allowed) > 1 else 0})"
            if len(allowed) > 3
            else f"{memory} MiB is not allowed with cpu {cpu} on Fargate (one of {', '.join(map(str, allowed))})"
        )
    return None


def reserved_env_name(name: str) -> bool:
    """True for names the deployment sets itself (worker defaults, ``LIVEKIT_*``, ``AWS_*``, ``ECS_*``)."""
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def check_tags(value: dict[str, str]) -> dict[str, str]:
    """User tags of an AWS resource: keys AWS accepts, not in the reserved ``aws:`` and ``siphon:`` namespaces."""
    for key, val in value.items():
        if not TAG_KEY_RE.match(key) or key.lower().startswith(("aws:", "siphon:")):
            raise ValueError(f"{key!r} is not an allowed tag key (1-128 characters; aws: and siphon: are reserved)")
        if len(val) > 256:
            raise ValueError(f"value of {key!r} is longer than 256 characters")
    return value


Tags = Annotated[dict[str, str], Field(max_length=40), AfterValidator(check_tags)]
"""User tags of an AWS resource (at most 40: AWS allows 50, the stack adds its own)."""
