"""Field types and sub-models every LiveKit SIP kind shares, mirroring LiveKit's server-side validation.

Field names are the protobuf field names. Friendlier types replace protobuf ones: durations are
seconds, enums are lower-case words (``transport="udp"``, ``include_headers="x_headers"``).
Fields LiveKit marks deprecated (``media_encryption``) are expressed through ``media.encryption``.

Each type normalises what it can (phone numbers to E.164, country codes to upper case) and rejects
what LiveKit would reject, with a message that says what to write instead, so mistakes are caught
before any call. Rules shared with the stack file, ECS and the worker (numbers, headers, tokens) live
in ``contract.types`` and are re-exported here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

# The shared rules, re-exported for the SIP argument models.
from contract.types import E164 as E164
from contract.types import MAX_METADATA_CHARS
from contract.types import AttributeName as AttributeName
from contract.types import HeaderName as HeaderName
from contract.types import HeaderValue as HeaderValue
from contract.types import Model as Model
from contract.types import describe_errors as describe_errors

HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)
CODEC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
PIN_RE = re.compile(r"^\d{1,16}$")
ROOM_RE = re.compile(r"^[A-Za-z0-9_\-.:+@]+$")
MAX_NAME_CHARS = 256
"""LiveKit's limit on a trunk's or a dispatch rule's name."""


def object_name(environment: str, key: str, name: str = "") -> str:
    """The LiveKit name of a stack entry: its declared ``name``, else ``<environment>-<key>`` (unique per
    project, since each environment prefixes its own)."""
    return name or f"{environment}-{key}"


def _allowed_address(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False)) if "/" in value else str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if "/" not in value and HOSTNAME_RE.match(value) and not re.fullmatch(r"[\d.]+", value):
        return value.lower()
    raise ValueError(f"{value!r} is not an IP address, a CIDR range (like 203.0.113.0/24) or a hostname")


def _host_port(value: str) -> str:
    lowered = value.lower()
    if lowered.startswith(("sip:", "sips:")) or "@" in value:
        raise ValueError(
            f"{value!r} is a SIP URI: give only the host or IP with an optional port, like sip.example.com:5060"
        )
    if ";" in value or "transport=" in lowered:
        raise ValueError(f"{value!r} carries URI parameters: set the transport field instead of ';transport='")
    host, port = value, None
    if value.startswith("["):  # [ipv6]:port
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r} has an invalid port {port!r} (1-65535)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME_RE.match(host):
            raise ValueError(f"{value!r} is not a hostname or IP address with an optional :port") from None
    return value


def _country(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (like US, GB, DE)")
    return value.upper()


def _codec(value: str) -> str:
    if not value:
        raise ValueError("missing codec name")
    if "/" in value:
        raise ValueError(f"codec name {value!r} must not contain '/': put the clock rate in the rate field")
    if not CODEC_RE.match(value):
        raise ValueError(f"invalid codec name {value!r}")
    return value


def _pin(value: str) -> str:
    if value and not PIN_RE.match(value):
        raise ValueError("a PIN is 1 to 16 digits")
    return value


def _room(value: str) -> str:
    if value and not ROOM_RE.match(value):
        raise ValueError(f"{value!r} has characters not allowed in a room name (use letters, digits and _-.:+@)")
    return value


AllowedAddress = Annotated[str, AfterValidator(_allowed_address)]
HostPort = Annotated[str, AfterValidator(_host_port)]
Country = Annotated[str, AfterValidator(_country)]
CodecName = Annotated[str, AfterValidator(_codec)]
Pin = Annotated[str, AfterValidator(_pin)]
RoomName = Annotated[str, AfterValidator(_room)]

ID_PREFIXES = {"trunk": "ST_", "dispatch rule": "SDR_"}
"""How LiveKit's ids of each kind begin (inbound and outbound trunks share ``ST_``)."""
_ID_RE = re.compile(r"^[A-Z]+_\w+$")


def _id_of(kind: str) -> AfterValidator:
    """A LiveKit id of ``kind`` (or empty): the message names the kind an id of another kind belongs to."""
    prefix = ID_PREFIXES[kind]

    def check(value: str) -> str:
        if not value or (value.startswith(prefix) and _ID_RE.match(value)):
            return value
        other = next((k for k, p in ID_PREFIXES.items() if value.startswith(p) and k != kind), None)
        what = f"is a {other} id" if other else "is not a LiveKit id"
        listing = "lk sip inbound list / lk sip outbound list" if kind == "trunk" else "lk sip dispatch list"
        raise ValueError(f"{what}: a {kind} id starts with {prefix} (`{listing}` shows them; import writes them)")

    return AfterValidator(check)


TrunkId = Annotated[str, _id_of("trunk")]
DispatchRuleId = Annotated[str, _id_of("dispatch rule")]


MAX_MEDIA_TIMEOUT = 600.0  # LiveKit: "media_timeout must not exceed 10m0s"

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


class TrunkFields(Model):
    """The fields inbound and outbound trunks share: name, numbers, digest auth, headers, media."""

    name: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="unique within a stack; used to adopt existing"
    )
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
    def _auth_pair(self) -> TrunkFields:
        if bool(self.auth_username) != bool(self.auth_password):
            missing = "auth_password" if self.auth_username else "auth_username"
            raise ValueError(f"digest auth needs both auth_username and auth_password: set {missing} too")
        if len(set(self.numbers)) != len(self.numbers):
            raise ValueError("numbers lists the same number twice")
        return self
