"""Fault injection with real calls through the bridge: a caller whose agent process dies is never left in silence.

Each test places a real inbound call (sipp -> livekit-sip -> livekit-server -> the worker, started with the image's
entry command), waits until the agent answered, kills part of the worker with SIGKILL, and then watches the room as
the caller experiences it: the time until an agent speaks again (``lk.agent.state`` of an agent that published
``siphon.resumed=true``: livekit-agents sets it to ``speaking`` when the first audio frame goes out to the room, which
the bridge forwards to the caller), or the BYE the caller receives. Timing bounds here are generous failure bounds;
the figures are measured by ``bench/crash_silence.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from livekit import api

from contract.metadata import MAX_RESUMES, AgentConfig, ResumeMarker, RouteMetadata, parse_metadata
from contract.resolve import text_sha
from infra import sipp
from infra.verify import observe
from localenv.deaths import DeathWatch
from localenv.manager import Endpoints
from tests.test_worker_live import CALLER, WAIT, WorkerProc, _inbound_route, start_worker
from worker.dead_job import resume_metadata

RESUME_MESSAGE = "Sorry, we were cut off. I am back on the line."
SILENCE_BOUND = 15.0  # failure bound for the silence after a fault (the targets are in bench/crash_silence.py)
BYE_BOUND = 10.0


def route(name: str, number: str) -> RouteMetadata:
    """A route whose layer sets the resume message (and a voice), so that both must reach the resumed agent."""
    return RouteMetadata(
        route=name,
        called_number=number,
        agent_config=AgentConfig(tts="local/espeak-ng:en-gb", resume_message=RESUME_MESSAGE),
    )


@dataclass
class Fault:
    """What the caller experienced after one fault."""

    original: dict[str, str]
    resumed: dict[str, str] | None = None
    silence_s: float | None = None  # fault -> a resumed agent speaks
    bye_s: float | None = None  # fault -> the call ended (sipp received BYE and answered it)
    end: sipp.CallEnd | None = None
    room: str = ""
    notes: list[str] = field(default_factory=list)


async def _agents(lk: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    try:
        parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
    except api.TwirpError as err:
        if err.code == "not_found":
            return []
        raise
    return [p for p in parts if p.kind == api.ParticipantInfo.Kind.AGENT]


def job_pid(w: WorkerProc, room: str) -> int:
    """The pid of the job process serving ``room`` (its "resolved call configuration" record)."""
    for line in w.text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("message") == "resolved call configuration" and rec.get("room") == room:
            return int(rec["pid"])
    raise AssertionError(f"no job for {room}:\n{w.text()[-3000:]}")


def fault_call(
    ep: Endpoints,
    agent_name: str,
    number: str,
    fault: Callable[[str, dict[str, str]], None],
    *,
    expect: str,
    timeout: float = 30.0,
) -> Fault:
    """One real call: answered, then ``fault(room, attributes)``; then wait for a resumed agent speaking
    (``expect="resume"``) or for the call's end (``expect="bye"``), and hang up."""
    trunk_id, rule_id = asyncio.run(_inbound_route(ep, agent_name, number, route(f"crash-{expect}", number).to_json()))

    async def scenario() -> Fault:
        lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
        call = sipp.place(ep.sip_address, number, caller=CALLER, hold_s=120)
        try:
            seen = await observe(lk, call, set(), WAIT)
            assert seen.attributes, f"not answered: {seen}"
            out = Fault(original=dict(seen.attributes), room=seen.room)
            await asyncio.to_thread(fault, seen.room, out.original)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if not call.running():
                    out.bye_s = time.monotonic() - t0
                    break
                if expect == "resume":
                    for a in await _agents(lk, seen.room):
                        if a.attributes.get("siphon.resumed") == "true" and out.resumed is None:
                            out.resumed = dict(a.attributes)
                        if (
                            a.attributes.get("siphon.resumed") == "true"
                            and a.attributes.get("lk.agent.state") == "speaking"
                        ):
                            out.silence_s = time.monotonic() - t0
                            out.resumed = dict(a.attributes)
                    if out.silence_s is not None:
                        break
                await asyncio.sleep(0.05)
            if out.silence_s is not None:  # let the resumed agent finish its first utterance (the resume message)
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline and call.running():
                    done = [a for a in await _agents(lk, seen.room) if a.attributes.get("siphon.resumed") == "true"]
                    if any(int(a.attributes.get("siphon.agent_utterances", "0")) >= 1 for a in done):
                        break
                    await asyncio.sleep(0.1)
            if call.running():
                try:
                    await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
                except api.TwirpError as err:
                    if err.code != "not_found":
                        raise
            out.end = await asyncio.to_thread(call.wait, 15)
            return out
        finally:
            if call.running():
                call.proc.terminate()
            await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
            await lk.aclose()

    return asyncio.run(scenario())


