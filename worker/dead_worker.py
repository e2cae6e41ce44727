"""A worker that dies with calls: the platform that ran it reports the death, and its calls are taken over or ended.

Nothing here polls LiveKit, and nothing here decides that a worker is dead. A death is only ever *reported* by
what runs the worker and saw it end:

- a job process: the worker's own main process (``worker.dead_job.CrashWatch``);
- a whole worker on ECS: ECS itself, as a task state change (``STOPPED``) that an EventBridge rule of the stack
  puts on an SQS queue, read by the living workers (``worker.stopped_tasks``);
- a whole worker on ``./dev local``: its process supervisor (``localenv.deaths``).

A worker that is slow, throttled (429) or cut off from LiveKit's API is therefore never taken for dead: only a
process that has exited is.

To find a dead worker's calls without listing rooms, each worker's main process keeps a **call ledger**: one empty
LiveKit room, ``siphon-calls-<worker id>``, whose metadata lists its running calls (room, job, dispatch, agent
identity). It is rewritten only when that list changes, so an idle worker makes no LiveKit request at all and a
call costs two (one when it starts, one when it ends; simultaneous changes share a write). A write that fails is
retried with backoff and harms nothing. Recovery after a death (``recover_worker``) makes one ``ListRooms`` filtered
by the ledger's name, claims the ledger by deleting it (only one claim succeeds, so a death reported twice is
recovered once), and then, for each call still holding a caller:

- on a LiveKit that re-dispatches a lost worker's jobs itself (LiveKit Cloud), it only waits for that agent: our
  own recovery stands down, so a call never gets two agents;
- elsewhere (open-source livekit-server never re-dispatches) it takes the call over as for a dead job process
  (``worker.dead_job.take_over``), or, when the reporter knows no worker of the agent is left, ends it at once;
- whatever fails on the way, the call is ended with a BYE (``worker.dead_job.hang_up``): never a caller in a room
  with no agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from livekit import api

from contract.wire import LIVEKIT_URL_ENV
from worker.dead_job import caller_present, hang_up, participants, take_over, wait_for_agent

logger = logging.getLogger("siphon.worker")

LEDGER_PREFIX = "siphon-calls-"
LEDGER_TTL = 7 * 24 * 3600  # seconds LiveKit keeps an unchanged, empty ledger room (re-created on the next write)
WRITE_TIMEOUT = 10.0  # seconds one ledger write may take
RETRY_MIN, RETRY_MAX = 1.0, 30.0  # backoff of a ledger write that failed (LiveKit throttled or unreachable)
CLOUD_HOST_SUFFIX = ".livekit.cloud"
REDISPATCH_WAIT = 20.0
"""Seconds recovery waits for the agent of a LiveKit that re-dispatches lost jobs itself before it ends the call: it
must first notice the lost worker (its connection times out), so its agent comes later than one of our take-overs."""


def ledger_room(worker_id: str) -> str:
    """The call ledger room of one worker."""
    return f"{LEDGER_PREFIX}{worker_id}"


def local_worker_id(pid: int, host: str | None = None) -> str:
    """The id of a worker that runs outside ECS and was given none: its host and the pid of its main process, which
    the supervisor that started it knows too."""
    return f"{host or socket.gethostname()}.{pid}"


def task_id(task_arn: str) -> str:
    """The id of an ECS task (the last segment of its ARN), which is also the id of the worker it runs."""
    return task_arn.rsplit("/", 1)[-1]


METADATA_URI_ENV = "ECS_CONTAINER_METADATA_URI_V4"  # set by ECS in every container: the task metadata endpoint


def own_worker_id(configured: str | None = None) -> str:
    """This worker's id: ``configured`` (``SIPHON_WORKER_ID``), else on ECS its task's id (from the task metadata
    endpoint: the id in the task-stopped event), else ``local_worker_id`` of this process."""
    if configured:
        return configured
    if uri := os.environ.get(METADATA_URI_ENV):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/task", timeout=2) as response:
                return task_id(str(json.loads(response.read())["TaskARN"]))
        except (OSError, ValueError, KeyError) as err:
            logger.warning("could not read the ECS task id; using the host and pid", extra={"error": _short(err)})
    return local_worker_id(os.getpid())


def redispatches(livekit_url: str) -> bool:
    """Whether this LiveKit re-dispatches the jobs of a worker it lost (LiveKit Cloud does; open-source
    livekit-server 1.13 does not)."""
    return (urlparse(livekit_url).hostname or "").endswith(CLOUD_HOST_SUFFIX)


Call = dict[str, str]
"""One running call in a ledger: ``room``, ``job``, ``dispatch``, ``identity`` (the agent's participant)."""


def running_calls(server: Any) -> list[Call]:
    """The calls an ``AgentServer``'s job processes hold now (no request: the main process's own state)."""
    return sorted(
        (
            {"room": j.job.room.name, "job": j.job.id, "dispatch": j.job.dispatch_id,
             "identity": j.accept_arguments.identity if j.accept_arguments else ""}
            for j in server.active_jobs
        ),
        key=lambda c: c["job"],
    )  # fmt: skip


class CallLedger:
    """This worker's call ledger (module docstring): rewritten when its running calls change, never periodically."""

    def __init__(self, agent_name: str, worker_id: str, check_every: float = 0.2) -> None:
        self.agent_name = agent_name
        self.worker_id = worker_id
        self.room = ledger_room(worker_id)
        self._check_every = check_every  # seconds between looks at the main process's own job list (no request)
        self._written: list[Call] = []  # nothing recorded is the same as no calls: an idle worker writes nothing
        self._exists = False  # whether this process has created its ledger room
        self._task: asyncio.Task[None] | None = None

    def attach(self, server: Any) -> None:
        """Start once the server runs; on a clean stop the ledger room is deleted."""

        def started() -> None:
            self._task = asyncio.get_running_loop().create_task(self.run(lambda: running_calls(server)))

        server.on("worker_started", started)

    async def run(self, calls: Callable[[], list[Call]], lk: api.LiveKitAPI | None = None) -> None:
        """Write the ledger whenever ``calls()`` changes, until cancelled (then delete it)."""
        lk = lk or api.LiveKitAPI()
        delay = RETRY_MIN
        try:
            while True:
                now = calls()
                if now != self._written:
                    try:  # a stalled API holds one write at most WRITE_TIMEOUT; the next one says the same
                        await asyncio.wait_for(self.write(lk, now), WRITE_TIMEOUT)
                        delay = RETRY_MIN
                    except asyncio.CancelledError:
                        raise
                    except Exception as err:  # throttled, slow or unreachable: a later write says the same
                        logger.warning(
                            "call ledger write failed; retrying",
                            extra={"ledger": self.room, "retry_s": delay, "error": _short(err)},
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX)
                        continue
                await asyncio.sleep(self._check_every)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(lk.room.delete_room(api.DeleteRoomRequest(room=self.room)))
            with contextlib.suppress(Exception):
                await lk.aclose()

    async def write(self, lk: api.LiveKitAPI, calls: list[Call]) -> None:
        """One write of the ledger (creates the room when it is gone)."""
        meta = json.dumps({"agent": self.agent_name, "calls": calls}, separators=(",", ":"))
        create = api.CreateRoomRequest(name=self.room, empty_timeout=LEDGER_TTL, metadata=meta)
        if not self._exists:
            await lk.room.create_room(create)
            self._exists = True
        else:
            try:
                await lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room=self.room, metadata=meta))
            except api.TwirpError as err:
                if err.code != "not_found":  # gone (its empty timeout passed, or it was claimed): write it again
                    raise
                await lk.room.create_room(create)
        self._written = calls


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:200]}"


