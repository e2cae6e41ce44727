"""The stack's death queue on moto: the SQS queue, the EventBridge rule on its cluster's stopped tasks, the queue
policy, the workers' least-privilege access, and the provider's adopt / drift / delete.

moto accepts ``put_events`` with ``Source: aws.ecs`` (AWS refuses ``aws.*`` sources from PutEvents: there, only ECS
itself emits them), so the events below go through the rule's real pattern matching and target delivery on moto's
EventBridge: the most faithful stand-in for ECS's own event. moto neither checks the queue policy on delivery nor
starts tasks, so the policy is asserted as a document.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from infra.ecs.death_queue import WorkerDeathQueueProvider
from infra.ecs.provider import AgentWorkerProvider
from infra.ecs.spec import DEATH_QUEUE_ACTIONS
from localenv.manager import Endpoints, http_ok
from localenv.ports import free_tcp_port
from tests.stack_harness import StackUnderTest
from tests.test_ecs_helpers import assert_nothing_left, container_env, default_network, full_args, role_statements
from worker.stopped_tasks import StoppedTasks

ACCOUNT = "123456789012"
CLUSTER_ARN = f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/voice"
SERVICE = "siphon-test-support"
QUEUE = "siphon-test-worker-deaths"


def death_queue_args(**overrides: Any) -> dict[str, Any]:
    return {"stack": "dev", "environment": "test", "cluster_name": "voice", "service_names": [SERVICE], **overrides}


def create_queue(**overrides: Any) -> tuple[WorkerDeathQueueProvider, Any]:
    p = WorkerDeathQueueProvider()
    checked = p.check({}, {**death_queue_args(**overrides), "__provider": "x"})
    assert checked.failures == []
    return p, p.create(checked.inputs)


@pytest.fixture
def queue(aws: Endpoints) -> dict[str, Any]:
    """The outputs of a death queue for cluster ``voice`` and service ``siphon-test-support``."""
    return create_queue()[1].outs


def task_event(
    cluster: str = "voice", status: str = "STOPPED", service: str = SERVICE, task: str = "0a1b2c3d4e5f"
) -> str:
    """The detail of an ECS Task State Change, as ECS sends it (the fields the rule and the consumer read)."""
    return json.dumps({
        "clusterArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{cluster}",
        "taskArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/{task}",
        "group": f"service:{service}",
        "lastStatus": status,
        "desiredStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "stoppedReason": "Essential container in task exited",
    })  # fmt: skip


def put_task_event(events: Any = None, **detail: Any) -> None:
    """Send an ECS task state change through EventBridge's default bus (moto delivers it to matching targets)."""
    entry = {"Source": "aws.ecs", "DetailType": "ECS Task State Change", "Detail": task_event(**detail)}
    out = (events or boto3.client("events")).put_events(Entries=[entry])
    assert out.get("FailedEntryCount", 0) == 0, out


def queued(url: str) -> list[dict[str, Any]]:
    """Every message waiting in the queue (received, so hidden for the queue's visibility timeout)."""
    return (
        boto3.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    )


# -- the stack -------------------------------------------------------------------------------------------

LOCAL = yaml.safe_load((Path(__file__).parents[1] / "stacks" / "local.yaml").read_text())


@pytest.mark.engine
def test_the_stack_deploys_its_death_queue_rule_and_worker_permissions_and_destroy_removes_them(
    aws, tmp_path, pulumi_env
):
    doc = {k: v for k, v in copy.deepcopy(LOCAL).items() if not k.endswith(("_trunks", "_routes"))}
    sut = StackUnderTest(tmp_path, pulumi_env, "local", doc)
    outputs = {k: v.value for k, v in sut.stack.up().outputs.items()}
    sqs, events, ecs = boto3.client("sqs"), boto3.client("events"), boto3.client("ecs")
    name = "siphon-local-worker-deaths"
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    assert outputs["death_queue_url"] == url
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["MessageRetentionPeriod"], attributes["VisibilityTimeout"]) == ("900", "30")
    queue_arn = attributes["QueueArn"]
    rule = events.describe_rule(Name=name)
    services = sorted(f"service:siphon-local-{agent}" for agent in LOCAL["agents"])
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {
            "clusterArn": [f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/siphon-local"],
            "lastStatus": ["STOPPED"],
            "group": services,
        },
    }
    assert rule["State"] == "ENABLED"
    assert [t["Arn"] for t in events.list_targets_by_rule(Rule=name)["Targets"]] == [queue_arn]
    assert json.loads(attributes["Policy"])["Statement"] == [{
        "Sid": "StoppedTasksFromEventBridge",
        "Effect": "Allow",
        "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": rule["Arn"]}},
    }]  # fmt: skip
    for agent in LOCAL["agents"]:
        service = ecs.describe_services(cluster="siphon-local", services=[f"siphon-local-{agent}"])["services"][0]
        assert container_env(service["taskDefinition"])["SIPHON_DEATH_QUEUE_URL"] == url, agent
        statements = [s for s in role_statements(f"siphon-local-{agent}-task") if s["Sid"] == "StoppedTasks"]
        assert statements == [{"Sid": "StoppedTasks", "Effect": "Allow", "Action": sorted(DEATH_QUEUE_ACTIONS),
                               "Resource": [queue_arn]}], agent  # fmt: skip

    sut.stack.destroy()
    with pytest.raises(ClientError, match=r"NonExistentQueue|QueueDoesNotExist"):
        sqs.get_queue_url(QueueName=name)
    with pytest.raises(ClientError, match="ResourceNotFound"):
        events.describe_rule(Name=name)
    assert_nothing_left()


