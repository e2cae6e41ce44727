"""AgentWorkerDeployment through the real Pulumi engine against the session moto server.

One stack walks the whole life cycle (engine operations are the slow part): rejected preview,
create, image and worker-default change, secret rotation, out-of-band drift and deletion, destroy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
from pulumi import automation as auto

from localenv import engine
from localenv.manager import Endpoints
from tests.test_ecs_helpers import (
    ALL_SECRETS,
    IMAGE,
    SECRET_KEY,
    SECRET_OPENAI,
    SECRET_SECRET,
    WORKER_MODELS,
    assert_nothing_left,
    default_network,
    leftovers,
    public_args,
)

PROGRAM = Path(__file__).parent / "programs" / "ecs_worker"
TOKEN = "pulumi-python:dynamic/siphon-aws:AgentWorkerDeployment"


def set_deployment(stack: auto.Stack, args: dict[str, Any]) -> None:
    stack.set_config("deployment", auto.ConfigValue(json.dumps(args)))


def assert_no_secret_in(*texts: str) -> None:
    for text in texts:
        for value in (*ALL_SECRETS, "sk-rotated-"):
            assert value not in text


def persisted_state(stack: auto.Stack, pulumi_env: dict[str, str]) -> str:
    """The stack as `pulumi stack export` prints it (no --show-secrets) plus every file of the backend."""
    work = stack.workspace.work_dir
    exported = engine.pulumi_command().run(["stack", "export", "--stack", stack.name], work, pulumi_env).stdout
    backend = Path(pulumi_env["PULUMI_BACKEND_URL"].removeprefix("file://"))
    files = [p.read_text(errors="replace") for p in backend.rglob("*") if p.is_file()]
    assert any('"siphon-aws:AgentWorkerDeployment' in f or "AgentWorkerDeployment" in f for f in files)
    return "\n".join([exported, *files])


@pytest.fixture
def ecs_stack(tmp_path: Path, pulumi_env: dict[str, str], aws: Endpoints) -> auto.Stack:
    work = tmp_path / "program"
    shutil.copytree(PROGRAM, work)
    engine.write_project(work, "ecs-worker")
    stack = engine.select_stack(work, "dev", pulumi_env)
    stack.set_config("livekitApiKey", auto.ConfigValue(SECRET_KEY, secret=True))
    stack.set_config("livekitApiSecret", auto.ConfigValue(SECRET_SECRET, secret=True))
    stack.set_config("openaiApiKey", auto.ConfigValue(SECRET_OPENAI, secret=True))
    return stack


def service(name: str = "siphon-test-support") -> dict[str, Any]:
    return boto3.client("ecs").describe_services(cluster="voice", services=[name])["services"][0]


@pytest.mark.engine
def test_life_cycle_through_the_engine(ecs_stack: auto.Stack, pulumi_env: dict[str, str]):
    subnets, sg = default_network()
    ecs = boto3.client("ecs")

    # Invalid arguments: rejected by check() at preview, naming each field, and nothing is created.
    bad = public_args(subnets, sg, cpu=300, log_retention_days=13, autoscaling={"min_count": 2, "max_count": 1})
    set_deployment(ecs_stack, bad)
    with pytest.raises(auto.errors.CommandError) as err:
        ecs_stack.preview()
    message = str(err.value)
    for field in ("cpu", "log_retention_days", "autoscaling.min_count"):
        assert field in message
    assert "AgentWorkerDeployment" in message
    assert_no_secret_in(message)
    assert_nothing_left()

    # Create.
    args = public_args(subnets, sg)
    set_deployment(ecs_stack, args)
    preview = ecs_stack.preview(diff=True)
    assert preview.change_summary == {"create": 2}
    assert f"{TOKEN}: (create)" in preview.stdout
    assert_nothing_left()
    up = ecs_stack.up()
    assert up.summary.result == "succeeded"
    first_td = up.outputs["task_definition_arn"].value
    assert first_td.endswith("task-definition/siphon-test-support:1")
    svc = service()
    assert svc["status"] == "ACTIVE"
    assert svc["taskDefinition"] == first_td
    assert svc["desiredCount"] == 1
    secret_arns = up.outputs["secret_arns"].value
    assert set(secret_arns) == {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY"}
    sm = boto3.client("secretsmanager")
    assert sm.get_secret_value(SecretId=secret_arns["OPENAI_API_KEY"])["SecretString"] == SECRET_OPENAI
    container = ecs.describe_task_definition(taskDefinition=first_td)["taskDefinition"]["containerDefinitions"][0]
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == secret_arns
    assert_no_secret_in(preview.stdout, up.stdout, persisted_state(ecs_stack, pulumi_env))

    # Image tag and a worker default change: the preview names both; a new revision replaces the old one.
    args = public_args(subnets, sg, image=f"{IMAGE}:v2", worker={**WORKER_MODELS, "llm": "openai/gpt-4.1"})
    set_deployment(ecs_stack, args)
    preview = ecs_stack.preview(diff=True)
    assert preview.change_summary == {"same": 1, "update": 1}
    changed = sorted(re.findall(r"^\s*~ (\w+)\s*:", preview.stdout, re.MULTILINE))
    assert changed == ["image", "llm", "worker"], preview.stdout
    assert re.search(rf'~ image\s*: "{re.escape(IMAGE)}:v1" => "{re.escape(IMAGE)}:v2"', preview.stdout)
    assert re.search(r'~ llm\s*: "openai/gpt-4o-mini" => "openai/gpt-4.1"', preview.stdout)
    up = ecs_stack.up()
    second_td = up.outputs["task_definition_arn"].value
    assert second_td.endswith(":2")
    assert service()["taskDefinition"] == second_td
    described = ecs.describe_task_definition(taskDefinition=second_td)["taskDefinition"]
    env = {e["name"]: e["value"] for e in described["containerDefinitions"][0]["environment"]}
    assert described["containerDefinitions"][0]["image"] == f"{IMAGE}:v2"
    assert env["SIPHON_DEFAULT_LLM"] == "openai/gpt-4.1"
    assert ecs.describe_task_definition(taskDefinition=first_td)["taskDefinition"]["status"] == "INACTIVE"
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == [second_td]

    # Nothing changed: no diff.
    assert ecs_stack.preview().change_summary == {"same": 2}

    # Secret rotation: noticed without the value in state; same revision (ARNs unchanged), new value stored.
    rotated = "sk-rotated-" + SECRET_OPENAI
    ecs_stack.set_config("openaiApiKey", auto.ConfigValue(rotated, secret=True))
    preview = ecs_stack.preview(diff=True)
    assert preview.change_summary == {"same": 1, "update": 1}
    up = ecs_stack.up()
    assert up.outputs["task_definition_arn"].value == second_td
    assert sm.get_secret_value(SecretId=secret_arns["OPENAI_API_KEY"])["SecretString"] == rotated
    assert_no_secret_in(preview.stdout, up.stdout, persisted_state(ecs_stack, pulumi_env))

    # Out-of-band change: refresh notices it, the next up puts it back.
    ecs.update_service(cluster="voice", service="siphon-test-support", desiredCount=4)
    ecs_stack.refresh()
    assert ecs_stack.preview().change_summary == {"same": 1, "update": 1}
    ecs_stack.up()
    assert service()["desiredCount"] == 1

    # Out-of-band deletion of the service: refresh drops the resource, up recreates (adopting the rest).
    ecs.update_service(cluster="voice", service="siphon-test-support", desiredCount=0)
    ecs.delete_service(cluster="voice", service="siphon-test-support")
    refresh = ecs_stack.refresh()
    assert refresh.summary.resource_changes.get("delete") == 1
    assert ecs_stack.preview().change_summary == {"same": 1, "create": 1}
    up = ecs_stack.up()
    assert service()["status"] == "ACTIVE"
    assert up.outputs["secret_arns"].value == secret_arns  # adopted, not duplicated
    assert len(leftovers()["secrets"]) == 3

    destroy = ecs_stack.destroy()
    assert destroy.summary.resource_changes == {"delete": 2}
    assert_nothing_left()