async def _claim(lk: api.LiveKitAPI, worker_id: str) -> tuple[str, list[Call]] | None:
    """Read a dead worker's ledger and claim it (delete it); ``None`` when there is none, or another claimed it."""
    room = ledger_room(worker_id)
    found = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
    if not found:
        return None
    try:
        data = json.loads(found[0].metadata or "{}")
    except ValueError:
        data = {}
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    except api.TwirpError as err:
        if err.code == "not_found":
            return None  # claimed by another reporter of the same death
        raise
    calls = data.get("calls") if isinstance(data, dict) else None
    agent = data.get("agent") if isinstance(data, dict) else None
    valid = [c for c in calls if isinstance(c, dict) and c.get("room")] if isinstance(calls, list) else []
    return (agent if isinstance(agent, str) else ""), valid


async def recover_worker(
    lk: api.LiveKitAPI,
    worker_id: str,
    *,
    agent_alive: bool | None = None,
    platform_redispatches: bool | None = None,
) -> list[str]:
    """Recover the calls of a worker whose death was reported (module docstring); one outcome per call, for the
    log. ``agent_alive=False``: the reporter knows no worker of the agent is left, so its calls end at once;
    ``platform_redispatches``: default, whether ``LIVEKIT_URL`` is LiveKit Cloud."""
    claimed = await _claim(lk, worker_id)
    if claimed is None:
        logger.info("a worker stopped; no calls recorded for it", extra={"worker_id": worker_id})
        return []
    agent, calls = claimed
    if platform_redispatches is None:
        platform_redispatches = redispatches(os.environ.get(LIVEKIT_URL_ENV, ""))
    logger.error(
        "a worker died",
        extra={"worker_id": worker_id, "agent_name": agent, "calls": len(calls), "agent_alive": agent_alive,
               "platform_redispatches": platform_redispatches},
    )  # fmt: skip
    outcomes = await asyncio.gather(*(_recover_call(lk, agent, c, agent_alive, platform_redispatches) for c in calls))
    for c, outcome in zip(calls, outcomes, strict=True):
        logger.info("call of a dead worker", extra={"room": c["room"], "worker_id": worker_id, "outcome": outcome})
    return list(outcomes)


