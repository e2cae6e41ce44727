"""Crash recovery against the faults of a production LiveKit: a stalled server harms no healthy call, and a job that
LiveKit re-dispatches itself (as LiveKit Cloud does) is answered as a resumption, with our own recovery standing down.

Real calls through the bridge (sipp -> livekit-sip -> livekit-server -> workers started with the image's command),
with the local supervisor's death reports (``localenv.deaths``) watching every worker, as ``./dev local`` runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

from livekit import api

from contract.resolve import text_sha
from infra import sipp
from infra.verify import observe
from localenv.api_proxy import ApiProxy
from localenv.manager import Endpoints, LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.test_crash_calls import (
    BYE_BOUND,
    RESUME_MESSAGE,
    _agents,
    death_watch,
    fault_call,
    job_pid,
    kill_tree,
    route,
    serving,
    stop_all,
    utterance_shas,
    wait_for,
)
from tests.test_worker_live import CALLER, WAIT, WorkerProc, _inbound_route, start_worker
from worker.dead_worker import LEDGER_PREFIX, local_worker_id, recover_worker


def test_a_livekit_server_paused_for_5_seconds_during_a_call_harms_no_call(
    local_env: LocalEnv, endpoints: Endpoints, tmp_path: Path
) -> None:
    """livekit-server is stopped (SIGSTOP) for 5 s during a healthy call on two workers, so every API call and every
    connection stalls together. Nothing treats a stall as a death: no worker's death is reported, nothing is taken
    over or resumed, and the call goes on with its agent until the caller's side hangs up."""
    name = f"siphon-pause-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"p{i}.log", name) for i in range(2)]
    deaths = death_watch(endpoints, *workers)
    server = local_env.service("livekit-server")
    assert server.proc is not None
    try:

        def pause(room: str, attrs: dict[str, str]) -> None:
            os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                time.sleep(5)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

        f = fault_call(endpoints, name, "+15550100311", pause, expect="resume", timeout=15)
        assert f.bye_s is None, f"the call was ended by the stall: {f}"
        assert f.resumed is None and f.silence_s is None, f"a healthy call was taken over: {f}"
        assert f.end is not None and f.end.completed, f.end
        assert deaths.reports == [], deaths.reports
        for w in workers:
            assert "take-over" not in w.text() and all(p.poll() is None for p in [w.proc]), w.text()[-3000:]
    finally:
        stop_all(workers, [])


