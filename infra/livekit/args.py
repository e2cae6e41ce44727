"""Typed arguments of the LiveKit SIP resources: every field of the LiveKit protos, validated.

Field names are the protobuf field names. Friendlier types replace protobuf ones: durations are
seconds, enums are lower-case words (``transport="udp"``, ``include_headers="x_headers"``).
Fields LiveKit marks deprecated (``media_encryption``) are expressed through ``media.encryption``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from contract.types import MAX_METADATA_CHARS, LiveKitAgentName
from infra.livekit.validation import (
    E164,
    AllowedAddress,
    AttributeName,
    CodecName,
    Country,
    HeaderName,
    HeaderValue,
    HostPort,
    Model,
    Pin,
    RoomName,
)

MAX_MEDIA_TIMEOUT = 600.0  # LiveKit: "media_timeout must not exceed 10m0s"
MAX_CALL_SECONDS = 24 * 3600.0

Metadata = Annotated[str, Field(max_length=MAX_METADATA_CHARS, description="free-form text (often JSON)")]
HeaderOptions = Literal["none", "x_headers", "all"]
Encryption = Literal["disable", "allow", "require"]


class Codec(Model):
    """One codec offered or accepted on the call's media."""

    name: CodecName = Field(description="codec name, e.g. PCMU, PCMA, G722, opus")
    rate: int = Field(default=0, ge=0, le=192000, description="clock rate in Hz (0: codec default)")


class MediaConfig(Model):
    """Media settings of a trunk or rule."""

    only_listed_codecs: bool = Field(default=False, description="refuse codecs not listed in `codecs`")
    codecs: list[Codec] = Field(default_factory=list)
    encryption: Encryption | None = Field(default=None, description="SRTP: disable, allow or require")
    media_timeout: float | None = Field(
        default=None, gt=0, le=MAX_MEDIA_TIMEOUT, description="seconds without media before the call ends"
    )

    @model_validator(mode="after")
    def _codecs_listed(self) -> MediaConfig:
        if self.only_listed_codecs and not self.codecs:
            raise ValueError("only_listed_codecs is true but no codecs are listed")
        return self


class _TrunkCommon(Model):
    name: str = Field(min_length=1, max_length=256, description="unique within a stack; used to adopt existing")
    metadata: Metadata = ""
    numbers: list[E164] = Field(default_factory=list)
    auth_username: str = Field(default="", max_length=256)
    auth_password: str = Field(default="", max_length=256, description="secret; never shown or stored in plain text")
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict, description="headers LiveKit adds")
    headers_to_attributes: dict[HeaderName, AttributeName] = Field(
        default_factory=dict, description="SIP header -> participant attribute"
    )
    attributes_to_headers: dict[AttributeName, HeaderName] = Field(
        default_factory=dict, description="participant attribute -> SIP header"
    )
    include_headers: HeaderOptions = Field(default="none", description="SIP headers copied to sip.h.* attributes")
    media: MediaConfig | None = None

    @model_validator(mode="after")
    def _auth_pair(self) -> _TrunkCommon:
        if bool(self.auth_username) != bool(self.auth_password):
            missing = "auth_password" if self.auth_username else "auth_username"
            raise ValueError(f"digest auth needs both auth_username and auth_password: set {missing} too")
        if len(set(self.numbers)) != len(self.numbers):
            raise ValueError("numbers lists the same number twice")
        return self


class InboundTrunkArgs(_TrunkCommon):
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


class OutboundTrunkArgs(_TrunkCommon):
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


class DispatchRuleArgs(Model):
    """A dispatch rule: which inbound calls go to which room, with which agents."""

    name: str = Field(min_length=1, max_length=256, description="unique within a stack; used to adopt existing")
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
