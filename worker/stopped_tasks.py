"""ECS reports a worker's death; a living worker (or a guard process) recovers its calls.

The stack's ``WorkerDeathQueue`` (``infra.ecs.death_queue``) puts every ``ECS Task State Change`` of the stack's
services whose ``lastStatus`` is ``STOPPED`` on an SQS queue, through an EventBridge rule. ECS sends that event once
the task's containers have exited, so it is a confirmed death: a worker that is only slow, throttled or cut off from
LiveKit never produces one.

Each worker whose deployment sets ``SIPHON_DEATH_QUEUE_URL`` runs a ``StoppedTasks`` consumer (``attach``): one
daemon thread that long-polls the queue (``WaitTimeSeconds=20``: about 3 SQS requests a minute while idle, and no
LiveKit request at all) and, for each stopped task, runs the recovery (``worker.dead_worker.recover_worker``) on its own
event loop, so neither a slow recovery nor a stuck poll touches the worker's calls. SQS hands each event to one
consumer only. The event is deleted only once its recovery returned; one that raised stays on the queue and SQS hands
it out again after the visibility timeout (30 s), to this worker or another. While a recovery runs, its event's
visibility is extended, so a long one is not handed out twice; a worker that dies while recovering simply lets it
reappear. Recovery is idempotent (it claims the dead worker's ledger by deleting it), so a duplicate costs one
filtered ``ListRooms``. A stopped task that held no calls costs the same and recovers nothing.

``python -m worker.stopped_tasks`` runs the same consumer as a standalone guard process (for a project where every
worker may be gone: the guard still ends their calls with a BYE). It needs ``SIPHON_DEATH_QUEUE_URL`` (or
``--queue-url``; the stack exports it as ``death_queue_url``), the LiveKit variables and AWS credentials allowed
``sqs:ReceiveMessage``, ``sqs:DeleteMessage`` and ``sqs:ChangeMessageVisibility`` on the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from livekit import api
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.deployment import DEATH_QUEUE_ENV
from contract.settings import WorkerSettings
from worker.dead_worker import Recover, own_worker_id, recover_worker, task_id

logger = logging.getLogger("siphon.worker")

WAIT_SECONDS = 20
"""SQS long poll: a receive returns as soon as a message arrives, or empty after this long (SQS's maximum)."""
BATCH = 10
"""Messages one receive may return (SQS's maximum); their recoveries run together."""
VISIBILITY_SECONDS = 30
"""How long a received event stays hidden from the other consumers; extended every half of it while it is handled."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses after consecutive failed receives (then the last one, until a receive succeeds)."""
_SQS_HOST = re.compile(r"^https://sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/")


class _Detail(BaseModel):
    """The part of an ECS task state change this consumer reads. AWS adds fields to its events over time: the others
    are ignored, not refused (the one edge where ``extra="forbid"`` would turn a valid death into a lost one)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_arn: str = Field(alias="taskArn", pattern=r"^arn:aws[a-z-]*:ecs:[a-z0-9-]+:\d{12}:task/\S+$")
    last_status: str = Field(alias="lastStatus")
    cluster_arn: str = Field("", alias="clusterArn")
    group: str = ""
    stopped_reason: str = Field("", alias="stoppedReason")
    stop_code: str = Field("", alias="stopCode")


class _Event(BaseModel):
    """An EventBridge event as its SQS target receives it (the message body)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    source: str
    detail_type: str = Field(alias="detail-type")
    detail: _Detail


class StoppedTask(BaseModel):
    """A stopped ECS task, as the consumer acts on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(description="the task's id (its ARN's last segment): the id of the worker it ran")
    task_arn: str
    cluster_arn: str = ""
    group: str = Field("", description="service:<name> for a service's task")
    stopped_reason: str = ""
    stop_code: str = ""


def parse_event(body: str) -> StoppedTask | None:
    """The stopped task an EventBridge-delivered message reports, or None for anything else (another source or
    detail type, a task that did not stop, a body that is not such an event)."""
    try:
        event = _Event.model_validate_json(body)
    except (ValidationError, ValueError):
        return None
    d = event.detail
    if event.source != "aws.ecs" or event.detail_type != "ECS Task State Change" or d.last_status != "STOPPED":
        return None
    return StoppedTask(
        task_id=task_id(d.task_arn), task_arn=d.task_arn, cluster_arn=d.cluster_arn, group=d.group,
        stopped_reason=d.stopped_reason[:500], stop_code=d.stop_code,
    )  # fmt: skip


def sqs_client(queue_url: str) -> Any:
    """A boto3 SQS client for the queue (its region from the URL, else the environment's), with timeouts that fit
    a long poll."""
    import boto3
    from botocore.config import Config

    m = _SQS_HOST.match(queue_url)
    config = Config(connect_timeout=5, read_timeout=WAIT_SECONDS + 10, retries={"mode": "standard", "max_attempts": 3})
    return boto3.session.Session().client("sqs", region_name=m.group("region") if m else None, config=config)


class StoppedTasks:
    """Consumes the stack's death queue (module docstring): one stopped task at a time per message, deleted only
    after ``recover`` returned for it."""

    def __init__(
        self,
        queue_url: str,
        recover: Recover,
        *,
        own_id: str = "",
        sqs: Any = None,
        wait_seconds: int = WAIT_SECONDS,
        visibility_seconds: int = VISIBILITY_SECONDS,
    ) -> None:
        self.queue_url = queue_url
        self._recover = recover
        self.own_id = own_id
        """The id of the worker this consumer runs in ("" for a guard): its own stopped event is never acted on."""
        self._sqs = sqs
        self._wait = wait_seconds
        self._visibility = visibility_seconds
        self._stop = threading.Event()

    @property
    def sqs(self) -> Any:
        """The SQS client (made on first use)."""
        if self._sqs is None:
            self._sqs = sqs_client(self.queue_url)
        return self._sqs

    def receive(self) -> list[dict[str, Any]]:
        """One long poll (blocks up to ``wait_seconds``): the messages received, possibly none."""
        out = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=self._wait,
            VisibilityTimeout=self._visibility,
        )  # fmt: skip
        return list(out.get("Messages", []))

    def _delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    async def _keep_hidden(self, message: dict[str, Any]) -> None:
        """Extend the message's visibility every half period while its recovery runs."""
        while True:
            await asyncio.sleep(self._visibility / 2)
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=self._visibility
                )
            except Exception as err:  # it reappears for another consumer: recovery is idempotent
                logger.warning("could not extend a stopped task's event", extra={"error": str(err)[:200]})

    async def handle(self, message: dict[str, Any]) -> str:
        """Act on one message; the outcome, for the log. Never raises: a failed recovery leaves the message on the
        queue (SQS hands it out again after the visibility timeout)."""
        try:
            stopped = parse_event(str(message.get("Body", "")))
            if stopped is None:  # never a death: it would only come back
                self._delete(message)
                return "not an ECS task stopped event: deleted"
            where = {"worker_id": stopped.task_id, "stopped_reason": stopped.stopped_reason,
                     "stop_code": stopped.stop_code, "group": stopped.group}  # fmt: skip
            if self.own_id and stopped.task_id == self.own_id:  # this worker is running: no death to recover
                logger.warning("the death queue reports this worker's own task as stopped; ignored", extra=where)
                self._delete(message)
                return "own task: ignored"
            logger.info("an ECS task stopped", extra=where)
            keeper = asyncio.ensure_future(self._keep_hidden(message))
            try:
                outcomes = await self._recover(stopped.task_id)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            self._delete(message)
            return f"recovered {stopped.task_id}: {len(outcomes)} call(s)"
        except Exception as err:
            logger.exception("recovering a stopped task failed; its event stays on the queue for a retry")
            return f"failed ({type(err).__name__}): left on the queue"

    async def handle_batch(self, messages: list[dict[str, Any]]) -> list[str]:
        """Handle received messages together (their recoveries are independent)."""
        return list(await asyncio.gather(*(self.handle(m) for m in messages)))

    def stop(self) -> None:
        """Ask ``run_forever`` to return after its current poll."""
        self._stop.set()

    def run_forever(self) -> None:
        """Poll and handle until ``stop``; blocks its thread, with an event loop of its own for the recoveries. A
        failed receive (network, throttling, permissions) is logged and retried with backoff: never raised."""
        loop = asyncio.new_event_loop()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    messages = self.receive()
                    failures = 0
                    if messages:
                        for outcome in loop.run_until_complete(self.handle_batch(messages)):
                            logger.info("death queue", extra={"outcome": outcome})
                except Exception as err:
                    pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    logger.warning(
                        "could not read the death queue; retrying",
                        extra={"queue_url": self.queue_url, "error": str(err)[:300], "retry_s": pause},
                    )
                    self._stop.wait(pause)
        finally:
            loop.close()

    def start(self) -> threading.Thread:
        """``run_forever`` in a daemon thread (it ends with the process)."""
        thread = threading.Thread(target=self.run_forever, name="siphon-stopped-tasks", daemon=True)
        thread.start()
        return thread


def livekit_recovery(make_api: Callable[[], Any] | None = None) -> Recover:
    """``worker.dead_worker.recover_worker`` with one LiveKit API client, made on first use (on the loop that runs the
    recoveries; none exists, and no request is made, until a task stops)."""
    clients: list[Any] = []

    async def recover(worker_id: str) -> list[str]:
        if not clients:
            clients.append((make_api or api.LiveKitAPI)())  # LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET
        return list(await recover_worker(clients[0], worker_id))

    return recover


def attach(server: Any, settings: WorkerSettings | None = None) -> StoppedTasks | None:
    """Consume the death queue once the server runs (its ``worker_started`` event), like ``resume.CrashWatch``; the
    queue is the settings' ``death_queue_url`` (``SIPHON_DEATH_QUEUE_URL``: only ECS deployments set it), and the
    worker's own id (``worker_id``, else its ECS task id: ``worker.dead_worker.own_worker_id``) is never recovered.
    None when there is no queue."""
    settings = settings or WorkerSettings.from_env()
    if not settings.death_queue_url:
        return None
    consumer = StoppedTasks(settings.death_queue_url, livekit_recovery(), own_id=own_worker_id(settings.worker_id))
    server.on("worker_started", consumer.start)
    return consumer


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.stopped_tasks``: the standalone guard (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m worker.stopped_tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue-url", default=os.environ.get(DEATH_QUEUE_ENV), help=f"default: ${DEATH_QUEUE_ENV}")
    args = parser.parse_args(argv)
    if not args.queue_url:
        parser.error(f"no queue: set {DEATH_QUEUE_ENV} or pass --queue-url (the stack output death_queue_url)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger.info("guarding the death queue", extra={"queue_url": args.queue_url})
    consumer = StoppedTasks(args.queue_url, livekit_recovery())
    with contextlib.suppress(KeyboardInterrupt):
        consumer.run_forever()


if __name__ == "__main__":
    main()