def utterance_shas(w: WorkerProc, room: str, pid: int | None = None) -> list[str]:
    """``text_sha`` of every finished agent utterance in ``room`` (of one job process when ``pid`` is given)."""
    out = []
    for line in w.text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        mine = rec.get("message") == "agent utterance finished" and rec.get("room") == room
        if mine and (pid is None or rec.get("pid") == pid):
            out.append(rec.get("text_sha"))
    return out


def wait_for(done: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return done()


def assert_resumed(f: Fault, w: WorkerProc, killed_pid: int) -> None:
    assert f.silence_s is not None, f"no resumed agent spoke within the bound: {f}\n{w.text()[-4000:]}"
    assert f.silence_s < SILENCE_BOUND, f
    assert f.resumed is not None
    assert f.resumed["siphon.resumed"] == "true"
    assert f.original["siphon.resumed"] == "false"
    assert f.resumed["siphon.config_hash"] == f.original["siphon.config_hash"], (f.original, f.resumed)
    assert f.resumed["siphon.tts"] == "local/espeak-ng:en-gb"
    assert f.resumed["siphon.resume_message_sha"] == text_sha(RESUME_MESSAGE)
    new_pid = job_pid_after(w, f.room, killed_pid)
    # The resumed agent says the resume message, word for word, and never greets.
    assert wait_for(lambda: text_sha(RESUME_MESSAGE) in utterance_shas(w, f.room, new_pid)), w.text()[-3000:]
    assert utterance_shas(w, f.room, new_pid)[0] == text_sha(RESUME_MESSAGE)


def job_pid_after(w: WorkerProc, room: str, killed_pid: int) -> int:
    pids = []
    for line in w.text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("message") == "resolved call configuration" and rec.get("room") == room:
            pids.append(int(rec["pid"]))
    others = [p for p in pids if p != killed_pid]
    assert others, w.text()[-3000:]
    return others[-1]


def test_a_killed_job_process_is_followed_by_a_resumed_agent_in_the_same_call(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """kill -9 of the job process mid-call: the worker re-dispatches the call; a new agent joins the same room with
    the same configuration hash, publishes siphon.resumed, says the route's resume message (no greeting), and the
    caller is still in the call."""
    w = start_worker(endpoints, tmp_path / "worker.log", f"siphon-crash-{uuid.uuid4().hex[:6]}")
    killed: list[int] = []
    try:

        def kill_job(room: str, attrs: dict[str, str]) -> None:
            pid = job_pid(w, room)
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

        f = fault_call(endpoints, w.agent_name, "+15550100301", kill_job, expect="resume")
        assert f.bye_s is None, f"the call ended instead of being resumed: {f}"
        assert_resumed(f, w, killed[0])
        print(f"silence after the job-process kill: {f.silence_s:.2f}s")
        assert "job process died during a call; taking the call over" in w.text()
        assert f.end is not None and f.end.completed, f.end
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def test_resume_metadata_keeps_every_key_and_counts_take_overs_up_to_the_limit() -> None:
    raw = route("r", "+15550100301").to_json()
    first = resume_metadata(raw, "AJ_1")
    assert first is not None
    parsed = parse_metadata(first)
    assert not parsed.warnings, parsed.warnings
    assert parsed.metadata.resume == ResumeMarker(count=1, job_id="AJ_1")
    assert json.loads(first) == {**json.loads(raw), "resume": {"count": 1, "job_id": "AJ_1"}}
    again = first
    for _ in range(MAX_RESUMES - 1):
        nxt = resume_metadata(again, "AJ_n")
        assert nxt is not None
        again = nxt
    assert resume_metadata(again, "AJ_last") is None, "a call is not taken over forever"
    assert json.loads(resume_metadata("", "AJ_2") or "") == {"resume": {"count": 1, "job_id": "AJ_2"}}
    assert json.loads(resume_metadata("not json", "AJ_3") or "") == {"resume": {"count": 1, "job_id": "AJ_3"}}


def kill_tree(w: WorkerProc) -> None:
    """SIGKILL one worker's whole process tree at once (main process, forkserver, job processes), as a dying task."""
    main = psutil.Process(w.proc.pid)
    procs = [main, *main.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    w.proc.wait(timeout=10)


def death_watch(ep: Endpoints, *workers: WorkerProc) -> DeathWatch:
    """The local supervisor's death reports (``localenv.deaths``, as ``./dev local`` runs them) for ``workers``."""
    deaths = DeathWatch(ep.livekit_url, ep.api_key, ep.api_secret)
    for w in workers:
        deaths.watch(w.proc, w.agent_name)
    return deaths


def stop_all(workers: list[WorkerProc], dead: list[WorkerProc]) -> None:
    """Stop the living workers (each exits 0); close the logs of the killed ones."""
    for w in workers:
        if w in dead:
            w.out.close()
        else:
            assert w.stop() == 0, w.text()[-3000:]


def outcomes(deaths: DeathWatch) -> list[str]:
    """Every call outcome the supervisor's reports gave (once the report is done)."""
    return [o for _, report in deaths.reports for o in report]


def serving(workers: list[WorkerProc], room: str) -> WorkerProc:
    """The worker whose job answered ``room``."""
    for w in workers:
        if f'"room": "{room}"' in w.text() and "resolved call configuration" in w.text():
            with contextlib.suppress(AssertionError):
                job_pid(w, room)
                return w
    raise AssertionError(f"no worker served {room}")


def test_a_worker_killed_with_its_call_while_another_lives_hands_the_call_to_the_living_one(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """kill -9 of the serving worker's whole tree with a second worker of the agent alive: the supervisor sees the
    death and reports it; the dead worker's call ledger names the call, which is re-dispatched; LiveKit hands it to
    the living worker, whose agent resumes the call with the same configuration hash."""
    name = f"siphon-pair-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"w{i}.log", name) for i in range(2)]
    deaths = death_watch(endpoints, *workers)
    dead: list[WorkerProc] = []
    try:

        def kill_serving(room: str, attrs: dict[str, str]) -> None:
            w = serving(workers, room)
            dead.append(w)
            kill_tree(w)

        f = fault_call(endpoints, name, "+15550100302", kill_serving, expect="resume")
        assert f.bye_s is None, f"the call ended instead of being taken over: {f}"
        (alive,) = [w for w in workers if w is not dead[0]]
        assert f.silence_s is not None, f"no resumed agent: {f}\n{alive.text()[-3000:]}"
        assert f.silence_s < SILENCE_BOUND, f
        assert f.resumed is not None and f.original is not None
        assert f.resumed["siphon.config_hash"] == f.original["siphon.config_hash"], (f.original, f.resumed)
        assert f.resumed["siphon.resume_message_sha"] == text_sha(RESUME_MESSAGE)
        assert wait_for(lambda: bool(deaths.reports), 10)
        assert any(o.startswith("taken over in") for o in outcomes(deaths)), deaths.reports
        pid = job_pid(alive, f.room)
        assert wait_for(lambda: text_sha(RESUME_MESSAGE) in utterance_shas(alive, f.room, pid)), alive.text()[-3000:]
        assert utterance_shas(alive, f.room, pid)[0] == text_sha(RESUME_MESSAGE)
        assert f.end is not None and f.end.completed, f.end
        print(f"silence after the worker kill (a second worker alive): {f.silence_s:.2f}s")
    finally:
        stop_all(workers, dead)


def test_the_only_worker_killed_with_a_call_ends_the_call_with_a_bye(endpoints: Endpoints, tmp_path: Path) -> None:
    """kill -9 of the only worker's whole tree: no worker can take the call over, so the supervisor, which knows no
    worker of the agent is left, has the call ended at once: the room is closed and the bridge hangs the caller up
    with a BYE (sipp answers it: the call completed normally for the carrier), well before LiveKit's ~20 s
    timeout."""
    w = start_worker(endpoints, tmp_path / "only.log", f"siphon-only-{uuid.uuid4().hex[:6]}")
    deaths = death_watch(endpoints, w)
    try:
        f = fault_call(endpoints, w.agent_name, "+15550100303", lambda room, attrs: kill_tree(w), expect="bye")
        assert f.bye_s is not None, f"the call was not ended: {f}\n{deaths.reports}"
        assert f.bye_s < BYE_BOUND, f
        assert f.end is not None and f.end.completed, f.end  # sipp received the BYE and answered it 200 OK
        assert outcomes(deaths) == ["no worker of the agent is alive: call ended (BYE)"], deaths.reports
        print(f"BYE after the only worker's kill: {f.bye_s:.2f}s")
    finally:
        w.out.close()
        if w.proc.poll() is None:
            w.stop()


def test_a_session_whose_plugin_raises_hands_the_call_over_and_a_call_that_keeps_failing_ends_with_a_bye(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """A TTS that raises on every utterance (espeak-ng refuses the route's voice): the agent cannot speak to the
    caller, so it hands the call over (same metadata plus the resume marker); the resumed agents fail the same way,
    and after the third take-over the call is ended with a BYE instead of looping."""
    w = start_worker(endpoints, tmp_path / "raise.log", f"siphon-raise-{uuid.uuid4().hex[:6]}")
    number = "+15550100304"
    failing = RouteMetadata(
        route="crash-raise", called_number=number, agent_config=AgentConfig(tts="local/espeak-ng:zz")
    )
    try:
        trunk_id, rule_id = asyncio.run(_inbound_route(endpoints, w.agent_name, number, failing.to_json()))

        async def scenario() -> tuple[float, sipp.CallEnd]:
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            call = sipp.place(endpoints.sip_address, number, caller=CALLER, hold_s=150)
            try:
                seen = await observe(lk, call, set(), WAIT)
                assert seen.attributes, f"not answered: {seen}"
                t0 = time.monotonic()
                end = await asyncio.to_thread(call.wait, 90)
                return time.monotonic() - t0, end
            finally:
                await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
                await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
                await lk.aclose()

        ended_after, end = asyncio.run(scenario())
        text = w.text()
        assert end.completed, (end, text[-3000:])  # the caller received a BYE and answered it
        assert text.count("a model failed during a call; handing the call over") >= 3, text[-4000:]
        for count in (1, 2, 3):
            assert f'"resume_count": {count}' in text, text[-4000:]
        assert wait_for(lambda: "taken over 3 times already: call ended (BYE)" in w.text(), 10), w.text()[-4000:]
        print(f"a call whose TTS always raises ended with a BYE {ended_after:.1f}s after the answer")
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def test_a_worker_that_dies_without_calls_leaves_the_other_workers_calls_alone(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """Two workers, the one that is not serving the call is killed: its death is reported, its ledger records no
    call, and the call in progress keeps its agent (nobody is re-dispatched, nothing is resumed)."""
    name = f"siphon-idle-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(endpoints, tmp_path / f"idle{i}.log", name) for i in range(2)]
    deaths = death_watch(endpoints, *workers)
    dead: list[WorkerProc] = []
    try:

        def kill_idle(room: str, attrs: dict[str, str]) -> None:
            busy = serving(workers, room)
            (idle,) = [w for w in workers if w is not busy]
            dead.append(idle)
            kill_tree(idle)

        f = fault_call(endpoints, name, "+15550100305", kill_idle, expect="resume", timeout=8)
        (alive,) = [w for w in workers if w is not dead[0]]
        assert f.silence_s is None and f.resumed is None and f.bye_s is None, f
        assert wait_for(lambda: bool(deaths.reports), 5)
        assert deaths.reports == [(deaths.reports[0][0], [])], deaths.reports  # reported, with no call to recover
        assert "take-over" not in alive.text(), alive.text()[-3000:]
        assert f.end is not None and f.end.completed, f.end
    finally:
        stop_all(workers, dead)
