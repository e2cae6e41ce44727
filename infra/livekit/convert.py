"""Between argument models and LiveKit protobuf messages, through protobuf's JSON mapping.

``to_proto`` builds the message LiveKit stores; ``canonical`` turns a message LiveKit returns
back into the plain dict shape ``Args.model_dump()`` produces, so declared and live objects compare
field by field (the basis of diff and drift detection).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import sip as api  # messages only, without the HTTP client
from pydantic import BaseModel, ValidationError

from infra.livekit.args import DispatchRuleArgs, InboundTrunkArgs, MediaConfig, OutboundTrunkArgs, RoomConfig

# friendly enum word <-> protobuf enum name, per field name
ENUMS: dict[str, dict[str, str]] = {
    "transport": {"auto": "SIP_TRANSPORT_AUTO", "udp": "SIP_TRANSPORT_UDP", "tcp": "SIP_TRANSPORT_TCP",
                  "tls": "SIP_TRANSPORT_TLS"},
    "include_headers": {"none": "SIP_NO_HEADERS", "x_headers": "SIP_X_HEADERS", "all": "SIP_ALL_HEADERS"},
    "encryption": {"disable": "SIP_MEDIA_ENCRYPT_DISABLE", "allow": "SIP_MEDIA_ENCRYPT_ALLOW",
                   "require": "SIP_MEDIA_ENCRYPT_REQUIRE"},
}  # fmt: skip
DURATIONS = frozenset({"ringing_timeout", "max_call_duration", "media_timeout"})
# Returned by LiveKit but not declared: ids, timestamps, and the deprecated mirror of media.encryption.
SERVER_ONLY = frozenset(
    {"sip_trunk_id", "sip_dispatch_rule_id", "created_at", "updated_at", "media_encryption", "ringing_timeout_status"}
)
RULE_ONEOF = {
    "direct": "dispatch_rule_direct",
    "individual": "dispatch_rule_individual",
    "callee": "dispatch_rule_callee",
}

ARGS: dict[type[Message], type[BaseModel]] = {
    api.SIPInboundTrunkInfo: InboundTrunkArgs,
    api.SIPOutboundTrunkInfo: OutboundTrunkArgs,
    api.SIPDispatchRuleInfo: DispatchRuleArgs,
}


def _to_json(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "rule":
            body = {k: _to_json(v) for k, v in value.items() if k != "type"}
            return {RULE_ONEOF[value["type"]]: body}
        return {k: _to_json(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if key in ENUMS:
        return ENUMS[key][value]
    if key in DURATIONS:
        return f"{value:g}s"
    return value


def to_proto(args: BaseModel, message: type[Message], object_id: str = "") -> Message:
    """The protobuf message for validated ``args`` (with its id when updating)."""
    body = _to_json(args.model_dump())
    if object_id:
        body["sip_dispatch_rule_id" if message is api.SIPDispatchRuleInfo else "sip_trunk_id"] = object_id
    return json_format.ParseDict(body, message())


_ENUM_WORDS = {k: {v: w for w, v in m.items()} for k, m in ENUMS.items()}


def _from_json(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "rule":
            (oneof, body), *_ = value.items() if value else (("", {}),)
            kind = {v: k for k, v in RULE_ONEOF.items()}.get(oneof, oneof)
            return {"type": kind, **{k: _from_json(v, k) for k, v in body.items()}}
        return {k: _from_json(v, k) for k, v in value.items() if k not in SERVER_ONLY}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if key in _ENUM_WORDS:
        return _ENUM_WORDS[key].get(value, value)
    if key in DURATIONS and isinstance(value, str):
        return float(value.removesuffix("s"))
    return value


def canonical(message: Message) -> dict[str, Any]:
    """The declared-shape dict of an object LiveKit returned.

    Objects that pass validation come back with every default filled in, exactly like
    ``Args.model_dump()``. An object edited out of band into something our models reject is
    returned as LiveKit holds it (so a refresh still shows the drift instead of failing).
    """
    raw = _from_json(json_format.MessageToDict(message, preserving_proto_field_name=True))
    try:
        return declared(ARGS[type(message)].model_validate(raw))
    except ValidationError:
        return raw


# Sub-objects whose all-default form means the same as absent (LiveKit stores an empty `media` on
# some paths and none on others).
_EMPTY_MEANS_ABSENT = {"media": MediaConfig().model_dump(), "room_config": RoomConfig().model_dump()}


def declared(args: BaseModel) -> dict[str, Any]:
    """The canonical dict of validated arguments."""
    out = args.model_dump()
    for key, empty in _EMPTY_MEANS_ABSENT.items():
        if out.get(key) == empty:
            out[key] = None
    return out
