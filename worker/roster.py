"""A worker that dies with calls: its calls are taken over by a living worker of the same agent, or ended.

When a whole worker dies (its task is killed, out of memory, the host is gone), nothing in it can re-dispatch its
calls, and livekit-server (1.13.5) never hands a dead worker's jobs to another worker. So every worker keeps a
**roster** in LiveKit, the one service every worker reaches: an empty room named
``siphon-roster-<agent>.<process id>`` whose metadata it rewrites every ``BEAT`` seconds with a counter and its
running calls (room, job, dispatch, agent identity). Every worker reads every roster (one ``ListRooms`` per
beat). A roster whose counter has not moved for ``STALE`` seconds (as seen by the reader's own
clock: no clock agreement needed) belongs to a dead worker. The living worker whose roster name sorts first claims
it (deletes the roster room: only one claim succeeds) and takes each of its calls over as
``worker.resume.take_over`` does for a dead job process: a new dispatch with the same metadata plus the resume
marker, the dead agent removed, the call ended with a BYE if no agent takes it within the take-over timeout.

When a dead worker's agent has no living worker at all, nobody can take its calls over: the first living worker of
any agent ends them at once (closes their rooms: the bridge hangs the caller up with a BYE) instead of leaving the
caller in silence until LiveKit's ~20 s connection timeout. ``python -m worker.roster`` (the **guard**) does the
same with no worker of its own, for a project where every worker may be gone; ``./dev local`` runs one.

Costs: one ``UpdateRoomMetadata`` and one ``ListRooms`` per worker per beat; the roster rooms have no participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import api

from worker.resume import hang_up, participants, take_over

logger = logging.getLogger("siphon.worker")

PREFIX = "siphon-roster-"
BEAT = 0.5
STALE = 3.0  # beats missed for this long: dead (6 beats: a loaded host's slow API call is not a death)
ROSTER_TTL = 24 * 3600  # seconds LiveKit keeps an empty roster room (it is rewritten every beat, re-created if gone)


def roster_room(agent_name: str, process_id: str) -> str:
    """The roster room of one worker process."""
    return f"{PREFIX}{agent_name}.{process_id}"


def roster_agent(room: str) -> str | None:
    """The agent a roster room belongs to (``None`` for any other room)."""
    if not room.startswith(PREFIX) or "." not in room:
        return None
    return room[len(PREFIX) :].rsplit(".", 1)[0]


@dataclass
class _Seen:
    beat: object
    changed: float  # time.monotonic() when its beat last changed, by our clock
    calls: list[dict[str, str]] = field(default_factory=list)


class RosterWatch:
    """Reads the rosters of ``agents`` (``None``: every agent) every beat and acts on the dead ones: take the calls
    over when this is the first living worker of their agent (``own`` is this worker's roster room); end them when
    their agent has no living worker and this is the first living worker of any agent, or the guard (``own`` is
    ``None``). Claims race safely: only one deletion of the dead roster room succeeds."""

    def __init__(self, agents: set[str] | None, own: str | None) -> None:
        self._agents = agents
        self._own = own
        self._seen: dict[str, _Seen] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def tick(self, lk: api.LiveKitAPI) -> None:
        """Read every roster once and act on those gone stale."""
        now = time.monotonic()
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest())).rooms
        current: dict[str, api.Room] = {}
        for r in rooms:
            agent = roster_agent(r.name)
            if agent is not None and (self._agents is None or agent in self._agents):
                current[r.name] = r
        for name in list(self._seen):
            if name not in current:
                del self._seen[name]
        for name, r in current.items():
            try:
                meta = json.loads(r.metadata or "{}")
            except ValueError:
                meta = {}
            beat = meta.get("beat") if isinstance(meta, dict) else None
            calls = meta.get("calls", []) if isinstance(meta, dict) else []
            seen = self._seen.get(name)
            if seen is None or seen.beat != beat:
                self._seen[name] = _Seen(beat, now, calls if isinstance(calls, list) else [])
        alive = {n for n, s in self._seen.items() if now - s.changed < STALE}
        for name, seen in list(self._seen.items()):
            if name in alive or name == self._own:
                continue
            agent = roster_agent(name) or ""
            living = sorted(n for n in alive if roster_agent(n) == agent)
            if self._own is not None and agent == roster_agent(self._own):
                if living[:1] != [self._own]:
                    continue  # another living worker of the agent is first: it takes them over
                action = "take over"
            elif living:
                continue  # another agent's calls: its living workers take them over
            elif self._own is not None and min(alive, default=self._own) != self._own:
                continue  # no worker of that agent is alive: the first living worker of any agent ends the calls
            else:
                action = "end"
            del self._seen[name]
            task = asyncio.get_running_loop().create_task(self._claim(lk, name, agent, seen.calls, action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _claim(
        self, lk: api.LiveKitAPI, roster: str, agent: str, calls: list[dict[str, str]], action: str
    ) -> None:
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=roster))
        except api.TwirpError as err:
            if err.code == "not_found":
                return  # claimed by another watcher
            raise
        logger.error(
            "a worker died",
            extra={"roster": roster, "agent_name": agent, "calls": len(calls), "action": action},
        )
        valid = [c for c in calls if isinstance(c, dict) and c.get("room")]
        results = await asyncio.gather(*(self._one(lk, agent, c, action) for c in valid), return_exceptions=True)
        for c, outcome in zip(valid, results, strict=True):
            logger.info("call of a dead worker", extra={"room": c.get("room"), "outcome": str(outcome)[:300]})

    async def _one(self, lk: api.LiveKitAPI, agent: str, call: dict[str, str], action: str) -> str:
        room = call["room"]
        if action == "end":
            if not any(p.kind == api.ParticipantInfo.Kind.SIP for p in await participants(lk, room)):
                return "no caller in the room"
            return "no worker of the agent is alive: " + await hang_up(lk, room)
        return await take_over(
            lk, agent_name=agent, room=room, metadata=await _dispatch_metadata(lk, room, call.get("dispatch", "")),
            job_id=call.get("job", ""), dead_identity=call.get("identity", ""),
        )  # fmt: skip


async def _dispatch_metadata(lk: api.LiveKitAPI, room: str, dispatch_id: str) -> str:
    """The metadata of the dispatch the dead job served (the dispatch rule's, or a take-over's)."""
    with contextlib.suppress(api.TwirpError):
        for d in await lk.agent_dispatch.list_dispatch(room):
            if d.id == dispatch_id:
                return str(d.metadata)
    return ""


class Roster:
    """This worker's roster and its watch over the agent's other workers (module docstring)."""

    def __init__(self, agent_name: str) -> None:
        self._agent_name = agent_name
        self.room = roster_room(agent_name, uuid.uuid4().hex[:12])
        self._watch = RosterWatch(None, self.room)  # its agent's workers, and every other agent's as a guard
        self._beat = 0
        self._task: asyncio.Task[None] | None = None

    def attach(self, server: Any) -> None:
        """Start beating once the server runs (its ``active_jobs`` are the calls written to the roster)."""

        def started() -> None:
            self._task = asyncio.get_running_loop().create_task(self._run(server))

        server.on("worker_started", started)

    def _calls(self, server: Any) -> list[dict[str, str]]:
        return [
            {"room": j.job.room.name, "job": j.job.id, "dispatch": j.job.dispatch_id,
             "identity": j.accept_arguments.identity if j.accept_arguments else ""}
            for j in server.active_jobs
        ]  # fmt: skip

    async def _run(self, server: Any) -> None:
        lk = api.LiveKitAPI()
        try:  # the beat and the watch run apart: a slow read of the rosters never delays this worker's beat
            await asyncio.gather(
                self._every(lambda: self._write(lk, self._calls(server)), "roster beat"),
                self._every(lambda: self._watch.tick(lk), "roster watch"),
            )
        finally:
            with contextlib.suppress(Exception):
                await lk.room.delete_room(api.DeleteRoomRequest(room=self.room))
            await lk.aclose()

    @staticmethod
    async def _every(step: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            started = time.monotonic()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # LiveKit unreachable for a moment: try again next beat
                logger.warning(f"{what} failed", extra={"error": f"{type(err).__name__}: {str(err)[:200]}"})
            took = time.monotonic() - started
            if took > STALE / 2:
                logger.warning(f"{what} slow", extra={"seconds": round(took, 2)})
            await asyncio.sleep(max(0.0, BEAT - took))

    async def _write(self, lk: api.LiveKitAPI, calls: list[dict[str, str]]) -> None:
        self._beat += 1
        meta = json.dumps({"beat": self._beat, "calls": calls}, separators=(",", ":"))
        try:
            await lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room=self.room, metadata=meta))
        except api.TwirpError as err:
            if err.code != "not_found":
                raise
            await lk.room.create_room(api.CreateRoomRequest(name=self.room, empty_timeout=ROSTER_TTL, metadata=meta))


async def guard(poll: float = BEAT) -> None:
    """Watch every agent's rosters with no worker of one's own: end the calls of workers that died when their agent
    has no living worker (``python -m worker.roster``)."""
    watch = RosterWatch(None, None)
    lk = api.LiveKitAPI()
    logger.info("roster guard watching every agent")
    try:
        while True:
            try:
                await watch.tick(lk)
            except Exception as err:
                logger.warning("roster guard tick failed", extra={"error": f"{type(err).__name__}: {str(err)[:200]}"})
            await asyncio.sleep(poll)
    finally:
        await lk.aclose()


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        skip = set(vars(logging.makeLogRecord({})))
        extra = {k: v for k, v in vars(record).items() if k not in skip and k not in ("message", "asctime")}
        return json.dumps({"message": record.getMessage(), "level": record.levelname, "time": time.time(), **extra},
                          default=str)  # fmt: skip


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(guard())
