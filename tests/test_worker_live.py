"""The packaged worker on the real local livekit-server: dispatch, layers, attributes, audio, outbound, hostile input.

The worker always runs as a subprocess started with the image's exact entry command (ENTRYPOINT + CMD of
worker/Dockerfile, ``python`` being the project's interpreter), from the project's environment.

Stand-in SIP participant: where no SIP bridge is needed, a test participant joins the room with a token of
kind ``sip`` and the ``sip.*`` attributes livekit-sip would set (``sip.phoneNumber``, ``sip.trunkPhoneNumber``,
``sip.trunkID``, ``sip.callStatus``). Tests using it say so. The sipp tests need the real bridge and are
skipped (with the reason) when livekit-sip is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc

from contract import metrics
from contract.metadata import AgentConfig, AllowedOverrides, CallMetadata, RouteMetadata
from infra import sipp
from infra.ecs import operations
from infra.ecs.naming import Names
from infra.verify import Observation, observe
from localenv.carrier import Carrier
from localenv.manager import Endpoints
from localenv.ports import free_port_range
from localenv.siphon_payloads import SIPHON_INBOUND, SIPHON_OUTBOUND
from tests.ecs_agent_endpoint import agent_endpoint
from tests.test_worker_metadata import HOSTILE_CASES

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "worker" / "Dockerfile"
CALLER = "+15557654321"
OUR_NUMBER = "+15550100177"  # a possible NANP number: stack files refuse impossible ones
WAIT = 30.0  # upper bound for any single expected event (failure bound, not a performance assertion)
HOSTILE_BATCHES = 8  # 5 concurrent calls per batch: more makes job-process teardown flaky on 2 cores


def entry_command(dockerfile: Path = DOCKERFILE) -> list[str]:
    """ENTRYPOINT + CMD of worker/Dockerfile, with the image's ``python`` replaced by this interpreter."""
    text = dockerfile.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    argv = entry + cmd
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


