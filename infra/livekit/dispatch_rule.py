"""Dispatch rule: which inbound calls go to which room, with which agents (``SipDispatchRule``).

State records ``DispatchRuleProvider`` by this module's path (and, for state written by 0.1.0, by
``infra.livekit.provider``), and the type token ``pulumi-python:dynamic/livekit:SipDispatchRule``:
keep both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import pulumi
from livekit.protocol import sip as api  # the messages only: livekit.api (aiohttp) loads when a call is made
from pydantic import Field, model_validator

from contract.types import LiveKitAgentName
from infra.livekit.base import LiveKitProvider, SipResource
from infra.livekit.fields import E164, MAX_NAME_CHARS, AttributeName, MediaConfig, Metadata, Model, Pin, RoomName
from infra.livekit.kind import Kind

if TYPE_CHECKING:
    from livekit.api import LiveKitAPI as Client


class DirectRule(Model):
    """Every call joins one fixed room."""

    type: Literal["direct"]
    room_name: RoomName = Field(min_length=1)
    pin: Pin = ""


class IndividualRule(Model):
    """Each caller gets a new room named <room_prefix>_<caller>_<random>."""

    type: Literal["individual"]
    room_prefix: RoomName = ""
    pin: Pin = ""
    no_randomness: bool = False


class CalleeRule(Model):
    """Calls to one number share a room named <room_prefix>_<called number>."""

    type: Literal["callee"]
    room_prefix: RoomName = ""
    pin: Pin = ""
    randomize: bool = False


Rule = Annotated[DirectRule | IndividualRule | CalleeRule, Field(discriminator="type")]


class AgentDispatch(Model):
    """An agent LiveKit dispatches into each room the rule creates."""

    agent_name: LiveKitAgentName
    metadata: Metadata = ""
    attributes: dict[AttributeName, str] = Field(default_factory=dict)


class RoomTimeouts(Model):
    """Timeouts and size of the rooms a rule creates (a stack route's ``room``)."""

    empty_timeout: int = Field(default=0, ge=0, le=86400, description="seconds an empty room stays open")
    departure_timeout: int = Field(default=0, ge=0, le=86400, description="seconds after the last participant")
    max_participants: int = Field(default=0, ge=0)


class RoomConfig(RoomTimeouts):
    """Room settings applied when a rule creates a room (agents fire only then)."""

    name: str = ""
    metadata: Metadata = ""
    min_playout_delay: int = Field(default=0, ge=0, description="milliseconds")
    max_playout_delay: int = Field(default=0, ge=0, description="milliseconds")
    sync_streams: bool = False
    agents: list[AgentDispatch] = Field(default_factory=list)

    @model_validator(mode="after")
    def _delays(self) -> RoomConfig:
        if self.max_playout_delay and self.min_playout_delay > self.max_playout_delay:
            raise ValueError("min_playout_delay is larger than max_playout_delay")
        return self


_RULE_RANK = {"direct": 0, "individual": 1, "callee": 2}


def rule_priority(rule_type: str, pin: str, *, any_caller: bool, any_number: bool) -> int:
    """LiveKit's ranking of the dispatch rules a call matches (``DispatchRulePriority`` in livekit/protocol
    ``sip/sip.go``; lower ranks first): a PIN-protected rule before every open one, then direct, individual, callee;
    1,000 behind for matching any caller, and again for any called number. A rule naming the call's trunk beats every
    rule naming none, whatever their rank; a tie goes to the lower room name.

    The first pass over an inbound call ranks the PIN rules and the open ones together: when a PIN rule wins, the
    caller is asked for a PIN, and a caller who enters none (``#`` alone) is matched again among the open rules only.
    """
    return _RULE_RANK[rule_type] + (0 if pin else 100) + 1000 * any_caller + 1000 * any_number


class DispatchRuleArgs(Model):
    """A dispatch rule: which inbound calls go to which room, with which agents."""

    name: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="unique within a stack; used to adopt existing"
    )
    metadata: Metadata = ""
    attributes: dict[AttributeName, str] = Field(default_factory=dict, description="set on the SIP participant")
    rule: Rule
    trunk_ids: list[str] = Field(default_factory=list, description="inbound trunks (empty: every trunk)")
    hide_phone_number: bool = False
    inbound_numbers: list[E164] = Field(default_factory=list, description="caller numbers matched (empty: any)")
    numbers: list[E164] = Field(default_factory=list, description="called numbers matched (empty: any)")
    room_preset: str = Field(default="", description="LiveKit Cloud only")
    room_config: RoomConfig | None = None
    krisp_enabled: bool = False
    media: MediaConfig | None = None

    @model_validator(mode="after")
    def _agents_need_new_rooms(self) -> DispatchRuleArgs:
        if isinstance(self.rule, DirectRule) and self.room_config and self.room_config.agents:
            raise ValueError(
                "agents are dispatched only when a room is created: a direct rule reuses one room, so use an "
                "individual or callee rule for agents"
            )
        return self


async def _list(lk: Client, ids: list[str]) -> list[Any]:
    return list((await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest(dispatch_rule_ids=ids))).items)


async def _delete(lk: Client, rule_id: str) -> None:
    from livekit.api import TwirpError  # loaded by now: ``lk`` is a client

    try:
        await lk.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
    except TwirpError as e:
        if e.code != "not_found":  # already gone is what we wanted
            raise


RULE_ONEOF = {
    "direct": "dispatch_rule_direct",
    "individual": "dispatch_rule_individual",
    "callee": "dispatch_rule_callee",
}
"""A rule's ``type`` -> the member of the ``rule`` oneof LiveKit stores it in."""

DISPATCH_RULE = Kind(
    label="dispatch rule",
    args=DispatchRuleArgs,
    message=api.SIPDispatchRuleInfo,
    id_field="sip_dispatch_rule_id",
    list=_list,
    create=lambda lk, rule: lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=rule)),
    replace=lambda lk, rule_id, rule: lk.sip.update_dispatch_rule(rule_id, rule),
    delete=_delete,
    oneofs={"rule": RULE_ONEOF},
)


class DispatchRuleProvider(LiveKitProvider):
    """Provider for ``SipDispatchRule``."""

    KIND = DISPATCH_RULE


class SipDispatchRule(SipResource, module="livekit", name="SipDispatchRule"):
    """A LiveKit SIP dispatch rule; arguments: ``DispatchRuleArgs`` (as the model or a mapping of inputs)."""

    PROVIDER = DispatchRuleProvider
    sip_dispatch_rule_id: pulumi.Output[str]
    name: pulumi.Output[str]
