"""boto3 clients for one provider call: default credential chain, explicit region, timeouts and retries.

Clients are never stored on the provider (it is pickled into state): each provider method builds an
``Aws`` for its own use. ``AWS_ENDPOINT_URL`` (and the per-service variants) are honoured by boto3
itself. Against a local emulator (an endpoint is set) failed calls are not retried: moto answers
unimplemented actions with HTTP 500, which botocore would otherwise retry.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


class RegionError(RuntimeError):
    """No AWS region configured."""


def resolve_region(configured: str | None) -> str:
    """``aws:region`` stack config, else AWS_REGION, else AWS_DEFAULT_REGION."""
    region = configured or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise RegionError("no AWS region: set the stack config aws:region, or AWS_REGION / AWS_DEFAULT_REGION")
    return region


def _emulated() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL"))


class Aws:
    """Lazily created clients for one region, sharing one boto3 session."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._session = boto3.session.Session(region_name=region)
        self._clients: dict[str, Any] = {}
        self._config = Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "total_max_attempts": 1 if _emulated() else 5},
        )

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (``ecs``, ``iam``, ``logs``, ...)."""
        if service not in self._clients:
            c = self._session.client(service, config=self._config)
            self._clients[service] = c
        return self._clients[service]

    @property
    def ecs(self) -> Any:
        """ECS client."""
        return self.client("ecs")

    @property
    def iam(self) -> Any:
        """IAM client."""
        return self.client("iam")

    @property
    def logs(self) -> Any:
        """CloudWatch Logs client."""
        return self.client("logs")

    @property
    def secrets(self) -> Any:
        """Secrets Manager client."""
        return self.client("secretsmanager")

    @property
    def ecr(self) -> Any:
        """ECR client."""
        return self.client("ecr")

    @property
    def sqs(self) -> Any:
        """SQS client."""
        return self.client("sqs")

    @property
    def events(self) -> Any:
        """EventBridge client."""
        return self.client("events")

    @property
    def sts(self) -> Any:
        """STS client."""
        return self.client("sts")

    @property
    def scaling(self) -> Any:
        """Application Auto Scaling client."""
        return self.client("application-autoscaling")


def error_code(e: ClientError) -> str:
    """The AWS error code of a ClientError."""
    return str(e.response.get("Error", {}).get("Code", ""))


def is_not_found(e: ClientError) -> bool:
    """True for the various 'does not exist' errors of the services used here."""
    return error_code(e) in {
        "NoSuchEntity",
        "ResourceNotFoundException",
        "RepositoryNotFoundException",
        "ServiceNotFoundException",
        "ClusterNotFoundException",
        "ObjectNotFoundException",
        "QueueDoesNotExist",  # SQS (JSON protocol)
        "AWS.SimpleQueueService.NonExistentQueue",  # SQS (query protocol)
    }


def partition(region: str) -> str:
    """The AWS partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"