class LogWatch:
    """``text()`` and ``wait_for_log()`` for a process (``self.proc``) that writes its log to ``self.log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            assert self.proc.poll() is None, f"{type(self).__name__} exited ({self.proc.returncode}):\n{text[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not logged within {timeout}s:\n{self.text()[-3000:]}")


@dataclass
class WorkerProc(LogWatch):
    """A worker subprocess and its log."""

    proc: subprocess.Popen[bytes]
    log: Path
    agent_name: str
    out: BinaryIO

    def errors(self) -> list[str]:
        """ERROR/CRITICAL log records, except teardown noise after a test deletes a room mid-call: the rtc engine's
        data-channel errors, its publisher renegotiation meeting the closed room, and (intermittently, under
        load) a job process exiting 255 after "room disconnected".
        Both happen after the call was answered and ended; the worker process itself keeps running."""
        out = []
        for line in self.text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = rec.get("message", "")
            teardown = (
                "data channel" in msg
                or "dc_event" in msg  # the data channel's buffer events once the room is gone
                or msg.startswith("process exited with non-zero exit code")
                or (  # room deleted mid-offer (livekit reports it in either wording)
                    "failed to negotiate the publisher" in msg
                    and ("state: closed" in msg or "PeerConnection is closed" in msg)
                )
            )
            if rec.get("level") in ("ERROR", "CRITICAL") and not teardown:
                out.append(rec["message"][:500])
        return out

    def http_port(self) -> int:
        m = re.search(r"HTTP server listening on [0-9.]*:(\d+)", self.text())
        assert m, self.text()[-2000:]
        return int(m.group(1))

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self.out.close()
        return self.proc.returncode


def start_worker(ep: Endpoints, log: Path, agent_name: str, *, code: Path = ROOT, **extra_env: str) -> WorkerProc:
    """Start the worker of the code in ``code`` (a checkout, or an exported older version of worker/ and contract/:
    its working directory and PYTHONPATH, as /app is the image's) and wait until it registered."""
    env = {
        **os.environ,
        **ep.env(),
        "SIPHON_AGENT_NAME": agent_name,
        "SIPHON_ENVIRONMENT": "local",  # the offline test models (tests that prove the production path override it)
        "SIPHON_HTTP_PORT": "0",
        "SIPHON_HTTP_HOST": "127.0.0.1",
        "SIPHON_MAX_JOBS": "200",  # job-count load: a CPU-busy 2-core test box must not look "full" to the server
        "SIPHON_NUM_IDLE_PROCESSES": "2",
        "SIPHON_RING_TIMEOUT": "5",
        "SIPHON_PARTICIPANT_WAIT": "1",
        "SIPHON_DRAIN_TIMEOUT": "60",
        "PYTHONPATH": str(code),
        **extra_env,
    }
    out = log.open("wb")
    argv = entry_command(code / "worker" / "Dockerfile")
    proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
    w = WorkerProc(proc, log, agent_name, out)
    try:
        w.wait_for_log('"registered worker"', timeout=60)
    except BaseException:
        w.stop()
        raise
    return w


@pytest.fixture(scope="module")
def worker(local_env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    ep = local_env.endpoints
    w = start_worker(ep, tmp_path_factory.mktemp("worker") / "worker.log", f"siphon-test-{uuid.uuid4().hex[:6]}")
    yield w
    rc = w.stop()
    assert rc == 0, w.text()[-3000:]


# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class CallResult:
    """What a test participant saw of the agent."""

    agent_identity: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    audio_track: bool = False
    agent_left: bool = False


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sip_attributes(**extra: str) -> dict[str, str]:
    """The attributes livekit-sip sets on an inbound caller (stand-in participant)."""
    return {
        "sip.phoneNumber": CALLER,
        "sip.trunkPhoneNumber": OUR_NUMBER,
        "sip.trunkID": "ST_standin",
        "sip.callID": "SCL_standin",
        "sip.callStatus": "active",
        **extra,
    }


async def run_call(
    ep: Endpoints,
    agent_name: str,
    metadata: str,
    *,
    participant: dict[str, str] | None = None,
    kind: str = "sip",
    until: str = "audio",  # "audio" | "left"
    keep: bool = False,
    leave: bool = False,  # the caller disconnects at the end, the room stays (a hang-up the agent must notice)
) -> CallResult:
    """Join a room as a stand-in participant (kind ``kind`` with attributes ``participant``), dispatch the agent
    with ``metadata``, and watch the agent until it publishes audio (or leaves)."""
    room_name = f"t-{uuid.uuid4().hex[:10]}"
    result = CallResult()
    done = asyncio.Event()
    room = rtc.Room()
    token = (
        api.AccessToken(ep.api_key, ep.api_secret)
        .with_identity(f"caller-{uuid.uuid4().hex[:6]}")
        .with_kind(kind)
        .with_attributes(participant or {})
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )

    def is_agent(p: rtc.RemoteParticipant) -> bool:
        return p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    def check() -> None:
        if until == "audio" and result.audio_track and result.attributes.get("siphon.config_hash"):
            done.set()
        if until == "left" and result.agent_left:
            done.set()

    @room.on("participant_connected")
    def _joined(p: rtc.RemoteParticipant) -> None:
        if is_agent(p):
            result.agent_identity = p.identity
            result.attributes.update(p.attributes)
            check()

    @room.on("participant_attributes_changed")
    def _attrs(changed: dict[str, str], p: rtc.Participant) -> None:
        if isinstance(p, rtc.RemoteParticipant) and is_agent(p):
            result.attributes.update(p.attributes)
            check()

    @room.on("track_published")
    def _track(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        if is_agent(p) and pub.kind == rtc.TrackKind.KIND_AUDIO:
            result.audio_track = True
            check()

    @room.on("participant_disconnected")
    def _left(p: rtc.RemoteParticipant) -> None:
        if is_agent(p):
            result.agent_left = True
            check()

    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        await room.connect(ep.livekit_url, token)
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room_name, metadata=metadata)
        )
        with contextlib.suppress(TimeoutError):  # the caller's assertions say what was missing
            await asyncio.wait_for(done.wait(), WAIT)
        return result
    finally:
        if not keep:
            await room.disconnect()
            if not leave:
                with contextlib.suppress(api.TwirpError):
                    await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        await lk.aclose()


def call(ep: Endpoints, worker: WorkerProc, metadata: str, **kw: object) -> CallResult:
    return asyncio.run(run_call(ep, worker.agent_name, metadata, **kw))  # type: ignore[arg-type]


def assert_answered(r: CallResult, worker: WorkerProc, what: str = "") -> None:
    assert r.agent_identity, f"{what}: no agent joined\n{worker.text()[-3000:]}"
    assert r.attributes.get("siphon.config_hash"), f"{what}: no resolved attributes: {r.attributes}"
    assert r.audio_track, f"{what}: agent published no audio track"
    assert worker.proc.poll() is None, f"{what}: worker died"


# ------------------------------------------------------------------------------------------------ tests


def test_worker_registers_under_its_agent_name_via_the_image_entry_command(worker: WorkerProc) -> None:
    assert entry_command()[1:] == ["-m", "worker.main", "start"]
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port()}/worker", timeout=5) as resp:
        info = json.loads(resp.read())
    assert info["agent_name"] == worker.agent_name
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port()}/", timeout=5) as resp:
        assert resp.status == 200  # the image's HEALTHCHECK


