"""A call whose agent process dies is taken over: the worker's main process re-dispatches it.

livekit-server (1.13.5, the open-source server) never hands a running job to another worker: when a job process
or a whole worker dies, its dispatch stays "running" and nobody is asked again (``deregisterJob``: "TODO update
dispatch state"), and the dead agent's participant stays in the room until its connection times out (about 20 s),
while the caller hears silence. ``JobRequest``'s ``resuming`` is never set by it.

So the worker's main process watches its job processes (livekit-agents' process pool reports every exit). When
one exits abnormally (killed, crashed: a non-zero exit code) while its caller is still in the room, the main
process at once:

1. creates a new agent dispatch for the same agent name into the same room, with the job's metadata plus a
   ``resume`` marker (``contract.metadata.ResumeMarker``); LiveKit hands it to a worker of the agent (this one or
   another), whose agent resolves the same configuration from the same metadata and SIP participant, says the
   resume message instead of the greeting and publishes ``siphon.resumed=true``;
2. removes the dead agent's participant from the room (it would otherwise linger for ~20 s);
3. waits ``TAKEOVER_TIMEOUT`` seconds for an agent to publish its configuration in the room; if none does (no
   worker has capacity, or the call was already taken over ``MAX_RESUMES`` times), it closes the room, and the
   bridge ends the call with a BYE: the caller is never left in silence until a media timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from livekit import api

from contract.metadata import MAX_RESUMES
from contract.wire import CONFIG_HASH_ATTRIBUTE

logger = logging.getLogger("siphon.worker")

TAKEOVER_TIMEOUT = 4.0
"""Seconds a re-dispatched call may wait for an agent before it is ended with a BYE."""
POLL = 0.25  # seconds between looks into a room being taken over (at most 16 requests in all)


def resume_metadata(raw: str, job_id: str) -> str | None:
    """The metadata of the take-over of a call whose job ``job_id`` died: the job's own metadata (every key kept
    as sent) with ``resume`` set (``count`` one more than the dead job's); ``None`` when the call was already
    taken over ``MAX_RESUMES`` times."""
    try:
        data: Any = json.loads(raw) if raw.strip() else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    previous = data.get("resume")
    count = previous.get("count", 0) if isinstance(previous, dict) else 0
    if not isinstance(count, int) or count >= MAX_RESUMES:
        return None
    data["resume"] = {"count": count + 1, "job_id": job_id[:128]}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def caller_present(parts: list[api.ParticipantInfo]) -> bool:
    """Whether a caller (a SIP participant) is among ``parts``."""
    return any(p.kind == api.ParticipantInfo.Kind.SIP for p in parts)


async def participants(lk: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    """Everyone in ``room`` (nobody when the room is gone)."""
    try:
        return list((await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants)
    except api.TwirpError as err:
        if err.code == "not_found":
            return []
        raise


async def wait_for_agent(
    lk: api.LiveKitAPI, room: str, before: set[str], started: float, timeout: float = TAKEOVER_TIMEOUT
) -> bool:
    """Wait, until ``timeout`` after ``started``, for a new agent (none of ``before``) to publish its configuration
    in ``room``; False when none did or the caller left. A request that fails (throttled) is retried at the next
    look."""
    while time.monotonic() - started < timeout:
        try:
            parts = await participants(lk, room)
        except Exception as err:
            logger.warning("could not look into a room being taken over", extra={"room": room, "error": str(err)[:200]})
        else:
            if not caller_present(parts):
                return False
            if any(  # a new agent (none that was here before the dispatch) published its configuration
                p.kind == api.ParticipantInfo.Kind.AGENT
                and p.identity not in before
                and p.attributes.get(CONFIG_HASH_ATTRIBUTE)
                for p in parts
            ):
                return True
        await asyncio.sleep(POLL)
    return False


async def take_over(
    lk: api.LiveKitAPI,
    *,
    agent_name: str,
    room: str,
    metadata: str,
    job_id: str,
    dead_identity: str,
    remove_dead: bool = True,
) -> str:
    """Re-dispatch one call whose agent died (see the module docstring); the outcome, for the log. Never raises and
    never leaves the caller with no agent: whatever fails, the call is ended with a BYE (``hang_up``). An agent
    whose session failed hands its own call over with ``remove_dead=False`` (it leaves by itself)."""
    started = time.monotonic()
    try:
        parts = await participants(lk, room)
        if not caller_present(parts):
            return "no caller in the room: nothing to take over"
        before = {p.identity for p in parts if p.kind == api.ParticipantInfo.Kind.AGENT} | {dead_identity}
        resumed = resume_metadata(metadata, job_id)
        if resumed is None:
            return f"taken over {MAX_RESUMES} times already: " + await hang_up(lk, room)
        dispatch = await _create_dispatch(
            lk, api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=resumed)
        )
    except Exception as err:  # refused, throttled, unreachable: end the call rather than leave the caller alone
        return f"take-over failed ({type(err).__name__}: {str(err)[:200]}): " + await hang_up(lk, room)
    if dead_identity and remove_dead:
        try:
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=dead_identity))
        except Exception as err:  # already gone, or the API is busy: it times out by itself
            if not (isinstance(err, api.TwirpError) and err.code == "not_found"):
                logger.warning("could not remove the dead agent", extra={"room": room, "error": str(err)[:200]})
    if await wait_for_agent(lk, room, before, started):
        return f"taken over in {time.monotonic() - started:.2f}s"
    with contextlib.suppress(Exception):
        await lk.agent_dispatch.delete_dispatch(dispatch.id, room)
    return f"no agent took the call over within {TAKEOVER_TIMEOUT:g}s: " + await hang_up(lk, room)


DISPATCH_RETRIES = (0.25, 0.5, 1.0)
"""Pauses before each retry of a re-dispatch that failed for a reason that may pass (throttled, a server error, a
timeout): the call is ended only after them, under 2 s in all."""


def _may_pass(err: BaseException) -> bool:
    """Throttled (429), a server error (5xx), a timeout or a lost connection: worth one more try."""
    if isinstance(err, api.TwirpError):
        return err.status == 429 or err.status >= 500
    return isinstance(err, TimeoutError | OSError | aiohttp.ClientError)


async def _create_dispatch(lk: api.LiveKitAPI, request: api.CreateAgentDispatchRequest) -> api.AgentDispatch:
    """``CreateDispatch``, retried after ``DISPATCH_RETRIES`` while it fails for a reason that may pass."""
    for pause in DISPATCH_RETRIES:
        try:
            return await lk.agent_dispatch.create_dispatch(request)
        except Exception as err:
            if not _may_pass(err):
                raise
            logger.warning("re-dispatch failed; retrying", extra={"room": request.room, "error": str(err)[:200]})
        await asyncio.sleep(pause)
    return await lk.agent_dispatch.create_dispatch(request)


END_TRIES = (0.0, 0.25, 0.5, 1.0, 2.0)
"""Delays before each attempt to close a room (best effort, within ~4 s: the caller hears the BYE soon after)."""


async def hang_up(lk: api.LiveKitAPI, room: str) -> str:
    """Close the room, retried: the bridge hangs the caller up with a BYE (a normal end of the call for the
    carrier); the outcome, for the log."""
    error = ""
    for delay in END_TRIES:
        await asyncio.sleep(delay)
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        except api.TwirpError as err:
            if err.code == "not_found":
                return "the room was already gone"
            error = f"{err.code}: {err.message[:200]}"
        except Exception as err:
            error = f"{type(err).__name__}: {str(err)[:200]}"
        else:
            return "call ended (BYE)"
    logger.error("could not end a call: its room stays open", extra={"room": room, "error": error})
    return f"could not end the call ({error})"


class CrashWatch:
    """Watches one ``AgentServer``'s job processes and takes over the call of any that dies (module docstring)."""

    def __init__(self, agent_name: str) -> None:
        self._agent_name = agent_name
        self._api: api.LiveKitAPI | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, server: Any) -> None:
        """Hook into the server's process pool once it runs (livekit-agents 1.8.9: ``AgentServer._proc_pool``,
        whose ``process_closed`` event reports every job process that exits)."""

        def started() -> None:
            server._proc_pool.on("process_closed", self.process_closed)

        server.on("worker_started", started)

    def process_closed(self, proc: Any) -> None:
        """A job process exited: take its call over if it died abnormally while holding one."""
        info = proc.running_job
        code = getattr(proc, "exitcode", None)
        if info is None or code in (0, None):
            return
        room, job_id = info.job.room.name, info.job.id
        identity = info.accept_arguments.identity if info.accept_arguments else ""
        where = {"room": room, "job_id": job_id, "exit_code": code, "agent_identity": identity}
        task = asyncio.get_running_loop().create_task(self._take_over(room, info.job.metadata, job_id, identity, where))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take_over(self, room: str, metadata: str, job_id: str, identity: str, where: dict[str, Any]) -> None:
        if self._api is None:
            self._api = api.LiveKitAPI()  # LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET: the worker's own
        started = time.monotonic()
        try:  # a process that exits abnormally while its room closes (the caller hung up) held no call any more
            if not caller_present(await participants(self._api, room)):
                logger.info("a job process exited abnormally after its call ended", extra=where)
                return
        except Exception:
            logger.warning("could not look into the room of a job process that died", extra=where)
        logger.error("job process died during a call; taking the call over", extra=where)
        outcome = await take_over(
            self._api, agent_name=self._agent_name, room=room, metadata=metadata, job_id=job_id,
            dead_identity=identity,
        )  # fmt: skip
        logger.info(
            "call take-over",
            extra={"room": room, "job_id": job_id, "outcome": outcome,
                   "take_over_ms": round((time.monotonic() - started) * 1000, 1)},
        )  # fmt: skip
