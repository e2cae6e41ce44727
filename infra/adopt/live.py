"""Every SIP object of one LiveKit project, listed with one call per kind (the three run concurrently)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infra.livekit.all_kinds import DISPATCH_RULE, INBOUND_TRUNK, OUTBOUND_TRUNK

if TYPE_CHECKING:
    from livekit import api

    from infra.livekit.client import Credentials


@dataclass(frozen=True)
class LiveProject:
    """What a LiveKit project holds: protobuf messages as LiveKit returned them."""

    inbound: list[Any]
    outbound: list[Any]
    rules: list[Any]


def list_project(creds: Credentials) -> LiveProject:
    """List inbound trunks, outbound trunks and dispatch rules (raises ``LiveKitError`` with LiveKit's message)."""
    from infra.livekit import client

    async def listing(lk: api.LiveKitAPI) -> LiveProject:
        inbound, outbound, rules = await asyncio.gather(
            INBOUND_TRUNK.list(lk, []), OUTBOUND_TRUNK.list(lk, []), DISPATCH_RULE.list(lk, [])
        )
        return LiveProject(inbound, outbound, rules)

    return client.call(creds, "list the SIP objects", listing, timeout=60.0)