def test_explicit_dispatch_worker_defaults_only(endpoints: Endpoints, worker: WorkerProc) -> None:
    """Stand-in SIP participant; no metadata: every field from the worker defaults."""
    r = call(endpoints, worker, "", participant=sip_attributes())
    assert_answered(r, worker)
    a = r.attributes
    assert (a["siphon.llm"], a["siphon.stt"], a["siphon.tts"]) == ("local/scripted", "local/silent", "local/espeak-ng")
    assert set(dict(kv.split("=") for kv in a["siphon.sources"].split(",")).values()) == {"default"}
    assert a["siphon.direction"] == "inbound"  # a SIP participant the worker did not dial
    assert (a["siphon.caller_number"], a["siphon.called_number"]) == (CALLER, OUR_NUMBER)
    assert a["siphon.trunk_id"] == "ST_standin"
    assert a["siphon.warnings"] == "0"


def test_explicit_dispatch_route_layer(endpoints: Endpoints, worker: WorkerProc) -> None:
    """Stand-in SIP participant; the route's agent_config overrides the defaults it sets, nothing else."""
    route = RouteMetadata(
        route="clinic-north",
        direction="inbound",
        inbound_trunk_id="ST_route",
        called_number=OUR_NUMBER,
        agent_config=AgentConfig(tts="local/espeak-ng:en-gb", system_instructions="Route instructions"),
    )
    r = call(endpoints, worker, route.to_json(), participant=sip_attributes())
    assert_answered(r, worker)
    a = r.attributes
    assert a["siphon.route"] == "clinic-north"
    assert a["siphon.tts"] == "local/espeak-ng:en-gb"
    assert a["siphon.system_instructions_sha"] == _sha("Route instructions")
    sources = dict(kv.split("=") for kv in a["siphon.sources"].split(","))
    assert sources == {
        "llm": "default",
        "stt": "default",
        "tts": "route",
        "system_instructions": "route",
        "greeting_instructions": "default",
        "resume_message": "default",
        "send_greeting": "default",
    }


def test_explicit_dispatch_call_layers_metadata_and_participant_attribute(
    endpoints: Endpoints, worker: WorkerProc
) -> None:
    """Stand-in SIP participant carrying a ``siphon.overrides`` attribute, which the route allows to choose the LLM
    and the instructions: call layer beats route beats default; an explicit empty call value inherits (truthy-wins)."""
    meta = CallMetadata(
        route="clinic-north",
        agent_config=AgentConfig(system_instructions="Route", greeting_instructions="Route greeting"),
        overrides=AgentConfig(system_instructions="Per call", greeting_instructions=""),
        allowed_overrides=AllowedOverrides(llm=["local/scripted"], instructions=True),
    )
    attr = json.dumps({"greeting_instructions": "Attribute greeting", "llm": "local/scripted"})
    r = call(endpoints, worker, meta.to_json(), participant=sip_attributes(**{"siphon.overrides": attr}))
    assert_answered(r, worker)
    a = r.attributes
    assert a["siphon.system_instructions_sha"] == _sha("Per call")
    assert a["siphon.greeting_instructions_sha"] == _sha("Attribute greeting")
    sources = dict(kv.split("=") for kv in a["siphon.sources"].split(","))
    assert (sources["system_instructions"], sources["greeting_instructions"], sources["llm"]) == (
        "call",
        "call",
        "call",
    )
    # The same configuration gives the same hash in another call; a different one does not.
    r2 = call(endpoints, worker, meta.to_json(), participant=sip_attributes(**{"siphon.overrides": attr}))
    assert r2.attributes["siphon.config_hash"] == a["siphon.config_hash"]
    r3 = call(endpoints, worker, meta.to_json(), participant=sip_attributes())
    assert r3.attributes["siphon.config_hash"] != a["siphon.config_hash"]
    # The resolved, non-secret configuration is logged once per job.
    assert worker.text().count(a["siphon.config_hash"]) >= 2


def test_header_selected_layer_applies_when_the_sip_attribute_matches(endpoints: Endpoints, worker: WorkerProc) -> None:
    """Stand-in SIP participant whose trunk mapped X-Customer-Tier to ``customer.tier``: the route's
    ``attribute_overrides`` pick the gold layer for "gold" and nothing for an unlisted value."""
    meta = RouteMetadata(
        route="support",
        direction="inbound",
        agent_config=AgentConfig(greeting_instructions="Route greeting"),
        attribute_overrides={"customer.tier": {"gold": AgentConfig(greeting_instructions="Gold greeting")}},
    )
    gold = call(endpoints, worker, meta.to_json(), participant=sip_attributes(**{"customer.tier": "gold"}))
    assert_answered(gold, worker, "gold")
    assert gold.attributes["siphon.greeting_instructions_sha"] == _sha("Gold greeting")
    assert "greeting_instructions=call" in gold.attributes["siphon.sources"]
    plain = call(endpoints, worker, meta.to_json(), participant=sip_attributes(**{"customer.tier": "bronze"}))
    assert_answered(plain, worker, "bronze")
    assert plain.attributes["siphon.greeting_instructions_sha"] == _sha("Route greeting")
    assert "greeting_instructions=route" in plain.attributes["siphon.sources"]


