"""What a LiveKit SIP kind is: its arguments model, its protobuf message and its API calls; and the conversion.

Each kind module (``inbound_trunk``, ``outbound_trunk``, ``dispatch_rule``) declares one ``Kind``.
Updates always use the full-object ``replace`` action (LiveKit's partial ``update`` cannot clear a
list and leaves most fields unchangeable), so every update resends every field, passwords included.

Conversion goes through protobuf's JSON mapping: ``Kind.to_proto`` builds the message LiveKit stores;
``Kind.canonical`` turns a message LiveKit returns back into the plain dict shape ``declared(args)``
produces, so declared and live objects compare field by field (the basis of diff and drift detection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from livekit.api import LiveKitAPI as Client

# friendly enum word <-> protobuf enum name, per field name
ENUMS: dict[str, dict[str, str]] = {
    "transport": {"auto": "SIP_TRANSPORT_AUTO", "udp": "SIP_TRANSPORT_UDP", "tcp": "SIP_TRANSPORT_TCP",
                  "tls": "SIP_TRANSPORT_TLS"},
    "include_headers": {"none": "SIP_NO_HEADERS", "x_headers": "SIP_X_HEADERS", "all": "SIP_ALL_HEADERS"},
    "encryption": {"disable": "SIP_MEDIA_ENCRYPT_DISABLE", "allow": "SIP_MEDIA_ENCRYPT_ALLOW",
                   "require": "SIP_MEDIA_ENCRYPT_REQUIRE"},
}  # fmt: skip
_ENUM_WORDS = {k: {v: w for w, v in m.items()} for k, m in ENUMS.items()}
DURATIONS = frozenset({"ringing_timeout", "max_call_duration", "media_timeout"})
# Returned by LiveKit but not declared: ids, timestamps, and the deprecated mirror of media.encryption.
SERVER_ONLY = frozenset(
    {"sip_trunk_id", "sip_dispatch_rule_id", "created_at", "updated_at", "media_encryption", "ringing_timeout_status"}
)


@dataclass(frozen=True)
class Kind:
    """How one kind of LiveKit SIP object is stored and managed."""

    label: str
    args: type[BaseModel]
    message: type[Message]
    id_field: str
    list: Callable[[Client, list[str]], Awaitable[list[Any]]]
    create: Callable[[Client, Any], Awaitable[Any]]
    replace: Callable[[Client, str, Any], Awaitable[Any]]
    delete: Callable[[Client, str], Awaitable[None]]
    oneofs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Fields whose ``type`` picks a protobuf oneof: field -> {type: oneof member} (a dispatch rule's ``rule``)."""

    def object_id(self, message: Any) -> str:
        """The id LiveKit gave the object."""
        return str(getattr(message, self.id_field))

    def to_proto(self, args: BaseModel) -> Message:
        """The protobuf message for validated ``args``."""
        return json_format.ParseDict(self._to_json(args.model_dump()), self.message())

    def canonical(self, message: Message) -> dict[str, Any]:
        """The declared-shape dict of an object LiveKit returned.

        Objects that pass validation come back with every default filled in, exactly like
        ``declared(args)``. An object edited out of band into something our models reject is
        returned as LiveKit holds it (so a refresh still shows the drift instead of failing).
        """
        raw = self._from_json(json_format.MessageToDict(message, preserving_proto_field_name=True))
        try:
            return declared(self.args.model_validate(raw))
        except ValidationError:
            return raw

    def _to_json(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            if key in self.oneofs:
                body = {k: self._to_json(v) for k, v in value.items() if k != "type"}
                return {self.oneofs[key][value["type"]]: body}
            return {k: self._to_json(v, k) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [self._to_json(v) for v in value]
        if key in ENUMS:
            return ENUMS[key][value]
        if key in DURATIONS:
            return f"{value:g}s"
        return value

    def _from_json(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            if key in self.oneofs:
                (oneof, body), *_ = value.items() if value else (("", {}),)
                kind = {v: k for k, v in self.oneofs[key].items()}.get(oneof, oneof)
                return {"type": kind, **{k: self._from_json(v, k) for k, v in body.items()}}
            return {k: self._from_json(v, k) for k, v in value.items() if k not in SERVER_ONLY}
        if isinstance(value, list):
            return [self._from_json(v) for v in value]
        if key in _ENUM_WORDS:
            return _ENUM_WORDS[key].get(value, value)
        if key in DURATIONS and isinstance(value, str):
            return float(value.removesuffix("s"))
        return value


def declared(args: BaseModel) -> dict[str, Any]:
    """The canonical dict of validated arguments.

    An optional sub-object (``media``, ``room_config``) in its all-default form means the same as
    absent (LiveKit stores an empty one on some paths and none on others), so it reads as None.
    """
    out = args.model_dump()
    for key, info in type(args).model_fields.items():
        sub = getattr(args, key)
        if isinstance(sub, BaseModel) and info.default is None and out[key] == type(sub)().model_dump():
            out[key] = None
    return out
