"""An ECS deployment lets its workers protect their task from scale-in while they hold calls.

Against the session moto server: the task definition tells the worker how long to protect its task for
(``SIPHON_CALL_PROTECTION_MINUTES``) and the task role allows exactly that, on this cluster's tasks. The worker
side is proven by a real call in ``tests/test_worker_live.py``
(``test_a_worker_on_ecs_protects_its_task_while_it_holds_a_call``).
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from contract.deployment import CALL_PROTECTION_ENV
from infra.ecs.provider import AgentWorkerProvider
from localenv.manager import Endpoints
from tests.test_ecs_helpers import container_env, create_deployment, default_network, full_args, role_statements


def task_role_statements(outs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in role_statements(outs["task_role_arn"].rsplit("/", 1)[1])}


def test_the_task_role_may_protect_only_this_clusters_tasks_for_as_long_as_the_worker_is_told(aws: Endpoints) -> None:
    p, created = create_deployment()
    try:
        env = container_env(created.outs["task_definition_arn"])
        assert env[CALL_PROTECTION_ENV] == "60", "the default period"
        statement = task_role_statements(created.outs)["CallProtection"]
        assert statement["Action"] == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
        cluster_arn = boto3.client("ecs").describe_clusters(clusters=["voice"])["clusters"][0]["clusterArn"]
        assert statement["Resource"] == [cluster_arn.replace(":cluster/voice", ":task/voice/*")]
    finally:
        p.delete(created.id, created.outs)


def test_call_protection_set_to_null_leaves_the_task_role_without_ecs_access(aws: Endpoints) -> None:
    p, created = create_deployment(call_protection_minutes=None)
    try:
        assert CALL_PROTECTION_ENV not in container_env(created.outs["task_definition_arn"])
        assert task_role_statements(created.outs) == {}
    finally:
        p.delete(created.id, created.outs)


def test_a_deployment_from_before_call_protection_shows_an_update(aws: Endpoints) -> None:
    """State written before this field existed lacks it: the normalised inputs differ, so `up` adds it."""
    subnets, sg = default_network()
    p = AgentWorkerProvider()
    news = p.check({}, {**full_args(subnets, sg), "__provider": "x"}).inputs
    olds = {k: v for k, v in news.items() if k != "call_protection_minutes"}
    assert p.diff("id", olds, news).changes


@pytest.mark.parametrize("minutes", [0, 2881])
def test_a_protection_period_outside_what_ecs_allows_is_refused_naming_the_field(minutes: int) -> None:
    failures = AgentWorkerProvider().check(
        {}, {**full_args(["subnet-0123456789abcdef0"], "sg-0123456789abcdef0"), "call_protection_minutes": minutes}
    )
    assert [f.property for f in failures.failures] == ["call_protection_minutes"]
    assert "call_protection_minutes" in failures.failures[0].reason


def test_extra_env_cannot_set_the_protection_period_behind_the_deployments_back() -> None:
    env = {"extra_env": {CALL_PROTECTION_ENV: "5"}}
    failures = (
        AgentWorkerProvider()
        .check({}, {**full_args(["subnet-0123456789abcdef0"], "sg-0123456789abcdef0"), **env})
        .failures
    )
    assert failures and CALL_PROTECTION_ENV in failures[0].reason
