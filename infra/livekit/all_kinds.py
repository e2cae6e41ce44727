"""The three LiveKit SIP kinds together, for code that handles objects of every kind (import, tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from pydantic import BaseModel

from infra.livekit.dispatch_rule import DISPATCH_RULE
from infra.livekit.inbound_trunk import INBOUND_TRUNK
from infra.livekit.kind import Kind
from infra.livekit.outbound_trunk import OUTBOUND_TRUNK

__all__ = ["DISPATCH_RULE", "INBOUND_TRUNK", "KINDS", "OUTBOUND_TRUNK", "canonical", "to_proto"]

KINDS: dict[type[Message], Kind] = {kind.message: kind for kind in (INBOUND_TRUNK, OUTBOUND_TRUNK, DISPATCH_RULE)}
"""Every kind, by the protobuf message LiveKit stores it as."""


def canonical(message: Message) -> dict[str, Any]:
    """The declared-shape dict of an object LiveKit returned, of any kind (``Kind.canonical``)."""
    return KINDS[type(message)].canonical(message)


def to_proto(args: BaseModel, message: type[Message]) -> Message:
    """The protobuf message ``message`` for validated ``args`` (``Kind.to_proto``)."""
    return KINDS[message].to_proto(args)
