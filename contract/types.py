"""Each naming and size rule once: constrained types shared by the stack file, the resource arguments and the
worker's metadata schema, the one base-model configuration, the secret field names and the one validation-error
formatter.

Where two systems impose different limits on the same name (LiveKit and ECS), each system's type is
here, the stack file uses their intersection, and the message says which system imposes the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema

# -- limits --------------------------------------------------------------------------------------------

MAX_METADATA_CHARS = 64 * 1024
"""LiveKit metadata of a trunk, rule or agent dispatch (the worker refuses larger job metadata too)."""
MAX_HEADER_NAME = 255
MAX_HEADER_VALUE = 1024
MAX_TOKEN = 128
"""Participant attribute names (and the worker's attribute keys)."""
MAX_HEADER_OVERRIDES = 8
"""Header-selected layers per route (each header arrives as one participant attribute)."""
DEFAULT_RING_TIMEOUT = 30
"""Seconds an outbound call rings when the route (or the worker's ``SIPHON_RING_TIMEOUT``) sets no other."""
RingTimeout = Annotated[float, Field(ge=1, le=120)]
"""Seconds an outbound call may ring before it counts as not answered."""
LOCAL_ENVIRONMENT = "local"
"""The one environment that may run the offline test models (``local/*``): a stack file outside it may not name
them, and a worker outside it (``SIPHON_ENVIRONMENT``) never runs on them, not even as a fallback."""


class StrictModel(BaseModel):
    """Unknown keys are errors, values are immutable: the worker's metadata schema (strings kept as sent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Model(StrictModel):
    """Base of every argument and stack-file model: a ``StrictModel`` that also trims strings."""

    model_config = ConfigDict(str_strip_whitespace=True)


# -- SIP tokens and headers ----------------------------------------------------------------------------

TOKEN_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"  # RFC 3261 token
TOKEN_RE = re.compile(TOKEN_PATTERN)

# Header names LiveKit refuses to set or map (case-insensitive), see its validation.
FORBIDDEN_HEADERS = frozenset({
    "accept", "accept-encoding", "accept-language", "allow", "allow-events", "call-id", "contact",
    "content-encoding", "content-length", "content-type", "cseq", "event", "expires", "from", "max-forwards",
    "record-route", "refer-to", "reply-to", "k", "l", "m", "o", "r", "t", "u", "v",
})  # fmt: skip


def _token(value: str) -> str:
    if not value or not TOKEN_RE.match(value) or len(value) > MAX_TOKEN:
        raise ValueError(f"{value!r} must be a SIP token of 1 to {MAX_TOKEN} letters, digits and -.!%*_+`'~")
    return value


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


AttributeName = Annotated[
    str,
    AfterValidator(_token),
    WithJsonSchema({"maxLength": MAX_TOKEN, "minLength": 1, "pattern": TOKEN_PATTERN, "type": "string"}),
]
"""A participant attribute name: a SIP token (the pattern is published in the worker's JSON Schema)."""
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
"""A SIP header value LiveKit sets on a call (a trunk's ``headers``)."""
MAX_ATTRIBUTE_VALUE = 256
AttributeValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)]
"""A participant attribute value that selects a configuration layer: a header value the trunk maps to an attribute
(``header_overrides`` values in the stack file, ``attribute_overrides`` keys in the call metadata)."""

# -- phone numbers ---------------------------------------------------------------------------------------

_PUNCTUATION = re.compile(r"[\s\-().]")