# -- the rule --------------------------------------------------------------------------------------------


def test_a_stopped_task_of_the_stacks_service_reaches_the_queue(queue):
    put_task_event(task="d1e2a3d4")
    [message] = queued(queue["queue_url"])
    event = json.loads(message["Body"])
    assert (event["source"], event["detail-type"]) == ("aws.ecs", "ECS Task State Change")
    assert event["detail"]["taskArn"].endswith("/voice/d1e2a3d4")


@pytest.mark.parametrize(
    "change",
    [{"cluster": "other"}, {"status": "RUNNING"}, {"status": "DEPROVISIONING"}, {"service": "siphon-test-other"}],
    ids=["another-cluster", "running", "stopping", "another-service"],
)
def test_a_task_change_other_than_a_stop_of_the_stacks_service_never_reaches_the_queue(queue, change):
    put_task_event(**change)
    assert queued(queue["queue_url"]) == []


def test_services_too_many_for_one_pattern_are_matched_by_their_common_prefix_in_the_cluster(aws):
    services = [f"siphon-test-agent-number-{i:02d}-with-a-long-name" for i in range(40)]
    queue = create_queue(service_names=services)[1].outs
    assert len(json.loads(queue["event_pattern"])["detail"]["group"]) == 1
    put_task_event(service=services[17], task="far1")
    put_task_event(service=services[17], cluster="other")
    [message] = queued(queue["queue_url"])
    assert json.loads(message["Body"])["detail"]["taskArn"].endswith("/far1")


def test_services_too_many_for_one_pattern_and_not_sharing_the_prefix_are_refused(aws):
    services = [f"custom-agent-number-{i:02d}-with-a-long-service-name" for i in range(40)]
    failures = WorkerDeathQueueProvider().check({}, death_queue_args(service_names=services)).failures
    assert len(failures) == 1
    assert "service_names: 40 services do not fit one EventBridge pattern (2048 characters)" in failures[0].reason


# -- the provider ----------------------------------------------------------------------------------------


def test_check_names_the_resource_and_each_invalid_field(aws):
    result = WorkerDeathQueueProvider().check({}, death_queue_args(service_names=[], visibility_timeout_seconds=1))
    assert sorted(f.property for f in result.failures) == ["service_names", "visibility_timeout_seconds"]
    assert all(f.reason.startswith("WorkerDeathQueue (environment 'test'): ") for f in result.failures)


def test_create_adopts_the_queue_and_rule_a_previous_attempt_left(aws):
    _, first = create_queue()
    _, second = create_queue()
    assert second.outs["queue_url"] == first.outs["queue_url"]
    assert boto3.client("sqs").list_queues()["QueueUrls"] == [first.outs["queue_url"]]
    assert [r["Name"] for r in boto3.client("events").list_rules()["Rules"]] == [QUEUE]
    assert len(boto3.client("events").list_targets_by_rule(Rule=QUEUE)["Targets"]) == 1


def test_read_reports_a_removed_target_and_update_restores_it(aws):
    p, created = create_queue()
    assert p.read(created.id, created.outs).outs["drift"] == []
    boto3.client("events").remove_targets(Rule=QUEUE, Ids=["worker-deaths"])
    read = p.read(created.id, created.outs)
    assert read.outs["drift"] == [f"EventBridge rule {QUEUE}: its target is not exactly queue {QUEUE}"]
    news = p.check({}, {**death_queue_args(), "__provider": "x"}).inputs
    assert p.diff(created.id, read.outs, news).changes is True
    repaired = p.update(created.id, read.outs, news).outs
    assert p.read(created.id, repaired).outs["drift"] == []
    put_task_event()
    assert len(queued(created.outs["queue_url"])) == 1


def test_a_deleted_queue_reads_as_gone_and_delete_tolerates_what_is_already_gone(aws):
    p, created = create_queue()
    p.delete(created.id, created.outs)
    assert_nothing_left()
    assert p.read(created.id, created.outs).id == ""
    p.delete(created.id, created.outs)


# -- least privilege -------------------------------------------------------------------------------------


