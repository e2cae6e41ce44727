"""The worker's death-queue consumer (worker/stopped_tasks.py) on moto: an ECS task stopped event, put through the
stack's EventBridge rule, reaches the queue; the consumer recovers that task's calls and only then deletes it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import boto3
import pytest
from livekit import api

from contract.settings import WorkerSettings
from tests.ecs_agent_endpoint import TASK_ARN, agent_endpoint
from tests.test_ecs_death_queue import create_queue, put_task_event, task_event
from worker.dead_worker import METADATA_URI_ENV, CallLedger, ledger_room, own_worker_id, task_id
from worker.stopped_tasks import StoppedTask, StoppedTasks, attach, livekit_recovery, parse_event


@pytest.fixture
def queue(aws) -> dict[str, Any]:
    return create_queue()[1].outs


class Recoveries:
    """A recovery that records the worker ids it is asked for (or raises, or takes its time)."""

    def __init__(self, error: Exception | None = None, seconds: float = 0.0) -> None:
        self.ids: list[str] = []
        self.error = error
        self.seconds = seconds

    async def __call__(self, worker_id: str) -> list[str]:
        self.ids.append(worker_id)
        await asyncio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return ["call ended (BYE)"]


def waiting(url: str) -> int:
    """Messages in the queue, visible or not."""
    a = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def test_only_an_ecs_task_stopped_event_names_a_task():
    event = {"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": json.loads(task_event(task="ab12"))}
    assert parse_event(json.dumps(event)) == StoppedTask(
        task_id="ab12", task_arn="arn:aws:ecs:us-east-1:123456789012:task/voice/ab12",
        cluster_arn="arn:aws:ecs:us-east-1:123456789012:cluster/voice", group="service:siphon-test-support",
        stopped_reason="Essential container in task exited", stop_code="EssentialContainerExited",
    )  # fmt: skip
    running = {**event, "detail": {**event["detail"], "lastStatus": "RUNNING"}}
    for body in ("", "not json", "[]", json.dumps(running), json.dumps({**event, "source": "my.app"}),
                 json.dumps({**event, "detail": {"lastStatus": "STOPPED"}})):  # fmt: skip
        assert parse_event(body) is None, body


def test_the_consumer_recovers_the_stopped_task_and_then_deletes_its_event(queue):
    put_task_event(task="c0ffee")
    recover = Recoveries()
    consumer = StoppedTasks(queue["queue_url"], recover, wait_seconds=1)
    messages = consumer.receive()
    assert asyncio.run(consumer.handle_batch(messages)) == ["recovered c0ffee: 1 call(s)"]
    assert recover.ids == ["c0ffee"]
    assert waiting(queue["queue_url"]) == 0


def test_a_failed_recovery_leaves_the_event_for_redelivery(queue):
    put_task_event(task="bad1")
    consumer = StoppedTasks(queue["queue_url"], Recoveries(RuntimeError("LiveKit said no")), wait_seconds=1,
                            visibility_seconds=1)  # fmt: skip
    first = consumer.receive()
    assert asyncio.run(consumer.handle_batch(first)) == ["failed (RuntimeError): left on the queue"]
    time.sleep(1.5)  # the visibility timeout passes: SQS hands the event out again
    retry = StoppedTasks(queue["queue_url"], Recoveries(), wait_seconds=1)
    again = retry.receive()
    assert [m["MessageId"] for m in again] == [m["MessageId"] for m in first]
    assert asyncio.run(retry.handle_batch(again)) == ["recovered bad1: 1 call(s)"]


def test_a_long_recovery_keeps_its_event_hidden_from_other_consumers(queue):
    put_task_event(task="slow1")
    consumer = StoppedTasks(queue["queue_url"], Recoveries(seconds=3.0), wait_seconds=1, visibility_seconds=2)
    messages = consumer.receive()
    done: list[list[str]] = []
    worker = threading.Thread(target=lambda: done.append(asyncio.run(consumer.handle_batch(messages))))
    worker.start()
    time.sleep(2.5)  # past the first visibility timeout: extended at 1 s, so still hidden
    other = StoppedTasks(queue["queue_url"], Recoveries(), wait_seconds=0)
    assert other.receive() == []
    worker.join(10)
    assert done == [["recovered slow1: 1 call(s)"]]
    assert waiting(queue["queue_url"]) == 0


def test_the_consumer_never_recovers_its_own_task(queue):
    put_task_event(task="me")
    recover = Recoveries()
    consumer = StoppedTasks(queue["queue_url"], recover, own_id="me", wait_seconds=1)
    assert asyncio.run(consumer.handle_batch(consumer.receive())) == ["own task: ignored"]
    assert recover.ids == []


def test_a_message_that_is_no_stopped_task_is_dropped_without_recovery(queue):
    boto3.client("sqs").send_message(QueueUrl=queue["queue_url"], MessageBody="hello")
    recover = Recoveries()
    consumer = StoppedTasks(queue["queue_url"], recover, wait_seconds=1)
    assert asyncio.run(consumer.handle_batch(consumer.receive())) == ["not an ECS task stopped event: deleted"]
    assert recover.ids == []
    assert waiting(queue["queue_url"]) == 0


def test_a_consumer_that_cannot_read_its_queue_keeps_retrying_without_raising(aws):
    consumer = StoppedTasks("http://127.0.0.1:9/123456789012/nowhere", Recoveries(), wait_seconds=1)
    thread = consumer.start()
    time.sleep(1.5)
    assert thread.is_alive()
    consumer.stop()
    thread.join(15)
    assert not thread.is_alive()


def test_an_idle_consumer_makes_no_livekit_request(queue):
    made: list[int] = []

    def make_api() -> Any:
        made.append(1)
        raise AssertionError("no LiveKit client while nothing stopped")

    consumer = StoppedTasks(queue["queue_url"], livekit_recovery(make_api), wait_seconds=1)
    thread = consumer.start()
    time.sleep(2.5)  # two empty long polls
    consumer.stop()
    thread.join(5)
    assert made == []


class FakeServer:
    """What attach uses of an AgentServer: its events."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Any]] = {}

    def on(self, event: str, handler: Any) -> None:
        self.handlers.setdefault(event, []).append(handler)


