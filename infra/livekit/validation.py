"""Field types that mirror LiveKit's server-side validation, so mistakes are caught before any call.

Rules shared with the stack file, ECS and the worker (numbers, headers, tokens) live in ``contract.types``.

Each type normalises what it can (phone numbers to E.164, country codes to upper case) and rejects
what LiveKit would reject, with a message that says what to write instead.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator

# The shared rules, re-exported for the SIP argument models.
from contract.types import E164 as E164
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