def test_verify_expectation_matches_what_the_worker_publishes(endpoints: Endpoints, worker: WorkerProc) -> None:
    """``verify`` computes, from the stack file's plan alone, every attribute the agent answering a route must
    publish (config hash, sources, turn-taking, caller, trunk...); the real worker, given that route's metadata and
    a stand-in SIP caller, publishes exactly those."""
    from infra.sipp import from_user
    from infra.stack.load import parse
    from infra.stack.model import route_metadata
    from infra.stack.plan import compile_stack
    from infra.verify import compare, expectations

    text = f"""
environment: local
inbound_trunks:
  main: {{numbers: ["{OUR_NUMBER}"], allowed_addresses: ["127.0.0.1/32"]}}
agents:
  {worker.agent_name}: {{local: {{}}}}
inbound_routes:
  support:
    numbers: ["{OUR_NUMBER}"]
    caller_numbers: ["{CALLER}"]
    agent: {worker.agent_name}
    agent_config: {{greeting_instructions: "Verify greeting", tts: "local/espeak-ng:en", min_silence_duration: 0.4}}
"""
    stack, lines = parse(text, "verify.yaml")
    plan = compile_stack(stack, "verify.yaml", lines)
    outputs = {"routing_table": {OUR_NUMBER: {"route": "support", "rule_id": "SDR_unused"}},
               "inbound_trunks": {"main": "ST_standin"}}  # fmt: skip
    (expected,) = expectations(plan, outputs)
    assert {"siphon.config_hash", "siphon.caller_number", "siphon.trunk_id", "siphon.min_silence_duration",
            "siphon.sources", "siphon.end_call"} <= set(expected.attributes)  # fmt: skip
    bridge = sip_attributes(**{"sip.phoneNumber": from_user(CALLER)})  # what livekit-sip reports for a sipp call
    r = call(endpoints, worker, plan.inbound_routes["support"].dispatch.metadata, participant=bridge)
    assert_answered(r, worker)
    assert compare(expected, r.attributes) == []
    wrong = route_metadata(
        "support",
        stack.inbound_routes["support"].model_copy(
            update={"agent_config": AgentConfig(greeting_instructions="Something else")}
        ),
        "inbound",
    )
    r2 = call(endpoints, worker, wrong.to_json(), participant=bridge)
    problems = compare(expected, r2.attributes)
    assert any(p.startswith("greeting_instructions_sha") for p in problems), problems


def test_siphon_inbound_payload_answers_with_fallback_models(endpoints: Endpoints, worker: WorkerProc) -> None:
    """Stand-in SIP participant; SIPHON's inbound Dispatch payload, its cloud providers' keys not set here: in `local`
    every kind falls back to the worker's default (the test models)."""
    r = call(endpoints, worker, json.dumps(SIPHON_INBOUND), participant=sip_attributes())
    assert_answered(r, worker)
    a = r.attributes
    assert a["siphon.direction"] == "inbound"  # SIPHON itself would say outbound here
    assert a["siphon.system_instructions_sha"] == _sha(SIPHON_INBOUND["agent_config"]["system_instructions"])
    assert a["siphon.fallbacks"] == "llm,stt,tts"
    assert (a["siphon.llm"], a["siphon.tts"]) == ("local/scripted", "local/espeak-ng")
    assert "model spec unavailable, using the agent's default" in worker.text()
    assert "api_key" not in worker.text()


def test_siphon_outbound_payload_with_caller_present_is_not_dialled_again(
    endpoints: Endpoints, worker: WorkerProc
) -> None:
    """Stand-in SIP participant with outbound attributes (SIPHON's Call already dialled it)."""
    attrs = sip_attributes(**{"sip.phoneNumber": "+15550199", "sip.trunkPhoneNumber": "+15550100"})
    r = call(endpoints, worker, json.dumps(SIPHON_OUTBOUND), participant=attrs)
    assert_answered(r, worker)
    a = r.attributes
    assert a["siphon.direction"] == "outbound"
    assert (a["siphon.caller_number"], a["siphon.called_number"]) == ("+15550100", "+15550199")