def test_attach_starts_consuming_when_the_worker_has_started_and_not_before(aws):
    server = FakeServer()
    unreachable = "http://127.0.0.1:9/123456789012/siphon-test-worker-deaths"  # no long poll held on the shared moto
    consumer = attach(server, WorkerSettings(death_queue_url=unreachable, worker_id="this-worker"))
    assert consumer is not None
    assert consumer.queue_url == unreachable
    assert not [t for t in threading.enumerate() if t.name == "siphon-stopped-tasks"]
    [started] = server.handlers["worker_started"]
    started()
    [thread] = [t for t in threading.enumerate() if t.name == "siphon-stopped-tasks"]
    for _ in range(100):
        if consumer.own_id:
            break
        time.sleep(0.02)
    consumer.stop()
    thread.join(15)
    assert consumer.own_id == "this-worker", "its own stopped event is never acted on"
    assert not thread.is_alive()
    assert attach(FakeServer(), WorkerSettings()) is None, "no queue (not on ECS): nothing to consume"


def test_a_stopped_task_event_recovers_that_workers_calls_from_its_ledger_on_livekit(queue, endpoints):
    """The whole ECS path on the local servers: the task's ledger (written as its worker writes it) is claimed and
    its call recovered (here the caller had already left) by ``worker.dead_worker.recover_worker``."""

    async def scenario() -> tuple[list[str], set[str]]:
        lk = api.LiveKitAPI()
        try:
            await lk.room.create_room(api.CreateRoomRequest(name="ecs-death-call"))
            await CallLedger("support-agent", "ecs-task-1").write(
                lk, [{"room": "ecs-death-call", "job": "AJ_dead", "dispatch": "", "identity": "agent-dead"}]
            )
            put_task_event(task="ecs-task-1")
            consumer = StoppedTasks(queue["queue_url"], livekit_recovery(lambda: lk), wait_seconds=1)
            outcomes = await consumer.handle_batch(await asyncio.to_thread(consumer.receive))
            rooms = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
            await lk.room.delete_room(api.DeleteRoomRequest(room="ecs-death-call"))
            return outcomes, rooms
        finally:
            await lk.aclose()

    outcomes, rooms = asyncio.run(scenario())
    assert outcomes == ["recovered ecs-task-1: 1 call(s)"]
    assert ledger_room("ecs-task-1") not in rooms, "the ledger is claimed"
    assert waiting(queue["queue_url"]) == 0


def test_the_guard_without_a_queue_says_what_to_set():
    run = subprocess.run([sys.executable, "-m", "worker.stopped_tasks"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "SIPHON_DEATH_QUEUE_URL"})  # fmt: skip
    assert run.returncode == 2
    assert "no queue: set SIPHON_DEATH_QUEUE_URL or pass --queue-url (the stack output death_queue_url)" in run.stderr


def test_a_worker_on_ecs_is_known_by_the_task_id_its_stopped_event_names(monkeypatch):
    """On ECS the worker reads its task's ARN from the task metadata endpoint: its call ledger is named by the same
    id that ECS's task-stopped event carries, so the event leads recovery to that worker's calls."""
    with agent_endpoint() as ecs:
        monkeypatch.setenv(METADATA_URI_ENV, ecs.uri)
        own = own_worker_id(None)
    detail = json.loads(task_event(cluster="voice", task=TASK_ARN.rsplit("/", 1)[1]))
    event = {"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": detail}
    stopped = parse_event(json.dumps(event))
    assert stopped is not None and own == stopped.task_id == task_id(TASK_ARN)
    assert ledger_room(own) == ledger_room(stopped.task_id)
    assert own_worker_id("worker-7") == "worker-7", "SIPHON_WORKER_ID wins"
