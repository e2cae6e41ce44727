"""Inbound trunk: which called numbers LiveKit answers, and from whom (``SipInboundTrunk``).

State records ``InboundTrunkProvider`` by this module's path (and, for state written by 0.1.0, by
``infra.livekit.provider``), and the type token ``pulumi-python:dynamic/livekit:SipInboundTrunk``:
keep both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi
from livekit.protocol import sip as api  # the messages only: livekit.api (aiohttp) loads when a call is made
from pydantic import Field, model_validator

from infra.livekit.base import LiveKitProvider, SipResource
from infra.livekit.fields import E164, AllowedAddress, TrunkFields
from infra.livekit.kind import Kind

if TYPE_CHECKING:
    from livekit.api import LiveKitAPI as Client

MAX_CALL_SECONDS = 24 * 3600.0


class InboundTrunkArgs(TrunkFields):
    """An inbound SIP trunk: which called numbers LiveKit answers, and from whom."""

    allowed_addresses: list[AllowedAddress] = Field(default_factory=list, description="source IPs, CIDRs, hosts")
    allowed_numbers: list[E164] = Field(default_factory=list, description="caller numbers allowed (empty: any)")
    auth_realm: str = Field(default="", max_length=256)
    ringing_timeout: float | None = Field(default=None, gt=0, le=600, description="seconds to ring before giving up")
    max_call_duration: float | None = Field(default=None, gt=0, le=MAX_CALL_SECONDS, description="seconds")
    krisp_enabled: bool = False

    @model_validator(mode="after")
    def _secured(self) -> InboundTrunkArgs:
        if not (self.auth_username or self.allowed_addresses or self.numbers):
            raise ValueError(
                "an inbound trunk must be restricted: set numbers, allowed_addresses, or auth_username+auth_password"
            )
        return self


async def _list(lk: Client, ids: list[str]) -> list[Any]:
    return list((await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest(trunk_ids=ids))).items)


async def _delete(lk: Client, trunk_id: str) -> None:
    await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))  # idempotent in LiveKit


INBOUND_TRUNK = Kind(
    label="inbound trunk",
    args=InboundTrunkArgs,
    message=api.SIPInboundTrunkInfo,
    id_field="sip_trunk_id",
    list=_list,
    create=lambda lk, trunk: lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=trunk)),
    replace=lambda lk, trunk_id, trunk: lk.sip.update_inbound_trunk(trunk_id, trunk),
    delete=_delete,
)


class InboundTrunkProvider(LiveKitProvider):
    """Provider for ``SipInboundTrunk``."""

    KIND = INBOUND_TRUNK


class SipInboundTrunk(SipResource, module="livekit", name="SipInboundTrunk"):
    """A LiveKit inbound SIP trunk; arguments: ``InboundTrunkArgs`` (as the model or a mapping of inputs)."""

    PROVIDER = InboundTrunkProvider
    sip_trunk_id: pulumi.Output[str]
    name: pulumi.Output[str]
    numbers: pulumi.Output[list[str]]
