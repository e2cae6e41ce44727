"""localenv/api_proxy.py in front of the real local livekit-server: LiveKit's own clients (livekit-api, the Rust rtc
SDK, the packaged worker) work through it unchanged; it counts their API calls by method, throttles them the way
LiveKit Cloud does (429, ``resource_exhausted``) and stalls them; websockets pass, and are never throttled."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path

import pytest
from livekit import api

from localenv.api_proxy import ApiProxy
from localenv.manager import Endpoints
from tests.test_worker_live import assert_answered, run_call, sip_attributes, start_worker


def _client(ep: Endpoints, url: str) -> api.LiveKitAPI:
    return api.LiveKitAPI(url, ep.api_key, ep.api_secret)


def test_api_calls_pass_through_and_are_counted_by_method(endpoints: Endpoints) -> None:
    room = f"proxy-{uuid.uuid4().hex[:8]}"

    async def scenario(url: str) -> list[str]:
        lk = _client(endpoints, url)
        try:
            await lk.room.create_room(api.CreateRoomRequest(name=room, metadata="through the proxy"))
            listed = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
            with pytest.raises(api.TwirpError) as refused:  # LiveKit's own errors come back as they are
                await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id="SDR_none"))
            assert (refused.value.status, refused.value.code) == (404, "not_found"), refused.value
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            return [r.metadata for r in listed]
        finally:
            await lk.aclose()

    with ApiProxy.start(endpoints.livekit_url) as proxy:
        assert proxy.port != int(endpoints.livekit_url.rsplit(":", 1)[1])
        assert asyncio.run(scenario(proxy.url)) == ["through the proxy"]
        assert proxy.counts() == {
            "livekit.RoomService/CreateRoom": 1,
            "livekit.RoomService/ListRooms": 1,
            "livekit.SIP/DeleteSIPDispatchRule": 1,
            "livekit.RoomService/DeleteRoom": 1,
        }
        assert proxy.total() == 4
        statuses = [c.status for c in proxy.calls()]
        assert statuses == [200, 200, 404, 200], statuses
        mark = time.monotonic()
        asyncio.run(_list(endpoints, proxy.url))
        assert proxy.counts(since=mark) == {"livekit.RoomService/ListRooms": 1}
        proxy.clear()
        assert proxy.counts() == {}


async def _list(ep: Endpoints, url: str, n: int = 1) -> None:
    lk = _client(ep, url)
    try:
        for _ in range(n):
            await lk.room.list_rooms(api.ListRoomsRequest(names=["none"]))
    finally:
        await lk.aclose()


def test_throttle_refuses_calls_beyond_the_rate_as_livekit_cloud_does(endpoints: Endpoints) -> None:
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        proxy.throttle(3)
        asyncio.run(_list(endpoints, proxy.url, 3))  # within the minute's budget
        with pytest.raises(api.TwirpError) as refused:
            asyncio.run(_list(endpoints, proxy.url))
        assert refused.value.status == 429
        assert refused.value.code == api.TwirpErrorCode.RESOURCE_EXHAUSTED
        assert refused.value.message == "rate limit exceeded"
        assert [c.status for c in proxy.calls()] == [200, 200, 200, 429]  # one request each: the client never retries
        assert proxy.counts() == {"livekit.RoomService/ListRooms": 4}
        proxy.throttle(None)
        asyncio.run(_list(endpoints, proxy.url))
        assert proxy.calls()[-1].status == 200


def test_stall_holds_each_call_before_forwarding_it(endpoints: Endpoints) -> None:
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        started = time.monotonic()
        asyncio.run(_list(endpoints, proxy.url))
        quick = time.monotonic() - started
        proxy.stall(2.0)
        started = time.monotonic()
        asyncio.run(_list(endpoints, proxy.url))
        stalled = time.monotonic() - started
        assert stalled >= 2.0, stalled
        assert stalled - quick >= 1.9, (quick, stalled)
        proxy.clear()  # removes the stall too
        started = time.monotonic()
        asyncio.run(_list(endpoints, proxy.url))
        assert time.monotonic() - started < 2.0


def test_a_worker_registers_and_answers_a_call_through_the_proxy(endpoints: Endpoints, tmp_path: Path) -> None:
    """The worker's LIVEKIT_URL is the proxy: it registers (websocket ``/agent``) while every API call is refused
    (websockets are never throttled); then a stand-in caller, also through the proxy, is answered (its and the
    agent's ``/rtc`` websockets), and the dispatch it created is counted."""
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        proxied = dataclasses.replace(endpoints, livekit_url=proxy.url)
        proxy.throttle(0)
        worker = start_worker(proxied, tmp_path / "worker.log", f"siphon-proxy-{uuid.uuid4().hex[:6]}")
        try:
            assert proxy.websockets().get("/agent") == 1, proxy.websockets()
            proxy.throttle(None)
            r = asyncio.run(run_call(proxied, worker.agent_name, "", participant=sip_attributes()))
            assert_answered(r, worker, "through the proxy")
            assert proxy.counts().get("livekit.AgentDispatchService/CreateDispatch") == 1, proxy.counts()
            rtc = sum(n for path, n in proxy.websockets().items() if path.startswith("/rtc"))
            assert rtc >= 2, proxy.websockets()  # the caller's and the agent's signalling
        finally:
            rc = worker.stop()
        assert rc == 0, worker.text()[-3000:]
