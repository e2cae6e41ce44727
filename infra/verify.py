"""``verify``: prove each inbound route with a real call, one call at a time, and check who answered, and how.

For every inbound route number (or the routes named), sipp calls the number through the SIP bridge with a
Call-ID of its own. The check finds *that* call's room (the caller's participant carries the Call-ID as
``sip.callIDFull``), waits for *that* room's agent to publish its resolved configuration (``siphon.*``
attributes), compares them with what the stack declares (agent name, route, called number, instructions
and greeting by hash, the model of each kind, computed exactly as the worker merges them), then hangs up
by deleting the room, which makes the bridge send BYE. Time to answer is the caller's: from the INVITE
sent to the 200 OK, which livekit-sip sends once the agent's audio is in the room (the worker publishes
its attributes together with its audio track; verify waits for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from livekit import api

from contract.metadata import parse_metadata
from contract.resolve import SipFacts, resolve_call, worker_defaults
from contract.wire import (
    CALL_STATUS_ATTRIBUTE,
    CONFIG_HASH_ATTRIBUTE,
    SIP_CALL_ID_FULL,
    SIP_CALL_STATUS,
    SIP_RULE_ID,
    SIPHON_ATTRIBUTE_PREFIX,
    siphon_attribute,
)
from infra import sipp
from infra.stack.types import Plan

TEST_CALLER = "+15005550006"  # a reserved test number, used as the caller unless the route filters callers
POLL = 0.05  # seconds between looks at LiveKit while a call is set up
HANGUP_WAIT = 15.0  # seconds for the caller to see BYE after the room is deleted


@dataclass(frozen=True)
class Expectation:
    """One route number to call, and what the agent answering it must publish."""

    route: str
    number: str
    agent_name: str
    rule_id: str
    attributes: dict[str, str]
    caller: str = TEST_CALLER
    auth: tuple[str, str] | None = None  # digest credentials of the route's trunk, when it has them
    headers: dict[str, str] | None = None  # SIP headers the INVITE carries (a header override's value)
    dtmf: str = ""  # digits the caller keys in once answered (a PIN route's PIN and #)


async def _participants(lk: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    """Everyone in ``room`` (nobody when the room is gone: it may end between listing it and reading it)."""
    try:
        return list((await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants)
    except api.TwirpError as err:
        if err.code == "not_found":
            return []
        raise


def trunk_auth_keys(plan: Plan, routes: list[str] | None = None) -> dict[str, str]:
    """Config keys of the trunk passwords the selected routes' calls must answer a challenge with: route -> key."""
    return {
        key: secret
        for key, route in plan.inbound_routes.items()
        if not routes or key in routes
        if (secret := next((s for t in route.trunks if (s := plan.inbound_trunks[t].password_secret)), ""))
    }