async def _outbound_trunk(ep: Endpoints, address: str, number: str) -> str:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        trunk = await lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(
                trunk=api.SIPOutboundTrunkInfo(
                    name=f"worker-test-{uuid.uuid4().hex[:6]}",
                    address=address,
                    numbers=[number],
                    transport=api.SIPTransport.SIP_TRANSPORT_UDP,
                )
            )
        )
        return trunk.sip_trunk_id
    finally:
        await lk.aclose()


async def _delete_trunk(ep: Endpoints, trunk_id: str) -> None:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
    finally:
        await lk.aclose()


def test_outbound_dial_that_cannot_connect_ends_the_job_cleanly(endpoints: Endpoints, worker: WorkerProc) -> None:
    """An observer (kind standard, not SIP) waits in the room; the worker dials through a real outbound trunk.
    Without a SIP bridge (or with nobody answering at the trunk address) the dial fails or is not answered:
    the agent marks the call unanswered and leaves, the worker keeps serving."""
    port = free_port_range(1)
    trunk_id = asyncio.run(_outbound_trunk(endpoints, f"127.0.0.1:{port}", "+15550100"))  # nobody listens there
    try:
        meta = CallMetadata(
            route="reminders",
            direction="outbound",
            outbound_trunk_id=trunk_id,
            caller_number="+15550100",
            called_number="+15550123",
            ring_timeout=3,
        )
        r = call(endpoints, worker, meta.to_json(), kind="standard", until="left")
    finally:
        asyncio.run(_delete_trunk(endpoints, trunk_id))
    assert r.agent_identity, worker.text()[-3000:]
    assert r.agent_left, "the agent should leave after an unanswered dial"
    assert r.attributes.get("siphon.call_status") == "unanswered", r.attributes
    assert "outbound call not connected" in worker.text() and "ending the job without a call" in worker.text()
    # Still serving:
    assert_answered(call(endpoints, worker, "", participant=sip_attributes()), worker, "after unanswered dial")


def test_dispatch_to_unknown_agent_name_is_not_picked_up(endpoints: Endpoints, worker: WorkerProc) -> None:
    """No worker registered under the name: LiveKit accepts the dispatch but nobody joins. Nothing at run
    time catches this; the stack validation (infra) must check every route's agent_name against the deployed
    workers' names."""

    async def scenario() -> tuple[api.AgentDispatch, list[api.ParticipantInfo]]:
        lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
        room = f"t-{uuid.uuid4().hex[:10]}"
        try:
            d = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=f"{worker.agent_name}-typo", room=room, metadata="{}")
            )
            # Control: a dispatch to the real name in a sibling room is picked up in the same window.
            control = f"{room}-control"
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=worker.agent_name, room=control, metadata="{}")
            )
            for _ in range(int(WAIT * 10)):
                parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=control))).participants
                if parts:
                    break
                await asyncio.sleep(0.1)
            assert parts, "control dispatch was not picked up"
            await asyncio.sleep(1.0)
            got = await lk.agent_dispatch.get_dispatch(d.id, room)
            parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
            for r in (room, control):
                await lk.room.delete_room(api.DeleteRoomRequest(room=r))
            return got, list(parts)
        finally:
            await lk.aclose()

    dispatch, participants = asyncio.run(scenario())
    assert participants == []
    assert list(dispatch.state.jobs) == [] or all(not j.state.participant_identity for j in dispatch.state.jobs)


@pytest.mark.parametrize("batch", range(HOSTILE_BATCHES))
def test_hostile_metadata_leaves_the_worker_answering(endpoints: Endpoints, worker: WorkerProc, batch: int) -> None:
    """Stand-in SIP participant per call; every hostile payload (incl. real SIPHON payloads) is answered."""
    names = sorted(HOSTILE_CASES)[batch::HOSTILE_BATCHES]

    async def all_calls() -> list[CallResult]:
        return await asyncio.gather(
            *(run_call(endpoints, worker.agent_name, HOSTILE_CASES[n][0], participant=sip_attributes()) for n in names)
        )

    results = asyncio.run(all_calls())
    for name, r in zip(names, results, strict=True):
        assert_answered(r, worker, name)
        expected = HOSTILE_CASES[name][1]
        if expected:
            assert int(r.attributes["siphon.warnings"]) >= 1, (name, r.attributes)
    assert "sk-LEAKME" not in worker.text()
    assert worker.errors() == []