def _e164(value: str) -> str:
    """Normalise to E.164 (``+1 (555) 010-0100`` -> ``+15550100100``) with libphonenumber's rules.

    LiveKit matches numbers by exact string, so a number is refused (not silently rewritten) when its
    digits are not what a carrier sends: a national trunk prefix after the country code, for example.
    """
    cleaned = _PUNCTUATION.sub("", value)
    if not cleaned.startswith("+"):
        if cleaned.isdigit() and cleaned.startswith("0"):
            raise ValueError(
                f"{value!r} is a national number: write '+', its country code, then the number without the "
                f"national prefix 0 (for example +<country code>{cleaned.lstrip('0')})"
            )
        if cleaned.isdigit():
            raise ValueError(f"{value!r} has no '+': write it in E.164 form, '+' then the country code and number")
        raise ValueError(f"{value!r} is not an E.164 phone number ('+', the country code, then up to 14 digits)")
    if not cleaned[1:].isdigit():
        raise ValueError(f"{value!r} is not an E.164 phone number ('+', the country code, then up to 14 digits)")
    try:
        parsed = phonenumbers.parse(cleaned, None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{value!r} is not an E.164 phone number (no such country code)") from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        what = {
            phonenumbers.ValidationResult.TOO_SHORT: "too short",
            phonenumbers.ValidationResult.TOO_LONG: "too long",
        }.get(reason, "not a possible number")
        raise ValueError(f"{value!r} is {what} for country code +{parsed.country_code}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 != cleaned:
        raise ValueError(
            f"{value!r} keeps the national prefix after the country code, so it never matches what carriers "
            f"send: write {e164}"
        )
    return e164


E164 = Annotated[str, AfterValidator(_e164)]

# -- names: agent and environment, per system ----------------------------------------------------------

LIVEKIT_AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}$")
# Lowercase DNS-label style; the bounds keep every derived ECS/IAM name (siphon-<env>-<agent>-exec) within 64.
ECS_AGENT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
ECS_ENVIRONMENT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?$")
STACK_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _matching(pattern: re.Pattern[str], problem: str) -> AfterValidator:
    """A validator refusing a value that ``pattern`` does not match: ``<value> <problem>``."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} {problem}")
        return value

    return AfterValidator(check)


_livekit_agent_name = _matching(
    LIVEKIT_AGENT_NAME_RE,
    "is not a LiveKit agent name (1-128 letters, digits, '_', '-', '.'; starting alphanumeric)",
)
_ecs_agent_name = _matching(
    ECS_AGENT_NAME_RE,
    "is not a valid agent name on ECS: 1-32 lower-case letters, digits and '-', not starting or ending with '-' "
    "(ECS and IAM names are derived from it and must fit 64 characters)",
)
_ecs_environment = _matching(
    ECS_ENVIRONMENT_RE,
    "is not a valid environment name on ECS: 1-16 lower-case letters, digits and '-', not starting or ending "
    "with '-' (the ECS and IAM names of the workers are derived from it)",
)
_starts_with_letter = _matching(
    re.compile(r"^[A-Za-z]"), "must start with a letter (it prefixes every LiveKit object name)"
)


def _stack_key(value: str) -> str:
    if not STACK_KEY_RE.match(value):
        raise ValueError(f"name {value!r} must be lower-case letters, digits and '-' (max 63)")
    return value


LiveKitAgentName = Annotated[str, _livekit_agent_name]
EcsAgentName = Annotated[str, _ecs_agent_name]
AgentName = Annotated[str, _livekit_agent_name, _ecs_agent_name]
"""An agent in a stack file: valid for LiveKit dispatch and for ECS naming (the intersection)."""
EcsEnvironmentName = Annotated[str, _ecs_environment]
EnvironmentName = Annotated[str, _ecs_environment, _starts_with_letter]
"""An environment in a stack file: valid in LiveKit object names and in the ECS/IAM names of its workers."""
StackKey = Annotated[str, AfterValidator(_stack_key)]
"""A trunk or route name in a stack file (prefixed with the environment in LiveKit)."""

# -- the one error formatter -----------------------------------------------------------------------------

SECRET_FIELDS = ("auth_password", "livekit_api_key", "livekit_api_secret", "provider_keys")
"""Every argument field whose value is a secret: the resources pass it as a Pulumi secret (the ECS deployment keeps
it out of state), and ``describe_error`` never quotes it."""
_INTERNAL_LOC = (
    "function-", "tagged-union", "constrained-", "json-or-python", "lax-or-strict", "chain[", "union[",
    "is-instance[", "literal[", "nullable", "[key]",
)  # fmt: skip
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[0-9]+)?$")  # a field, or an entry of a list field


def describe_error(err: Any) -> tuple[str, str]:
    """``(dotted field path, reason)`` of one pydantic error, never quoting the input value (pass the errors with
    their input: a secret field's message is cut before its first quote unless its input is a mapping, whose
    errors name its keys).

    A cross-field rule (a model validator) may start its message with ``<field>: ``: that field is
    appended to the path, so the error names the field it is about.
    """
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith(_INTERNAL_LOC)))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (check its spelling)"
    field, sep, rest = msg.partition(": ")
    if err.get("type") == "value_error" and sep and _FIELD_RE.match(field):
        loc, msg = (f"{loc}.{field}" if loc else field), rest
    if any(s in loc.split(".") for s in SECRET_FIELDS) and "'" in msg and not isinstance(err.get("input"), Mapping):
        msg = msg.split("'")[0].strip()  # a validator might quote the secret; a mapping's errors quote its keys
    return loc or "(root)", msg


def describe_errors(error: ValidationError) -> list[tuple[str, str]]:
    """``(dotted field path, reason)`` per error; of a union's alternatives only the closest one's errors."""
    errors = error.errors(include_url=False)
    return [describe_error(e) for e in _closest_union_branch(errors)]


def _closest_union_branch(errors: list[Any]) -> list[Any]:
    """Drop a union member's errors when the value is not even of that member's type but fits another one.

    Pydantic reports a value that matches no member of ``str | ProviderSpec`` once per member; for a
    dict, the string member's "should be a valid string" is noise that hides the real reason.
    """
    members: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
    for e in errors:  # at every union of the path (a union inside a union's member: a fallback chain's entry)
        loc = e["loc"]
        for i, part in enumerate(loc):
            if isinstance(part, str) and part.startswith(_INTERNAL_LOC):
                members.setdefault(tuple(loc[:i]), {}).setdefault(part, []).append(e)
    noise: set[int] = set()
    for by_member in members.values():
        mismatched = [m for m, errs in by_member.items() if all(x["type"] in _TYPE_MISMATCH for x in errs)]
        if len(by_member) > 1 and len(mismatched) < len(by_member):
            noise.update(id(x) for m in mismatched for x in by_member[m])
    return [e for e in errors if id(e) not in noise]


_TYPE_MISMATCH = frozenset({"string_type", "dict_type", "model_type", "int_type", "list_type", "model_attributes_type"})
