"""The three LiveKit SIP object kinds and the API calls that list, create, replace and delete each.

Updates always use the full-object ``replace`` action (LiveKit's partial ``update`` cannot clear a
list and leaves most fields unchangeable), so every update resends every field, passwords included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from livekit.protocol import sip as api  # the messages only: livekit.api (aiohttp) loads when a call is made
from pydantic import BaseModel

from infra.livekit.args import DispatchRuleArgs, InboundTrunkArgs, OutboundTrunkArgs

if TYPE_CHECKING:
    from livekit.api import LiveKitAPI as Client


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

    def object_id(self, message: Any) -> str:
        """The id LiveKit gave the object."""
        return str(getattr(message, self.id_field))


async def _list_inbound(c: Client, ids: list[str]) -> list[Any]:
    return list((await c.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=ids))).items)


async def _list_outbound(c: Client, ids: list[str]) -> list[Any]:
    return list((await c.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest(trunk_ids=ids))).items)


async def _list_rules(c: Client, ids: list[str]) -> list[Any]:
    return list((await c.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest(dispatch_rule_ids=ids))).items)


async def _delete_trunk(c: Client, object_id: str) -> None:
    await c.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=object_id))  # idempotent in LiveKit


async def _delete_rule(c: Client, object_id: str) -> None:
    from livekit.api import TwirpError  # loaded by now: ``c`` is a client

    try:
        await c.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=object_id))
    except TwirpError as e:
        if e.code != "not_found":  # already gone is what we wanted
            raise


INBOUND_TRUNK = Kind(
    label="inbound trunk",
    args=InboundTrunkArgs,
    message=api.SIPInboundTrunkInfo,
    id_field="sip_trunk_id",
    list=_list_inbound,
    create=lambda c, m: c.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=m)),
    replace=lambda c, i, m: c.sip.update_inbound_trunk(i, m),
    delete=_delete_trunk,
)
OUTBOUND_TRUNK = Kind(
    label="outbound trunk",
    args=OutboundTrunkArgs,
    message=api.SIPOutboundTrunkInfo,
    id_field="sip_trunk_id",
    list=_list_outbound,
    create=lambda c, m: c.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=m)),
    replace=lambda c, i, m: c.sip.update_outbound_trunk(i, m),
    delete=_delete_trunk,
)
DISPATCH_RULE = Kind(
    label="dispatch rule",
    args=DispatchRuleArgs,
    message=api.SIPDispatchRuleInfo,
    id_field="sip_dispatch_rule_id",
    list=_list_rules,
    create=lambda c, m: c.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=m)),
    replace=lambda c, i, m: c.sip.update_dispatch_rule(i, m),
    delete=_delete_rule,
)