async def _recover_call(
    lk: api.LiveKitAPI, agent: str, call: Call, agent_alive: bool | None, platform_redispatches: bool
) -> str:
    room = call["room"]
    started = time.monotonic()
    try:
        if not caller_present(await participants(lk, room)):
            return "no caller in the room"
        if agent_alive is False:
            return "no worker of the agent is alive: " + await hang_up(lk, room)
        if platform_redispatches:  # LiveKit hands the job to another worker itself: never a second agent
            before = {call.get("identity", "")}
            if await wait_for_agent(lk, room, before, started, REDISPATCH_WAIT):
                return f"re-dispatched by LiveKit; taken over in {time.monotonic() - started:.2f}s"
            return "LiveKit re-dispatched it to no agent: " + await hang_up(lk, room)
        return await take_over(
            lk, agent_name=agent, room=room, metadata=await _dispatch_metadata(lk, room, call.get("dispatch", "")),
            job_id=call.get("job", ""), dead_identity=call.get("identity", ""),
        )  # fmt: skip
    except Exception as err:  # a take-over the API refused: the caller is never left with no agent
        return f"take-over failed ({_short(err)}): " + await hang_up(lk, room)


async def _dispatch_metadata(lk: api.LiveKitAPI, room: str, dispatch_id: str) -> str:
    """The metadata of the dispatch the dead job served (the dispatch rule's, or a take-over's)."""
    for d in await lk.agent_dispatch.list_dispatch(room):
        if d.id == dispatch_id:
            return str(d.metadata)
    return ""


def report_death(
    worker_id: str, *, agent_alive: bool | None = None, make_api: Callable[[], api.LiveKitAPI] = api.LiveKitAPI
) -> list[str]:
    """Recover a dead worker's calls from a thread with no event loop (a process supervisor)."""

    async def run() -> list[str]:
        lk = make_api()
        try:
            return await recover_worker(lk, worker_id, agent_alive=agent_alive)
        finally:
            await lk.aclose()

    return asyncio.run(run())


Recover = Callable[[str], Awaitable[list[str]]]
"""What a death reporter calls with the dead worker's id."""
