"""Outbound trunk: the provider LiveKit dials through, and the caller-ID numbers it may use (``SipOutboundTrunk``).

State records ``OutboundTrunkProvider`` by this module's path (and, for state written by 0.1.0, by
``infra.livekit.provider``), and the type token ``pulumi-python:dynamic/livekit:SipOutboundTrunk``:
keep both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pulumi
from livekit.protocol import sip as api  # the messages only: livekit.api (aiohttp) loads when a call is made
from pydantic import Field, model_validator

from infra.livekit.base import LiveKitProvider, SipResource
from infra.livekit.fields import Country, HostPort, TrunkFields
from infra.livekit.kind import Kind

if TYPE_CHECKING:
    from livekit.api import LiveKitAPI as Client


class OutboundTrunkArgs(TrunkFields):
    """An outbound SIP trunk: the provider LiveKit dials through, and the caller-ID numbers it may use."""

    address: HostPort = Field(description="SIP provider host or IP with optional :port (not a SIP URI)")
    transport: Literal["auto", "udp", "tcp", "tls"] = "auto"
    destination_country: Country | Literal[""] = Field(default="", description="ISO 3166-1 alpha-2")
    from_host: HostPort | Literal[""] = Field(default="", description="host used in the From header")

    @model_validator(mode="after")
    def _has_numbers(self) -> OutboundTrunkArgs:
        if not self.numbers:
            raise ValueError("an outbound trunk needs at least one caller-ID number in numbers")
        return self


async def _list(lk: Client, ids: list[str]) -> list[Any]:
    return list((await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest(trunk_ids=ids))).items)


async def _delete(lk: Client, trunk_id: str) -> None:
    await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))  # idempotent in LiveKit


OUTBOUND_TRUNK = Kind(
    label="outbound trunk",
    args=OutboundTrunkArgs,
    message=api.SIPOutboundTrunkInfo,
    id_field="sip_trunk_id",
    list=_list,
    create=lambda lk, trunk: lk.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=trunk)),
    replace=lambda lk, trunk_id, trunk: lk.sip.update_outbound_trunk(trunk_id, trunk),
    delete=_delete,
)


class OutboundTrunkProvider(LiveKitProvider):
    """Provider for ``SipOutboundTrunk``."""

    KIND = OUTBOUND_TRUNK


class SipOutboundTrunk(SipResource, module="livekit", name="SipOutboundTrunk"):
    """A LiveKit outbound SIP trunk; arguments: ``OutboundTrunkArgs`` (as the model or a mapping of inputs)."""

    PROVIDER = OutboundTrunkProvider
    sip_trunk_id: pulumi.Output[str]
    name: pulumi.Output[str]
    numbers: pulumi.Output[list[str]]
