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

from livekit import api

from contract.metadata import MAX_RESUMES

logger = logging.getLogger("siphon.worker")

TAKEOVER_TIMEOUT = 4.0
"""Seconds a re-dispatched call may wait for an agent before it is ended with a BYE."""
POLL = 0.1
ATTR_CONFIG_HASH = "siphon.config_hash"


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


def _caller_present(parts: list[api.ParticipantInfo]) -> bool:
    return any(p.kind == api.ParticipantInfo.Kind.SIP for p in parts)


async def participants(lk: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    """Everyone in ``room`` (nobody when the room is gone)."""
    try:
        return list((await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants)
    except api.TwirpError as err:
        if err.code == "not_found":
            return []
        raise


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
    """Re-dispatch one call whose agent process died (see the module docstring); the outcome, for the log. An agent
    whose session failed hands its own call over with ``remove_dead=False`` (it leaves by itself)."""
    started = time.monotonic()
    parts = await participants(lk, room)
    if not _caller_present(parts):
        return "no caller in the room: nothing to take over"
    before = {p.identity for p in parts if p.kind == api.ParticipantInfo.Kind.AGENT} | {dead_identity}
    resumed = resume_metadata(metadata, job_id)
    if resumed is None:
        await hang_up(lk, room)
        return f"taken over {MAX_RESUMES} times already: call ended (BYE)"
    dispatch = await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=resumed)
    )
    if dead_identity and remove_dead:
        try:
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=dead_identity))
        except api.TwirpError as err:  # already gone
            if err.code != "not_found":
                logger.warning("could not remove the dead agent", extra={"room": room, "error": err.message[:200]})
    while time.monotonic() - started < TAKEOVER_TIMEOUT:
        parts = await participants(lk, room)
        if not _caller_present(parts):
            return "the caller left during the take-over"
        if any(  # a new agent (none that was here before the dispatch) published its configuration
            p.kind == api.ParticipantInfo.Kind.AGENT and p.identity not in before and p.attributes.get(ATTR_CONFIG_HASH)
            for p in parts
        ):
            return f"taken over in {time.monotonic() - started:.2f}s"
        await asyncio.sleep(POLL)
    with contextlib.suppress(api.TwirpError):
        await lk.agent_dispatch.delete_dispatch(dispatch.id, room)
    await hang_up(lk, room)
    return f"no agent took the call over within {TAKEOVER_TIMEOUT:g}s: call ended (BYE)"


async def hang_up(lk: api.LiveKitAPI, room: str) -> str:
    """Close the room: the bridge hangs the caller up with a BYE (a normal end of the call for the carrier)."""
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    except api.TwirpError as err:
        if err.code != "not_found":
            raise
        return "the room was already gone"
    return "call ended (BYE)"


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
            if not _caller_present(await participants(self._api, room)):
                logger.info("a job process exited abnormally after its call ended", extra=where)
                return
        except Exception:
            logger.warning("could not look into the room of a job process that died", extra=where)
        logger.error("job process died during a call; taking the call over", extra=where)
        try:
            outcome = await take_over(
                self._api, agent_name=self._agent_name, room=room, metadata=metadata, job_id=job_id,
                dead_identity=identity,
            )  # fmt: skip
        except Exception as err:
            logger.exception("taking the call over failed", extra={"room": room, "job_id": job_id})
            outcome = f"failed: {type(err).__name__}"
        logger.info(
            "call take-over",
            extra={"room": room, "job_id": job_id, "outcome": outcome,
                   "take_over_ms": round((time.monotonic() - started) * 1000, 1)},
        )  # fmt: skip
