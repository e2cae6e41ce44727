"""``verify``: prove each inbound route with a synthetic SIP call and check who answered, and how.

For every inbound route (or those named), sipp calls the route's number through the SIP bridge; the
check waits for the room LiveKit creates for that call (its SIP participant carries the route's rule
id) and for the agent to publish its resolved configuration (``siphon.*`` attributes), then compares
those with what the stack declares: the agent, the route, the called number, instructions and greeting
(by hash) and the model of each kind, computed exactly as the worker merges them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit import api

from infra.stack.model import StackFile
from localenv.ports import free_port_range
from worker.config import WorkerSettings, defaults_env, merge_layers, text_sha
from worker.metadata import MODEL_KINDS
from worker.models.registry import parse_spec

TEST_CALLER = "+15005550006"  # a reserved test number as the caller
_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="siphon-infra verify">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70
{headers}Content-Type: application/sdp
Content-Length: [len]

v=0
o=siphon 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0
]]></send>
  <pause milliseconds="{hold_ms}"/>
  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: sip:{caller}@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0
]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def scenario(caller: str, headers: dict[str, str] | None = None, hold_ms: int = 20000) -> str:
    """A sipp UAC scenario: INVITE (PCMU) from ``caller`` with extra headers, hold, BYE."""
    extra = "".join(f"{k}: {v}\n" for k, v in (headers or {}).items())
    return _SCENARIO.format(caller=caller.lstrip("+"), headers=extra, hold_ms=hold_ms)


@dataclass(frozen=True)
class Expectation:
    """What the agent answering a route's number must publish."""

    route: str
    number: str
    agent_name: str
    rule_id: str
    attributes: dict[str, str]


def expectations(stack: StackFile, routing_table: dict[str, Any], routes: list[str] | None = None) -> list[Expectation]:
    """One expectation per (route, number) of the deployed routing table."""
    out = []
    for number, row in routing_table.items():
        key = row["route"]
        if routes and key not in routes:
            continue
        route = stack.inbound_routes[key]
        defaults = WorkerSettings.from_env(defaults_env(stack.agents[route.agent].defaults)).defaults
        cfg = merge_layers(("default", defaults), ("route", route.agent_config)).config
        attrs = {
            "siphon.route": key,
            "siphon.direction": "inbound",
            "siphon.called_number": number,
            "siphon.system_instructions_sha": text_sha(cfg.system_instructions) or "",
            "siphon.greeting_instructions_sha": text_sha(cfg.greeting_instructions) or "",
            "siphon.fallbacks": "",
        }
        for kind in MODEL_KINDS:
            spec = getattr(cfg, kind)
            attrs[f"siphon.{kind}"] = parse_spec(kind, spec if isinstance(spec, str) else spec.model_dump()).label
        out.append(Expectation(key, number, route.agent, row["rule_id"], attrs))
    return out


def compare(expected: Expectation, actual: dict[str, str]) -> list[str]:
    """What differs between the published and the declared configuration."""
    return [
        f"{k.removeprefix('siphon.')} is {actual.get(k)!r}, declared {v!r}"
        for k, v in expected.attributes.items()
        if actual.get(k, "") != v
    ]


async def _watch(rule_id: str, caller: str, agent_name: str, timeout: float) -> tuple[dict[str, str] | None, str]:
    """Wait for the call's room (SIP participant with the rule id) and its agent's resolved attributes."""
    lk = api.LiveKitAPI()
    deadline = time.monotonic() + timeout
    room_seen = ""
    try:
        while time.monotonic() < deadline:
            for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
                parts = (await lk.room.list_participants(api.ListParticipantsRequest(room=room.name))).participants
                sip = [p for p in parts if p.attributes.get("sip.ruleID") == rule_id
                       and p.attributes.get("sip.phoneNumber", "").lstrip("+") == caller.lstrip("+")]  # fmt: skip
                if not sip:
                    continue
                room_seen = room.name
                agents = [p for p in parts if p.kind == api.ParticipantInfo.Kind.AGENT]
                ready = [a for a in agents if a.attributes.get("siphon.config_hash")]
                if ready:
                    return dict(ready[0].attributes), room.name
            await asyncio.sleep(0.2)
    finally:
        await lk.aclose()
    if not room_seen:
        return None, "the call reached no room for this route's rule (trunk or rule mismatch, or the bridge refused it)"
    return None, f"room {room_seen} got the caller but no agent answered: is a worker named {agent_name!r} running?"


@dataclass(frozen=True)
class Outcome:
    """One verified route number."""

    route: str
    number: str
    agent: str
    ok: bool
    detail: str
    seconds: float


def verify_one(exp: Expectation, sip_address: str, timeout: float = 20.0) -> Outcome:
    """Call one route number with sipp and check the answer."""
    sipp = shutil.which("sipp")
    if not sipp:
        return Outcome(exp.route, exp.number, exp.agent_name, False, "sipp is not installed", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "uac.xml"
        path.write_text(scenario(TEST_CALLER, hold_ms=int(timeout * 1000) + 5000))
        started = time.monotonic()
        argv = [sipp, "-sf", str(path), "-s", exp.number, "-i", "127.0.0.1", "-p", str(free_port_range(1)),
                "-m", "1", "-nostdin", "-timeout", str(int(timeout) + 10), sip_address]  # fmt: skip
        call = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            attrs, note = asyncio.run(_watch(exp.rule_id, TEST_CALLER, exp.agent_name, timeout))
        finally:
            call.terminate()
            call.wait(timeout=10)
        took = time.monotonic() - started
    if attrs is None:
        return Outcome(exp.route, exp.number, exp.agent_name, False, note, took)
    problems = compare(exp, attrs)
    return Outcome(exp.route, exp.number, exp.agent_name, not problems, "; ".join(problems) or "ok", took)