def deploy_worker(queue: dict[str, Any]) -> dict[str, Any]:
    """An agent worker deployment whose workers read ``queue``."""
    subnets, sg = default_network()
    p = AgentWorkerProvider()
    args = full_args(subnets, sg, death_queue_url=queue["queue_url"], death_queue_arn=queue["queue_arn"])
    checked = p.check({}, {**args, "__provider": "x"})
    assert checked.failures == []
    return p.create(checked.inputs).outs


def test_the_task_role_may_only_receive_delete_and_extend_messages_of_its_queue(queue):
    outs = deploy_worker(queue)
    statements = role_statements("siphon-test-support-task")
    sqs_statements = [s for s in statements if any(a.startswith("sqs:") for a in s["Action"])]
    assert sqs_statements == [{
        "Sid": "StoppedTasks",
        "Effect": "Allow",
        "Action": ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"],
        "Resource": [queue["queue_arn"]],
    }]  # fmt: skip
    assert container_env(outs["task_definition_arn"])["SIPHON_DEATH_QUEUE_URL"] == queue["queue_url"]


def test_a_deployment_given_a_queue_url_without_its_arn_is_refused(aws):
    subnets, sg = default_network()
    args = full_args(subnets, sg, death_queue_url=f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{QUEUE}")
    failures = AgentWorkerProvider().check({}, args).failures
    assert [f.reason for f in failures] == [
        "AgentWorkerDeployment (agent_name 'support'): death_queue_arn: death_queue_url and death_queue_arn go "
        "together: set death_queue_arn too"
    ]


@pytest.fixture
def iam_enforced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[boto3.session.Session]:
    """A moto server of its own that checks IAM on every request after the first three (which make an admin user);
    yields the admin's session (the test's environment points at this server)."""
    port = free_tcp_port()
    moto = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with (tmp_path / "moto.log").open("w") as log:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log)
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                if http_ok(port, "/moto-api/"):
                    break
            time.sleep(0.05)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bootstrap")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bootstrap")
        iam = boto3.session.Session().client("iam")
        iam.create_user(UserName="admin")
        admin = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(admin))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the helpers' boto3.client() use the admin
        yield boto3.session.Session()
    finally:
        proc.terminate()
        proc.wait(10)


def test_with_the_task_roles_credentials_a_worker_can_consume_its_queue_and_do_nothing_else(iam_enforced):
    admin = iam_enforced
    queue = create_queue()[1].outs
    deploy_worker(queue)
    other = admin.client("sqs").create_queue(QueueName="someone-elses")["QueueUrl"]
    # ECS assumes the task role for the task; here the admin stands in for ECS (moto cannot evaluate the role's
    # ecs-tasks.amazonaws.com trust), so only the trust changes: the permissions under test are the deployed ones.
    iam = admin.client("iam")
    me = iam.get_user(UserName="admin")["User"]["Arn"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": me}, "Action": "sts:AssumeRole"}],
    }
    iam.update_assume_role_policy(RoleName="siphon-test-support-task", PolicyDocument=json.dumps(trust))
    creds = admin.client("sts").assume_role(
        RoleArn=iam.get_role(RoleName="siphon-test-support-task")["Role"]["Arn"], RoleSessionName="worker"
    )["Credentials"]
    task = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"], region_name="us-east-1",
    )  # fmt: skip
    put_task_event(admin.client("events"), task="f00d")
    recovered: list[str] = []

    async def recover(worker_id: str) -> list[str]:
        recovered.append(worker_id)
        return []

    consumer = StoppedTasks(queue["queue_url"], recover, sqs=task.client("sqs"), wait_seconds=1, visibility_seconds=2)
    messages = consumer.receive()
    sqs = task.client("sqs")
    sqs.change_message_visibility(QueueUrl=queue["queue_url"], ReceiptHandle=messages[0]["ReceiptHandle"],
                                  VisibilityTimeout=5)  # fmt: skip
    assert asyncio.run(consumer.handle_batch(messages)) == ["recovered f00d: 0 call(s)"]
    assert recovered == ["f00d"]
    denied = {
        "send": lambda: sqs.send_message(QueueUrl=queue["queue_url"], MessageBody="{}"),
        "purge": lambda: sqs.purge_queue(QueueUrl=queue["queue_url"]),
        "attributes": lambda: sqs.get_queue_attributes(QueueUrl=queue["queue_url"], AttributeNames=["All"]),
        "another queue": lambda: sqs.receive_message(QueueUrl=other, WaitTimeSeconds=0),
        "ecs": lambda: task.client("ecs").list_clusters(),
        "events": lambda: task.client("events").list_rules(),
    }
    assert {what: outcome(call) for what, call in denied.items()} == dict.fromkeys(denied, "AccessDenied")


def outcome(call: Any) -> str:
    """ "allowed", "AccessDenied", or the error a call raised (moto answers SQS's JSON protocol in XML, so the code is
    read from the text)."""
    try:
        call()
    except ClientError as err:
        return "AccessDenied" if "AccessDenied" in str(err) else str(err)
    return "allowed"
