"""A job that cannot reach its caller ends, saying why, and frees its slot: it never holds a caller in silence.

Under a burst on a loaded host, joining the room or publishing the agent's audio can stall (livekit-agents logs
"room connection was not established", the rtc engine "track publication timed out"). The worker bounds both
(``SIPHON_CONNECT_TIMEOUT``, ``SIPHON_AUDIO_TIMEOUT``). The stalls are made real, against the real server:

- the room connection: the worker reaches livekit-server through a loopback TCP relay that, once the worker has
  registered, holds every new connection open without passing a byte (a server that stopped answering);
- the audio: the caller is a real participant of the real room, with the SIP attributes livekit-sip sets, that
  never subscribes to the agent's track (so the agent's audio never reaches it, as when the publication fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api, rtc

from contract.metadata import RouteMetadata
from localenv.manager import Endpoints
from tests.test_worker_live import WorkerProc, _wait_jobs, start_worker


class Relay:
    """A loopback TCP relay to ``upstream``; with ``hold`` set, new connections are accepted and left silent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.hold = False
        self.held: list[socket.socket] = []
        self._open: list[socket.socket] = []  # every socket of the relay, closed with it
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._open.append(client)
            if self.hold:
                self.held.append(client)
                continue
            upstream = socket.create_connection(self.upstream)
            self._open.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        for s in self._open:
            s.close()


def _wait_idle(w: WorkerProc) -> None:
    assert _wait_jobs(w, lambda n: n == 0, 30) == 0, "the job still holds its slot:\n" + w.text()[-3000:]


def _ended(w: WorkerProc) -> list[dict[str, object]]:
    return [r for line in w.text().splitlines() if '"job ended"' in line and (r := json.loads(line))]


async def _dispatch(ep: Endpoints, agent: str, room: str) -> None:
    route = RouteMetadata(route="stalled", direction="inbound")
    async with api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret) as lk:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent, room=room, metadata=route.to_json())
        )


@pytest.fixture
def relay(endpoints: Endpoints) -> Iterator[Relay]:
    host, port = endpoints.livekit_url.split("//", 1)[1].rsplit(":", 1)
    r = Relay((host, int(port)))
    yield r
    r.close()


def test_a_job_that_cannot_join_its_room_ends_saying_why_and_frees_its_slot(
    endpoints: Endpoints, relay: Relay, tmp_path: Path
) -> None:
    w = start_worker(endpoints, tmp_path / "worker.log", f"siphon-stall-{uuid.uuid4().hex[:6]}",
                     LIVEKIT_URL=f"ws://127.0.0.1:{relay.port}", SIPHON_CONNECT_TIMEOUT="2")  # fmt: skip
    try:
        relay.hold = True  # registered: from now on the server answers nobody new, the job's join included
        asyncio.run(_dispatch(endpoints, w.agent_name, f"stalled-{uuid.uuid4().hex[:8]}"))
        w.wait_for_log("ending the job: the room connection was not established within 2 s")
        _wait_idle(w)
        (ended,) = _ended(w)
        assert ended["reason"] == "the room connection was not established within 2 s", ended
        assert relay.held, "the job never tried to join through the relay"
    finally:
        relay.hold = False
        assert w.stop() == 0, w.text()[-3000:]


async def _silent_caller(ep: Endpoints, room: str, gone: asyncio.Event) -> rtc.Room:
    """A participant with livekit-sip's attributes that joins ``room`` and subscribes to nothing."""
    token = (
        api.AccessToken(ep.api_key, ep.api_secret)
        .with_identity(f"sip_{uuid.uuid4().hex[:6]}")
        .with_kind("sip")
        .with_attributes({"sip.phoneNumber": "+15550100177", "sip.trunkPhoneNumber": "+15550100178"})
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    caller = rtc.Room()
    caller.on("disconnected", lambda *_: gone.set())
    await caller.connect(ep.livekit_url, token, rtc.RoomOptions(auto_subscribe=False))
    return caller


def test_a_job_whose_audio_never_reaches_the_caller_hangs_up_and_frees_its_slot(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    w = start_worker(endpoints, tmp_path / "worker.log", f"siphon-mute-{uuid.uuid4().hex[:6]}",
                     SIPHON_AUDIO_TIMEOUT="3")  # fmt: skip
    room = f"mute-{uuid.uuid4().hex[:8]}"

    async def scenario() -> bool:
        gone = asyncio.Event()
        caller = await _silent_caller(endpoints, room, gone)
        try:
            await _dispatch(endpoints, w.agent_name, room)
            await asyncio.wait_for(gone.wait(), 60)  # the agent closed the room: livekit-sip would send BYE / 486
            return True
        finally:
            await caller.disconnect()

    try:
        assert asyncio.run(scenario())
        reason = "the caller did not receive the agent's audio within 3 s"
        w.wait_for_log("hanging up: " + reason)
        _wait_idle(w)
        (ended,) = _ended(w)
        assert ended["reason"] == reason, ended
    finally:
        assert w.stop() == 0, w.text()[-3000:]
