"""Placing outbound calls through a declared outbound route (``place_call``).

The route's outputs (``pulumi stack output outbound_routes``) give the trunk id, caller IDs, agent and
route metadata; the call adds the destination, per-call overrides and customer context. The call
becomes an agent dispatch into room ``call-<call_id>`` whose metadata follows the worker's schema
(``contract.metadata.CallMetadata``); the worker dials (default) or this function dials directly.
Credentials come from the environment or Pulumi config, never from stack outputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from livekit import api
from pydantic import Field, JsonValue, ValidationError

from contract.metadata import AgentConfig, CallMetadata, RouteMetadata
from contract.models import layer_spec_problems
from contract.types import Model
from infra.livekit import client
from infra.livekit.fields import E164, describe_errors
from infra.stack.types import OutboundCall

CALL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


class CallRequest(Model):
    """What the caller of ``place_call`` asks for; validated before anything is sent."""

    route: str = Field(min_length=1)
    to: E164
    call_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=CALL_ID_PATTERN)
    overrides: AgentConfig | None = None
    context: dict[str, JsonValue] = Field(default_factory=dict)
    dial: Literal["worker", "direct"] = "worker"


class CallError(Exception):
    """The call could not be placed; nothing is left behind (the dispatch is removed)."""


@dataclass(frozen=True)
class CallResult:
    """Ids of a placed call."""

    call_id: str
    room: str
    dispatch_id: str
    agent_name: str
    participant_identity: str
    sip_call_id: str | None
    already_placed: bool


def _request(**kwargs: Any) -> CallRequest:
    try:
        req = CallRequest.model_validate(kwargs)
    except ValidationError as e:
        raise CallError("; ".join(f"{f}: {m}" for f, m in describe_errors(e))) from None
    for _, field, reason in layer_spec_problems(req.overrides or AgentConfig()):
        raise CallError(f"overrides.{field}: the worker cannot resolve this spec: {reason}")
    return req


def call_metadata(route: OutboundCall, req: CallRequest) -> CallMetadata:
    """The dispatch metadata: the route's layer plus this call's numbers, trunk, overrides and context."""
    base = RouteMetadata.model_validate_json(route.metadata)
    context = {**(base.context or {}), **req.context} or None
    return CallMetadata(
        **base.model_dump(exclude={"context", "direction"}, exclude_none=True),
        direction="outbound",
        caller_number=route.caller_ids[0],
        called_number=req.to,
        outbound_trunk_id=route.trunk_id,
        overrides=req.overrides,
        context=context,
        ring_timeout=route.ring_timeout,
        participant_identity=f"sip-{req.call_id}",
    )


def place_call(
    outbound_routes: Mapping[str, Mapping[str, Any]],
    route: str,
    to: str,
    *,
    call_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    dial: Literal["worker", "direct"] = "worker",
    credentials: client.Credentials | None = None,
    timeout: float = 40.0,
) -> CallResult:
    """Place one call through ``route`` to ``to``; a retry with the same ``call_id`` does not dial again."""
    kwargs: dict[str, Any] = {"route": route, "to": to, "overrides": overrides, "context": context or {}, "dial": dial}
    if call_id is not None:
        kwargs["call_id"] = call_id
    req = _request(**kwargs)
    if req.route not in outbound_routes:
        raise CallError(f"no outbound route {req.route!r} (declared: {', '.join(sorted(outbound_routes)) or 'none'})")
    try:
        spec = OutboundCall.model_validate(outbound_routes[req.route])
    except ValidationError as e:
        problems = "; ".join(f"{f}: {m}" for f, m in describe_errors(e))
        raise CallError(f"the stack output outbound_routes.{req.route} is not a deployed route: {problems}") from None
    metadata = call_metadata(spec, req)
    room = f"call-{req.call_id}"
    identity = metadata.participant_identity or f"sip-{req.call_id}"
    creds = credentials or client.Credentials.resolve({})

    async def run(lk: api.LiveKitAPI) -> CallResult:
        if (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms:  # a retry of this call id
            existing = [d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name == spec.agent_name]
            if existing:
                return CallResult(req.call_id, room, existing[0].id, spec.agent_name, identity, None, True)
        # The room is created with the agent in its configuration: exactly one dispatch, and no default
        # (agent_name "") dispatch that an implicitly created room would get.
        await lk.room.create_room(
            api.CreateRoomRequest(
                name=room,
                empty_timeout=int(spec.ring_timeout) + 30,
                agents=[api.RoomAgentDispatch(agent_name=spec.agent_name, metadata=metadata.to_json())],
            )
        )
        dispatch = next(d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name == spec.agent_name)
        sip_call_id = None
        if req.dial == "direct":
            try:
                participant = await lk.sip.create_sip_participant(
                    api.CreateSIPParticipantRequest(
                        sip_trunk_id=spec.trunk_id, sip_call_to=req.to, sip_number=metadata.caller_number or "",
                        room_name=room, participant_identity=identity,
                    ),
                    timeout=timeout,
                )  # fmt: skip
                sip_call_id = participant.sip_call_id
            except Exception as e:
                await lk.agent_dispatch.delete_dispatch(dispatch.id, room)
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                raise CallError(
                    f"dialling {req.to} through route {req.route!r} failed ({e}); the dispatch was removed"
                ) from None
        return CallResult(req.call_id, room, dispatch.id, spec.agent_name, identity, sip_call_id, False)

    return client.call(creds, f"place call {req.call_id} on route {req.route!r}", run, timeout=timeout + 5)