def test_sigterm_drains_a_running_call_then_exits(endpoints: Endpoints, tmp_path: Path) -> None:
    """Stand-in SIP participant. SIGTERM with a call in progress: no new jobs, the call keeps its agent,
    the worker exits 0 once the call ends."""
    w = start_worker(endpoints, tmp_path / "drain.log", f"siphon-drain-{uuid.uuid4().hex[:6]}")
    try:

        async def scenario() -> tuple[CallResult, bool, bool]:
            room_name = "unused"
            r = await run_call(endpoints, w.agent_name, "", participant=sip_attributes(), keep=True)
            w.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(w.wait_for_log, '"draining worker"')
            alive_while_call = w.proc.poll() is None
            # End the call: delete every room (the caller hangs up).
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            try:
                for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
                    parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))).participants
                    if any(p.identity == r.agent_identity for p in parts):
                        room_name = room.name
                await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
            finally:
                await lk.aclose()
            exited = await asyncio.to_thread(_wait_exit, w.proc, WAIT)
            return r, alive_while_call, exited

        r, alive_while_call, exited = asyncio.run(scenario())
        assert r.attributes.get("siphon.config_hash"), r.attributes
        assert r.audio_track
        assert alive_while_call, "the worker must keep running while a call is in progress"
        assert exited, "the worker must exit once the drained call ended"
        assert w.proc.returncode == 0, w.text()[-3000:]
    finally:
        w.stop()


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


# ------------------------------------------------------------------------------------------------ real SIP (sipp)


async def _inbound_route(ep: Endpoints, agent_name: str, number: str, metadata: str) -> tuple[str, str]:
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        trunk = await lk.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(
                trunk=api.SIPInboundTrunkInfo(name="worker-in", numbers=[number], allowed_addresses=["127.0.0.1/32"])
            )
        )
        rule = await lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(
                dispatch_rule=api.SIPDispatchRuleInfo(
                    name="worker-rule",
                    trunk_ids=[trunk.sip_trunk_id],
                    rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="wk")),
                    room_config=api.RoomConfiguration(
                        agents=[api.RoomAgentDispatch(agent_name=agent_name, metadata=metadata)]
                    ),
                )
            )
        )
        return trunk.sip_trunk_id, rule.sip_dispatch_rule_id
    finally:
        await lk.aclose()


async def _delete_route(ep: Endpoints, trunk_id: str, rule_id: str) -> None:
    """Delete what ``_inbound_route`` made."""
    lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
    try:
        await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
    finally:
        await lk.aclose()


def answered_call(
    ep: Endpoints,
    agent_name: str,
    number: str,
    route: RouteMetadata,
    during: Callable[[str], None] | None = None,
    *,
    audio: sipp.CallerAudio | None = None,
    hold_s: float = WAIT + 60,
) -> tuple[Observation, sipp.CallEnd, str]:
    """One real inbound call through the bridge to ``agent_name`` on a route of its own (the caller speaks
    ``audio`` if given); ``during(room)`` runs once the agent answered, before the room is deleted (which makes
    the bridge send BYE)."""
    trunk_id, rule_id = asyncio.run(_inbound_route(ep, agent_name, number, route.to_json()))

    async def scenario() -> tuple[Observation, sipp.CallEnd]:
        lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
        try:
            call = sipp.place(ep.sip_address, number, caller=CALLER, hold_s=hold_s, audio=audio)
            seen = await observe(lk, call, set(), WAIT)
            if seen.room:
                if during is not None:
                    await asyncio.to_thread(during, seen.room)
                try:
                    await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
                except api.TwirpError as err:  # the agent closed it already (it refused the call)
                    if err.code != "not_found" or seen.attributes:
                        raise
            return seen, await asyncio.to_thread(call.wait, 15)
        finally:
            await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
            await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
            await lk.aclose()

    seen, end = asyncio.run(scenario())
    return seen, end, trunk_id


def test_sipp_inbound_call_is_answered_with_the_routes_configuration(endpoints: Endpoints, worker: WorkerProc) -> None:
    number = "+15550100188"
    route = RouteMetadata(
        route="sipp-inbound",
        inbound_trunk_id=None,
        called_number=number,
        agent_config=AgentConfig(tts="local/espeak-ng:en-gb", system_instructions="Inbound route"),
    )
    seen, end, trunk_id = answered_call(endpoints, worker.agent_name, number, route)
    assert seen.attributes, worker.text()[-3000:]
    attrs = seen.attributes
    assert attrs["siphon.route"] == "sipp-inbound"
    assert attrs["siphon.direction"] == "inbound"
    assert attrs["siphon.tts"] == "local/espeak-ng:en-gb"
    assert attrs["siphon.trunk_id"] == trunk_id
    assert attrs["siphon.called_number"] == number
    assert end.completed, end


