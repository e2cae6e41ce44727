"""AgentWorkerProvider create/update/read/delete called directly against the session moto server."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from infra.ecs.operations import DeploymentError
from infra.ecs.provider import AgentWorkerProvider
from localenv.manager import Endpoints
from tests.test_ecs_helpers import (
    ALL_SECRETS,
    IMAGE,
    SECRET_OPENAI,
    WORKER_MODELS,
    assert_nothing_left,
    default_network,
    full_args,
    leftovers,
    mutating,
    recorded_calls,
    role_statements,
)

SERVICE = "siphon-test-support"


@pytest.fixture
def net(aws: Endpoints) -> tuple[list[str], str]:
    return default_network()


def checked(provider: AgentWorkerProvider, args: dict[str, Any]) -> dict[str, Any]:
    result = provider.check({}, {**args, "__provider": "x"})
    assert result.failures == []
    return result.inputs


def describe_service() -> dict[str, Any]:
    return boto3.client("ecs").describe_services(cluster="voice", services=[SERVICE])["services"][0]


def test_create_update_and_delete_in_order(net):
    subnets, sg = net
    p = AgentWorkerProvider()
    ecs, sm = boto3.client("ecs"), boto3.client("secretsmanager")
    args = full_args(
        subnets, sg, image=":v1", ecr_repository={"keep_last_images": 5},
        autoscaling={"min_count": 1, "max_count": 3}, provider_keys={"OPENAI_API_KEY": SECRET_OPENAI, "DEEPGRAM_API_KEY": "dg-1"},
    )  # fmt: skip
    created = p.create(checked(p, args))
    outs = created.outs
    assert created.id == describe_service()["serviceArn"]
    assert not any(s in json.dumps(outs) for s in ALL_SECRETS)

    # Owned repository: scan on push, lifecycle policy; the image resolves against it.
    ecr = boto3.client("ecr")
    repo = ecr.describe_repositories(repositoryNames=["siphon/test/support"])["repositories"][0]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    assert (
        json.loads(ecr.get_lifecycle_policy(repositoryName="siphon/test/support")["lifecyclePolicyText"])["rules"][0][
            "selection"
        ]["countNumber"]
        == 5
    )
    assert outs["image_uri"] == repo["repositoryUri"] + ":v1"

    # Task definition: Fargate size, worker env, secrets by valueFrom, stopTimeout, health check, tags.
    td = ecs.describe_task_definition(taskDefinition=outs["task_definition_arn"], include=["TAGS"])
    container = td["taskDefinition"]["containerDefinitions"][0]
    assert (td["taskDefinition"]["cpu"], td["taskDefinition"]["memory"]) == ("512", "1024")
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["SIPHON_AGENT_NAME"] == "support"
    assert env["SIPHON_ENVIRONMENT"] == "test", "outside `local` the worker never runs the offline test models"
    assert env["SIPHON_DRAIN_TIMEOUT"] == "110", "drain finishes inside the 120 s stop timeout"
    assert env["SIPHON_MAX_JOBS"] == "4", "a 512/1024 task serves 4 calls at once unless max_calls says otherwise"
    assert env["SIPHON_DEFAULT_LLM"] == "openai/gpt-4o-mini"
    assert {s["name"] for s in container["secrets"]} == {
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "OPENAI_API_KEY",
        "DEEPGRAM_API_KEY",
    }
    assert not any(s in json.dumps(td, default=str) for s in ALL_SECRETS)
    assert container["stopTimeout"] == 120
    assert container["healthCheck"]["command"][0] == "CMD-SHELL"
    tags = {t["key"]: t["value"] for t in td["tags"]}
    assert tags["siphon:agent_name"] == "support"
    assert tags["siphon:environment"] == "test"
    assert tags["siphon:stack"] == "dev"

    # Least privilege: no '*' action anywhere.
    iam = boto3.client("iam")
    for role in ("siphon-test-support-exec", "siphon-test-support-task"):
        for st in role_statements(role):
            assert all("*" not in a for a in st["Action"])
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    task_statements = role_statements("siphon-test-support-task")
    assert [st["Sid"] for st in task_statements] == ["CallProtection"], "the worker's only AWS access"

    scaling = boto3.client("application-autoscaling")
    assert {p["PolicyName"] for p in scaling.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"]} == {
        f"{SERVICE}-calls",
        f"{SERVICE}-cpu",
    }

    # Update: new image + worker default + rotated key + dropped key + no autoscaling.
    new = full_args(
        subnets, sg, image=":v2", ecr_repository={"keep_last_images": 5}, worker={**WORKER_MODELS, "greeting_instructions": "Hello!"},
        provider_keys={"OPENAI_API_KEY": "sk-rotated"},
    )  # fmt: skip
    with recorded_calls() as calls:
        outs2 = p.update(created.id, outs, checked(p, new)).outs
    assert outs2["task_definition_arn"].endswith(":2")
    assert describe_service()["taskDefinition"] == outs2["task_definition_arn"]
    assert (
        ecs.describe_task_definition(taskDefinition=outs["task_definition_arn"])["taskDefinition"]["status"]
        == "INACTIVE"
    )
    ops = [op for _, op in calls]
    assert ops.index("RegisterTaskDefinition") < ops.index("UpdateService") < ops.index("DeregisterTaskDefinition")
    assert "CreateService" not in ops
    assert sm.get_secret_value(SecretId=outs2["secret_arns"]["OPENAI_API_KEY"])["SecretString"] == "sk-rotated"
    assert "DEEPGRAM_API_KEY" not in outs2["secret_arns"]
    assert [s for s in leftovers()["secrets"] if "DEEPGRAM" in s] == []
    assert leftovers()["scalable_targets"] == []
    assert leftovers()["scaling_policies"] == []

    # Same declaration again: nothing registered, no secret written.
    with recorded_calls() as calls:
        outs3 = p.update(created.id, outs2, checked(p, new)).outs
    assert outs3["task_definition_arn"] == outs2["task_definition_arn"]
    ops = [op for _, op in calls]
    assert "RegisterTaskDefinition" not in ops
    assert "PutSecretValue" not in ops
    assert "CreateSecret" not in ops

    # Delete in the order AWS needs, leaving nothing.
    with recorded_calls() as calls:
        p.delete(created.id, outs3)
    ops = [op for _, op in mutating(calls)]
    order = ["UpdateService", "DeleteService", "DeregisterTaskDefinition", "DeleteCluster", "DeleteSecret", "DeleteRole",
             "DeleteLogGroup", "DeleteRepository"]  # fmt: skip
    assert [op for op in ops if op in order] == sorted((op for op in ops if op in order), key=order.index)
    assert set(order) <= set(ops)
    assert_nothing_left()
    p.delete(created.id, outs3)  # already gone: still fine


def test_create_adopts_an_existing_service_instead_of_duplicating(net):
    subnets, sg = net
    ecs = boto3.client("ecs")
    ecs.create_cluster(clusterName="voice")
    td = ecs.register_task_definition(
        family="handmade", containerDefinitions=[{"name": "w", "image": "x.io/a:b", "memory": 512}]
    )["taskDefinition"]["taskDefinitionArn"]
    before = ecs.create_service(cluster="voice", serviceName=SERVICE, taskDefinition=td, desiredCount=2)["service"]
    p = AgentWorkerProvider()
    with recorded_calls() as calls:
        created = p.create(checked(p, full_args(subnets, sg, create_cluster=False)))
    ops = [op for _, op in calls]
    assert "CreateService" not in ops
    assert "CreateCluster" not in ops
    assert "UpdateService" in ops
    assert created.id == before["serviceArn"]
    svc = describe_service()
    assert svc["taskDefinition"] == created.outs["task_definition_arn"]
    assert svc["desiredCount"] == 1
    p.delete(created.id, created.outs)
    assert leftovers()["services"] == []
    assert leftovers()["clusters"] == [before["clusterArn"]]  # not owned: kept


def test_missing_cluster_is_a_clear_error_before_any_service(net):
    subnets, sg = net
    p = AgentWorkerProvider()
    with pytest.raises(DeploymentError, match="cluster 'voice' does not exist"):
        p.create(checked(p, full_args(subnets, sg, create_cluster=False)))
    assert leftovers()["services"] == []


def test_read_notices_out_of_band_changes_and_deletion(net):
    subnets, sg = net
    p = AgentWorkerProvider()
    ecs = boto3.client("ecs")
    created = p.create(checked(p, full_args(subnets, sg)))
    outs = created.outs

    unchanged = p.read(created.id, outs)
    assert unchanged.id == created.id
    assert unchanged.outs["drift"] == []
    assert p.diff(created.id, unchanged.outs, checked(p, full_args(subnets, sg))).changes is False

    ecs.update_service(cluster="voice", service=SERVICE, desiredCount=3)
    foreign = ecs.register_task_definition(
        family="siphon-test-support", containerDefinitions=[{"name": "worker", "image": f"{IMAGE}:hotfix", "memory": 512}],
        cpu="512", memory="1024",
    )["taskDefinition"]["taskDefinitionArn"]  # fmt: skip
    ecs.update_service(cluster="voice", service=SERVICE, taskDefinition=foreign)
    boto3.client("logs").delete_log_group(logGroupName="/siphon/test/support")
    read = p.read(created.id, outs)
    assert read.outs["desired_count"] == 3
    assert read.outs["image"] == f"{IMAGE}:hotfix"
    assert any("task definition" in d for d in read.outs["drift"])
    assert any("log group" in d for d in read.outs["drift"])
    assert p.diff(created.id, read.outs, checked(p, full_args(subnets, sg))).changes is True

    repaired = p.update(created.id, read.outs, checked(p, full_args(subnets, sg))).outs
    svc = describe_service()
    assert svc["desiredCount"] == 1
    assert svc["taskDefinition"] == repaired["task_definition_arn"] != foreign
    assert "/siphon/test/support" in leftovers()["log_groups"]
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == [repaired["task_definition_arn"]]
    assert p.read(created.id, repaired).outs["drift"] == []

    ecs.update_service(cluster="voice", service=SERVICE, desiredCount=0)
    ecs.delete_service(cluster="voice", service=SERVICE)
    gone = p.read(created.id, repaired)
    assert gone.id == ""
    assert gone.outs == {}
    p.delete(created.id, repaired)
    assert_nothing_left()