def test_a_job_livekit_re_dispatches_itself_is_a_resumption_and_our_recovery_stands_down(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """As on LiveKit Cloud: the serving worker dies, and LiveKit itself dispatches the call's job again, with the
    job's own metadata (no resume marker of ours). The new agent sees that another agent served the call, so it
    publishes siphon.resumed=true and says the resume message instead of a greeting; recovery on a LiveKit that
    re-dispatches creates no dispatch of its own, only waits for that agent: the call has one new agent."""
    name = f"siphon-cloud-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"c{i}.log", name) for i in range(2)]
    dead: list[WorkerProc] = []
    outcome: list[str] = []
    try:

        def die_and_redispatch(room: str, attrs: dict[str, str]) -> None:
            w = serving(workers, room)
            dead.append(w)
            worker_id = local_worker_id(w.proc.pid)
            kill_tree(w)

            async def cloud() -> None:
                lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
                try:
                    (original,) = await lk.agent_dispatch.list_dispatch(room)
                    recovery = asyncio.create_task(recover_worker(lk, worker_id, platform_redispatches=True))
                    await lk.agent_dispatch.create_dispatch(  # LiveKit's own re-dispatch of the lost job
                        api.CreateAgentDispatchRequest(agent_name=name, room=room, metadata=original.metadata)
                    )
                    outcome.extend(await recovery)  # returns once the re-dispatched agent took the call
                    assert len(await lk.agent_dispatch.list_dispatch(room)) == 2, "recovery dispatched a second agent"
                finally:
                    await lk.aclose()

            asyncio.run(cloud())

        f = fault_call(endpoints, name, "+15550100312", die_and_redispatch, expect="resume")
        (alive,) = [w for w in workers if w not in dead]
        assert f.bye_s is None, f"the call ended instead of being resumed: {f}"
        assert f.resumed is not None and f.resumed["siphon.resumed"] == "true", (f, alive.text()[-3000:])
        assert f.resumed["siphon.config_hash"] == f.original["siphon.config_hash"], (f.original, f.resumed)
        assert len(outcome) == 1 and outcome[0].startswith("re-dispatched by LiveKit"), outcome
        assert wait_for(lambda: text_sha(RESUME_MESSAGE) in utterance_shas(alive, f.room)), alive.text()[-3000:]
        assert utterance_shas(alive, f.room)[0] == text_sha(RESUME_MESSAGE)  # no greeting: the resume message
    finally:
        stop_all(workers, dead)


def test_a_take_over_the_api_refuses_ends_the_call_with_a_bye(endpoints: Endpoints, tmp_path: Path) -> None:
    """The job process dies mid-call while LiveKit refuses the re-dispatch (429 on CreateDispatch, at a proxy in
    front of the API): the take-over fails, and the call is ended with a BYE rather than left with no agent."""
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        w = start_worker(endpoints, tmp_path / "refused.log", f"siphon-refused-{uuid.uuid4().hex[:6]}",
                         LIVEKIT_URL=proxy.url)  # fmt: skip
        try:

            def refuse_and_kill(room: str, attrs: dict[str, str]) -> None:
                proxy.refuse("AgentDispatchService/CreateDispatch")
                os.kill(job_pid(w, room), signal.SIGKILL)

            f = fault_call(endpoints, w.agent_name, "+15550100313", refuse_and_kill, expect="bye")
            assert f.bye_s is not None and f.bye_s < BYE_BOUND, (f, w.text()[-3000:])
            assert f.end is not None and f.end.completed, f.end  # the caller got a BYE and answered it
            assert proxy.counts().get("livekit.AgentDispatchService/CreateDispatch", 0) >= 1, proxy.counts()
            assert wait_for(lambda: "take-over failed" in w.text() and "call ended (BYE)" in w.text(), 5), w.text()[
                -3000:
            ]
            print(f"BYE after a refused take-over: {f.bye_s:.2f}s")
        finally:
            assert w.stop() == 0, w.text()[-3000:]


def test_calls_on_two_workers_survive_30_seconds_of_a_throttled_and_stalled_api(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """Two workers reach LiveKit through a proxy that, for 30 s, answers every API request beyond 10 a minute
    with 429 and holds the others 10 s, while two calls run and a third arrives. No agent is removed, no call is
    ended, nothing is taken over, no death is reported; once the API recovers, each worker's call ledger catches
    up with its calls and a new call is answered."""
    name = f"siphon-throttle-{uuid.uuid4().hex[:6]}"
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        workers = [start_worker(endpoints, tmp_path / f"t{i}.log", name, LIVEKIT_URL=proxy.url) for i in range(2)]
        deaths = death_watch(endpoints, *workers)
        number = "+15550100314"
        trunk_id, rule_id = asyncio.run(_inbound_route(endpoints, name, number, route("throttle", number).to_json()))

        # RTP keeps flowing for 90 s, as from a real phone (the bridge ends a call whose media stops for 30 s)
        audio = sipp.CallerAudio(spoken_ulaw(tmp_path, "Hello, I am still here.", silence_after_s=90))

        async def scenario() -> None:
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            calls: list[sipp.SippCall] = []
            try:
                first = sipp.place(endpoints.sip_address, number, caller=CALLER, hold_s=120, audio=audio)
                calls.append(first)
                seen = [await observe(lk, first, set(), WAIT)]
                proxy.throttle(10)
                proxy.stall(10)
                throttled_at = time.monotonic()
                second = sipp.place(endpoints.sip_address, number, caller=CALLER, hold_s=120, audio=audio)
                calls.append(second)
                seen.append(await observe(lk, second, {seen[0].room}, WAIT))
                assert all(s.attributes for s in seen), f"not answered while throttled: {seen}"
                agents = {s.room: {a.identity for a in await _agents(lk, s.room)} for s in seen}
                await asyncio.sleep(max(0.0, 30 - (time.monotonic() - throttled_at)))
                assert any("call ledger write failed" in w.text() for w in workers), "no write met the throttle"
                for s in seen:  # the same agent, still there; the caller still in the call
                    assert {a.identity for a in await _agents(lk, s.room)} == agents[s.room], s.room
                assert all(c.running() for c in calls), "a call ended while the API was throttled"
                proxy.clear()
                ledgers = await _ledgered_rooms(lk)
                deadline = time.monotonic() + 30  # a failed write is retried with backoff (at most 30 s apart)
                while {s.room for s in seen} - ledgers and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    ledgers = await _ledgered_rooms(lk)
                assert {s.room for s in seen} <= ledgers, f"the call ledgers did not catch up: {ledgers}"
                third = sipp.place(endpoints.sip_address, number, caller=CALLER, hold_s=120, audio=audio)
                calls.append(third)
                after = await observe(lk, third, {s.room for s in seen}, WAIT)
                assert after.attributes, f"a new call was not answered once the API recovered: {after}"
                assert all(c.running() for c in calls)
                for room in [*(s.room for s in seen), after.room]:
                    await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                for c in calls:
                    end = await asyncio.to_thread(c.wait, 15)
                    assert end.completed, end
            finally:
                for c in calls:
                    if c.running():
                        c.proc.terminate()
                await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
                await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
                await lk.aclose()

        try:
            asyncio.run(scenario())
            assert deaths.reports == [], deaths.reports
            for w in workers:
                assert "take-over" not in w.text(), w.text()[-3000:]
        finally:
            stop_all(workers, [])


async def _ledgered_rooms(lk: api.LiveKitAPI) -> set[str]:
    """Every call room named in a call ledger (read directly, not through the proxy)."""
    rooms: set[str] = set()
    for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
        if r.name.startswith(LEDGER_PREFIX) and r.metadata:
            rooms |= {c["room"] for c in json.loads(r.metadata).get("calls", [])}
    return rooms


def test_a_take_over_throttled_for_a_moment_is_retried_and_the_call_resumes(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """The job process dies while LiveKit throttles the re-dispatch (429) for about half a second: the re-dispatch is
    retried, and the call is resumed by a new agent instead of being ended."""
    with ApiProxy.start(endpoints.livekit_url) as proxy:
        w = start_worker(endpoints, tmp_path / "throttled.log", f"siphon-retry-{uuid.uuid4().hex[:6]}",
                         LIVEKIT_URL=proxy.url)  # fmt: skip
        try:

            def throttle_then_kill(room: str, attrs: dict[str, str]) -> None:
                proxy.refuse("AgentDispatchService/CreateDispatch")
                threading.Timer(0.5, proxy.refuse).start()  # throttled for a moment only
                os.kill(job_pid(w, room), signal.SIGKILL)

            f = fault_call(endpoints, w.agent_name, "+15550100315", throttle_then_kill, expect="resume")
            assert f.bye_s is None, (f, w.text()[-3000:])
            assert f.resumed is not None and f.silence_s is not None, (f, w.text()[-3000:])
            refused = [c for c in proxy.calls() if c.method.endswith("/CreateDispatch") and c.status == 429]
            assert refused, "the re-dispatch was never throttled"
            assert "re-dispatch failed; retrying" in w.text(), w.text()[-3000:]
            print(f"silence after a throttled take-over: {f.silence_s:.2f}s")
        finally:
            assert w.stop() == 0, w.text()[-3000:]