def test_sipp_outbound_dispatch_dials_a_uas_that_answers(endpoints: Endpoints, worker: WorkerProc) -> None:
    carrier = Carrier(free_port_range(1)).start()
    trunk_id = asyncio.run(_outbound_trunk(endpoints, f"127.0.0.1:{carrier.port}", "+15550100"))
    try:
        meta = CallMetadata(
            route="sipp-outbound",
            direction="outbound",
            outbound_trunk_id=trunk_id,
            caller_number="+15550100",
            called_number="+15550124",
            ring_timeout=15,
        )
        r = call(endpoints, worker, meta.to_json(), kind="standard")  # deletes the room at the end: BYE
        assert_answered(r, worker, "outbound")
        assert r.attributes["siphon.direction"] == "outbound"
        assert r.attributes["siphon.call_status"] == "active"
        assert r.attributes["siphon.called_number"] == "+15550124"
        assert carrier.wait(15) == 0, carrier.messages()[-3000:]
    finally:
        carrier.close()
        asyncio.run(_delete_trunk(endpoints, trunk_id))


def _active_jobs(w: WorkerProc) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{w.http_port()}/worker", timeout=5) as resp:
        return int(json.loads(resp.read()).get("active_jobs", 0))  # proto JSON leaves out zero


def _wait_jobs(w: WorkerProc, done: object, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _active_jobs(w)
        if done(n):  # type: ignore[operator]
            return n
        time.sleep(0.2)
    return _active_jobs(w)


def test_abandoned_calls_end_their_jobs_and_the_worker_answers_the_next_call(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """30 dispatches whose caller never joins (hung up while it rang), and one whose stand-in caller hangs up
    after the agent answered: every job ends by itself, saying why, and the next call is answered."""
    w = start_worker(endpoints, tmp_path / "abandon.log", f"siphon-abandon-{uuid.uuid4().hex[:6]}",
                     SIPHON_MAX_JOBS="40", SIPHON_PARTICIPANT_WAIT="3")  # fmt: skip
    try:

        async def abandon() -> None:
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            try:
                await asyncio.gather(*(
                    lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                        agent_name=w.agent_name, room=f"ghost-{uuid.uuid4().hex[:8]}", metadata=""))
                    for _ in range(30)
                ))  # fmt: skip
            finally:
                await lk.aclose()

        asyncio.run(abandon())

        def ended() -> int:
            return len(re.findall(r'"message": "job ended".*"reason": "no caller joined within 3s"', w.text()))

        assert _wait_jobs(w, lambda n: n == 0 and ended() == 30, 90) == 0, "jobs without a caller must end"
        assert ended() == 30, w.text()[-3000:]

        left = call(endpoints, w, "", participant=sip_attributes(), leave=True)
        assert_answered(left, w, "before hang-up")
        assert _wait_jobs(w, lambda n: n == 0, WAIT) == 0, "a job whose caller left must end"
        assert "session closed" in w.text()

        assert_answered(call(endpoints, w, "", participant=sip_attributes()), w, "after abandoned calls")
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def test_a_caller_beyond_every_workers_capacity_hears_ringing_then_a_sip_refusal(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """One worker with capacity 2, three simultaneous real calls: two are answered; LiveKit hands the third to
    no worker (it does not queue dispatches), so the bridge keeps it ringing (it answers a caller only when an
    agent's audio is there, never into silence) and refuses it with 486 when the trunk's ringing timeout
    passes, a status a carrier fails over on."""
    w = start_worker(endpoints, tmp_path / "full.log", f"siphon-full-{uuid.uuid4().hex[:6]}", SIPHON_MAX_JOBS="2")
    number = "+15550177"
    try:

        async def scenario() -> list[tuple[Observation, sipp.CallEnd]]:
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            trunk = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=api.SIPInboundTrunkInfo(
                name="full-in", numbers=[number], allowed_addresses=["127.0.0.1/32"],
                ringing_timeout=Duration(seconds=8))))  # fmt: skip
            rule = await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=api.SIPDispatchRuleInfo(
                name="full-rule", trunk_ids=[trunk.sip_trunk_id],
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="full")),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=w.agent_name)]))))  # fmt: skip
            try:
                calls = [
                    sipp.place(endpoints.sip_address, number, caller=f"+1555020000{i}", hold_s=40) for i in range(3)
                ]
                seen = await asyncio.gather(*(observe(lk, c, set(), 25) for c in calls))
                for s in seen:
                    if s.attributes and s.room:
                        await lk.room.delete_room(api.DeleteRoomRequest(room=s.room))  # hang up the answered ones
                ends = await asyncio.gather(*(asyncio.to_thread(c.wait, 20) for c in calls))
                return list(zip(seen, ends, strict=True))
            finally:
                await lk.sip.delete_dispatch_rule(
                    api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
                )
                await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
                await lk.aclose()

        results = asyncio.run(scenario())
        answered = [(s, e) for s, e in results if s.attributes]
        refused = [(s, e) for s, e in results if not s.attributes]
        assert len(answered) == 2, results
        assert all(e.completed for _, e in answered), answered
        ((seen, end),) = refused
        assert seen.room and seen.caller_left, seen  # it reached a room, rang, and was dropped by the bridge
        assert not end.completed and "486" in end.reason, end
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def _emf(w: WorkerProc) -> list[dict[str, object]]:
    return [json.loads(line) for line in w.text().splitlines() if line.startswith('{"_aws"')]


