"""Field types that mirror LiveKit's server-side validation, so mistakes are caught before any call.

Each type normalises what it can (phone numbers to E.164, country codes to upper case) and rejects
what LiveKit would reject, with a message that says what to write instead.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
_NUMBER_PUNCTUATION = re.compile(r"[\s\-().]")
TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")  # RFC 3261 token
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)
CODEC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
PIN_RE = re.compile(r"^\d{1,16}$")
ROOM_RE = re.compile(r"^[A-Za-z0-9_\-.:+@]+$")

# Header names LiveKit refuses to set or map (case-insensitive), see its validation.
FORBIDDEN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "call-id",
        "contact",
        "content-encoding",
        "content-length",
        "content-type",
        "cseq",
        "event",
        "expires",
        "from",
        "max-forwards",
        "record-route",
        "refer-to",
        "reply-to",
        "k",
        "l",
        "m",
        "o",
        "r",
        "t",
        "u",
        "v",
    }
)
MAX_HEADER_NAME = 255
MAX_HEADER_VALUE = 1024


class Model(BaseModel):
    """Base for argument models: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _e164(value: str) -> str:
    cleaned = _NUMBER_PUNCTUATION.sub("", value)
    if cleaned and cleaned[0] != "+" and cleaned.isdigit():
        raise ValueError(f"{value!r} has no country code: write it in E.164 form, for example +{cleaned}")
    if not E164_RE.match(cleaned):
        raise ValueError(f"{value!r} is not an E.164 phone number (a '+', the country code, then up to 14 digits)")
    return cleaned


def _header_name(value: str) -> str:
    if not value:
        raise ValueError("header name cannot be empty")
    if len(value) > MAX_HEADER_NAME:
        raise ValueError(f"header name is too long ({len(value)} > {MAX_HEADER_NAME} characters)")
    if not TOKEN_RE.match(value):
        raise ValueError(f"header name {value!r} has characters SIP does not allow (use letters, digits and -)")
    if value.lower() in FORBIDDEN_HEADERS:
        raise ValueError(f"header {value!r} is managed by the SIP stack and cannot be set or mapped")
    return value


def _header_value(value: str) -> str:
    if len(value) > MAX_HEADER_VALUE:
        raise ValueError(f"header value is too long ({len(value)} > {MAX_HEADER_VALUE} characters)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("header value contains control characters (line breaks, tabs, ...)")
    return value


def _token(value: str) -> str:
    if not value or not TOKEN_RE.match(value):
        raise ValueError(f"{value!r} must be a non-empty SIP token (letters, digits and -.!%*_+`'~)")
    return value


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


E164 = Annotated[str, AfterValidator(_e164)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
AttributeName = Annotated[str, AfterValidator(_token)]
AllowedAddress = Annotated[str, AfterValidator(_allowed_address)]
HostPort = Annotated[str, AfterValidator(_host_port)]
Country = Annotated[str, AfterValidator(_country)]
CodecName = Annotated[str, AfterValidator(_codec)]
Pin = Annotated[str, AfterValidator(_pin)]
RoomName = Annotated[str, AfterValidator(_room)]

# Fields whose values never appear in an error message.
SECRET_FIELDS = frozenset({"auth_password"})


_PYDANTIC_LOC_TAGS = (
    "function-", "tagged-union", "constrained-", "json-or-python", "lax-or-strict", "chain[", "union[",
    "is-instance[", "literal[", "nullable",
)  # fmt: skip


def describe_errors(err: ValidationError) -> list[tuple[str, str]]:
    """(field path, reason) pairs, without echoing input values (they may be secrets)."""
    out = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith(_PYDANTIC_LOC_TAGS)))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        if any(s in loc for s in SECRET_FIELDS):
            msg = msg.split("'")[0].strip() if "'" in msg else msg
        out.append((loc or "(root)", msg))
    return out