def published_attributes(
    plan: Plan,
    route_key: str,
    number: str,
    caller_number: str,
    trunk_id: str | None,
    sip_attributes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``siphon.*`` attributes the agent answering a call to ``number`` on this route publishes, computed as
    the worker computes them: its defaults (``worker_defaults`` of what the deployment sets), the metadata the
    plan gives the route's dispatch rule and the caller's attributes, resolved by the worker's ``resolve_call``.
    Without ``trunk_id`` (the route has several trunks), ``siphon.trunk_id`` is left out. ``sip_attributes``: the
    caller's participant attributes the trunk maps from SIP headers (they select the route's header overrides)."""
    dispatch = plan.inbound_routes[route_key].dispatch
    meta = parse_metadata(dispatch.metadata).metadata
    defaults = worker_defaults(plan.stack.agents[dispatch.agent_name].defaults, offline=plan.stack.is_local)
    caller = SipFacts("", phone_number=caller_number, trunk_phone_number=number, trunk_id=trunk_id)
    attributes = {**(sip_attributes or {}), **caller.as_attributes()}  # as livekit-sip sets them on the caller
    attrs = resolve_call(meta, attributes, defaults, agent_name=dispatch.agent_name).attributes()
    return {k: v for k, v in attrs.items() if trunk_id or k != siphon_attribute("trunk_id")}


def expectations(
    plan: Plan, outputs: Mapping[str, Any], routes: list[str] | None = None, passwords: Mapping[str, str] | None = None
) -> list[Expectation]:
    """One expectation per (route, number) of the deployed routing table (``outputs``: the stack's outputs);
    ``passwords`` maps config key -> value."""
    passwords = passwords or {}
    trunk_ids: Mapping[str, str] = outputs.get("inbound_trunks") or {}
    out = []
    for number, row in outputs["routing_table"].items():
        key = row["route"]
        if routes and key not in routes:
            continue
        route = plan.inbound_routes[key]
        if not route.agent:
            continue  # a direct rule dispatches no agent: nothing answers to compare
        trunks = [plan.inbound_trunks[t] for t in route.trunks]
        callers = route.rule.inbound_numbers or [n for t in trunks for n in t.args.allowed_numbers]
        caller = callers[0] if callers else TEST_CALLER
        auth = next(((t.args.auth_username, passwords.get(t.password_secret, "")) for t in trunks
                     if t.args.auth_username), None)  # fmt: skip
        trunk_id = trunk_ids.get(route.trunks[0]) if len(route.trunks) == 1 else None
        attrs = published_attributes(plan, key, number, sipp.from_user(caller), trunk_id)  # as the bridge reports it
        out.append(Expectation(key, number, route.dispatch.agent_name, row["rule_id"], attrs, caller, auth))
    return out


def compare(expected: Expectation, actual: Mapping[str, str]) -> list[str]:
    """What differs between the published and the declared configuration."""
    return [
        f"{k.removeprefix(SIPHON_ATTRIBUTE_PREFIX)} is {actual.get(k)!r}, declared {v!r}"
        for k, v in expected.attributes.items()
        if actual.get(k, "") != v
    ]


@dataclass
class Observation:
    """What LiveKit showed of one synthetic call."""

    room: str = ""
    rule_id: str = ""
    attributes: dict[str, str] | None = None  # the answering agent's, once published
    answered_after: float = 0.0  # seconds from INVITE to answered (agent attributes published, caller active)
    dispatched: tuple[str, ...] = ()  # agent names LiveKit dispatched to the room
    caller_left: bool = False


async def agent_attributes(room: str, timeout: float) -> dict[str, str]:
    """The attributes of the agent in ``room`` once it has published its call status (an outbound call's agent,
    placed with ``place_call``); ``{}`` if none has within ``timeout`` seconds."""
    lk = api.LiveKitAPI()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in await _participants(lk, room):
                if p.kind == api.ParticipantInfo.Kind.AGENT and p.attributes.get(CALL_STATUS_ATTRIBUTE):
                    return dict(p.attributes)
            await asyncio.sleep(0.1)
        return {}
    finally:
        await lk.aclose()


async def observe(lk: api.LiveKitAPI, call: sipp.SippCall, known_rooms: set[str], timeout: float) -> Observation:
    """Find the call's own room by its Call-ID, then wait for the room's agent to publish its configuration."""
    seen = Observation()
    others = set(known_rooms)  # rooms that exist already or belong to other calls
    deadline = call.started + timeout
    while time.monotonic() < deadline:
        if not seen.room:
            if not call.running():
                return seen  # refused, dropped or ended before it reached a room
            for room in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms:
                if room.name in others:
                    continue
                parts = await _participants(lk, room.name)
                mine = [p for p in parts if p.attributes.get(SIP_CALL_ID_FULL) == call.call_id]
                if mine:
                    seen.room, seen.rule_id = room.name, mine[0].attributes.get(SIP_RULE_ID, "")
                    break
                if any(p.kind == api.ParticipantInfo.Kind.SIP for p in parts):
                    others.add(room.name)
        if seen.room:
            parts = await _participants(lk, seen.room)
            caller = [p for p in parts if p.attributes.get(SIP_CALL_ID_FULL) == call.call_id]
            if not caller:
                seen.caller_left = True
                break
            agents = [p for p in parts if p.kind == api.ParticipantInfo.Kind.AGENT]
            ready = [a for a in agents if a.attributes.get(CONFIG_HASH_ATTRIBUTE)]
            # Answered: the agent published its configuration and the bridge has answered the caller (200 OK).
            if ready and caller[0].attributes.get(SIP_CALL_STATUS) == "active":
                seen.attributes = dict(ready[0].attributes)
                seen.answered_after = time.monotonic() - call.started
                return seen
        await asyncio.sleep(POLL)
    if seen.room:
        with contextlib.suppress(api.TwirpError):
            seen.dispatched = tuple(d.agent_name for d in await lk.agent_dispatch.list_dispatch(seen.room))
    return seen


@dataclass(frozen=True)
class Outcome:
    """One verified route number."""

    route: str
    number: str
    agent: str
    ok: bool
    detail: str
    seconds: float  # INVITE sent to answered (200 OK, sent once the agent's audio and attributes are up)


def _no_answer(exp: Expectation, seen: Observation, timeout: float) -> str:
    if not seen.room:
        return "the call reached no room"
    if seen.caller_left:
        return f"room {seen.room}: the caller was dropped before any agent answered"
    if not seen.dispatched:
        return f"room {seen.room} got the call but LiveKit dispatched no agent to it (the rule names none)"
    names = ", ".join(repr(n) for n in seen.dispatched)
    if exp.agent_name not in seen.dispatched:
        return (f"nothing answered within {timeout:.0f}s: the call's rule dispatched agent {names}, "
                f"declared {exp.agent_name!r} (the rule was changed outside the stack? run `pulumi up`)")  # fmt: skip
    return f"nothing answered within {timeout:.0f}s: agent {names} was dispatched, but no worker of that name took it"


async def _verify(exp: Expectation, sip_address: str, timeout: float, source_ip: str | None) -> Outcome:
    lk = api.LiveKitAPI()
    try:
        known = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
        call = sipp.place(sip_address, exp.number, caller=exp.caller, auth=exp.auth, source_ip=source_ip,
                          headers=exp.headers, dtmf=exp.dtmf, hold_s=timeout + HANGUP_WAIT,
                          answer_timeout_s=timeout)  # fmt: skip
        seen = Observation()
        try:
            seen = await observe(lk, call, known, timeout)
        finally:
            if seen.room and call.running():  # hang up: deleting the room makes the bridge send BYE to the caller
                with contextlib.suppress(api.TwirpError):
                    await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
        end = await asyncio.to_thread(call.wait, HANGUP_WAIT)
    finally:
        await lk.aclose()
    # The caller's own clock (sipp's trace: INVITE sent -> 200 OK) when it was answered; else what we saw.
    took = end.answered_after or seen.answered_after or (time.monotonic() - call.started)
    if not seen.room:
        why = end.reason if not end.completed else "the call ended before reaching a room"
        return Outcome(exp.route, exp.number, exp.agent_name, False, f"the call reached no room: {why}", took)
    problems = []
    if seen.rule_id != exp.rule_id:
        problems.append(f"the call was routed by rule {seen.rule_id or '?'}, not the route's rule {exp.rule_id}")
    if seen.attributes is None:
        problems.append(_no_answer(exp, seen, timeout))
    else:
        problems += compare(exp, seen.attributes)
        if not end.completed:
            problems.append(f"the call did not end with BYE: {end.reason}")
    return Outcome(exp.route, exp.number, exp.agent_name, not problems, "; ".join(problems) or "ok", took)


def verify_one(exp: Expectation, sip_address: str, timeout: float = 20.0) -> Outcome:
    """Call one route number through the bridge at ``sip_address`` and check the answer."""
    host = sip_address.rsplit(":", 1)[0]
    source_ip = "127.0.0.1" if host.startswith("127.") or host == "localhost" else None
    return asyncio.run(_verify(exp, sip_address, timeout, source_ip))