def _wait_emf(w: WorkerProc, active: int, after: int, timeout: float = 10) -> dict[str, object]:
    """The first metric line after the ``after``-th one with ``active`` calls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in _emf(w)[after:] if r[metrics.ACTIVE] == active]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no metric line with {active} active calls:\n{w.text()[-3000:]}")


def test_a_worker_on_ecs_publishes_its_calls_as_the_metric_its_service_scales_on(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """With the names an ECS deployment sets, the worker writes CloudWatch EMF lines (what the awslogs driver
    ships) under exactly the metric the service's calls policy tracks: one real call on a worker of capacity 2
    is 50 %, and the count returns to 0 when the caller is gone."""
    names = Names("test", "support", "siphon-test-support", "voice")
    w = start_worker(endpoints, tmp_path / "metric.log", f"siphon-metric-{uuid.uuid4().hex[:6]}", SIPHON_MAX_JOBS="2",
                     SIPHON_METRIC_CLUSTER=names.cluster_name, SIPHON_METRIC_SERVICE=names.service_name,
                     SIPHON_METRIC_INTERVAL="1")  # fmt: skip
    try:
        idle = _wait_emf(w, active=0, after=0)
        busy: list[dict[str, object]] = []
        route = RouteMetadata(route="metric", direction="inbound", agent_config=AgentConfig(greeting_instructions="Hi"))
        seen, end, _ = answered_call(
            endpoints, w.agent_name, "+15550100190", route,
            during=lambda room: busy.append(_wait_emf(w, active=1, after=len(_emf(w)))),
        )  # fmt: skip
        assert seen.attributes and end.completed, w.text()[-3000:]
        assert busy[0][metrics.UTILIZATION] == 50.0 and busy[0]["Capacity"] == 2
        after = _wait_emf(w, active=0, after=_emf(w).index(busy[0]) + 1, timeout=WAIT)
        assert after[metrics.ACTIVE] == 0

        policy = operations.calls_metric(names)
        for record in (idle, busy[0], after):
            aws = record["_aws"]
            assert isinstance(aws, dict)
            directive = aws["CloudWatchMetrics"][0]
            assert directive["Namespace"] == policy["Namespace"]
            assert policy["MetricName"] in {m["Name"] for m in directive["Metrics"]}
            assert {d["Name"]: record[d["Name"]] for d in policy["Dimensions"]} == {
                d["Name"]: d["Value"] for d in policy["Dimensions"]
            }
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def test_a_worker_on_ecs_protects_its_task_while_it_holds_a_call(endpoints: Endpoints, tmp_path: Path) -> None:
    """Given ``ECS_AGENT_URI`` (ECS sets it) and the deployment's protection period, a real call turns the task's
    scale-in protection on for that period, and the caller hanging up turns it off again."""
    with agent_endpoint() as agent:
        w = start_worker(endpoints, tmp_path / "protect.log", f"siphon-protect-{uuid.uuid4().hex[:6]}",
                         SIPHON_MAX_JOBS="2", ECS_AGENT_URI=agent.uri, SIPHON_CALL_PROTECTION_MINUTES="5")  # fmt: skip
        try:
            during: list[list[bool]] = []
            route = RouteMetadata(route="protect", direction="inbound", agent_config=AgentConfig())
            seen, end, _ = answered_call(
                endpoints, w.agent_name, "+15550100191", route,
                during=lambda room: during.append(_until(lambda: agent.protected, agent.enabled)),
            )  # fmt: skip
            assert seen.attributes and end.completed, w.text()[-3000:]
            assert during == [[True]], "protected while the call ran"
            assert agent.puts[0] == {"ProtectionEnabled": True, "ExpiresInMinutes": 5}
            assert _until(lambda: not agent.protected, agent.enabled) == [True, False], "released when it ended"
            assert "task scale-in protection on while calls run" in w.text()
        finally:
            assert w.stop() == 0, w.text()[-3000:]


def _until(done: Callable[[], bool], value: Callable[[], list[bool]], timeout: float = WAIT) -> list[bool]:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    return value()
