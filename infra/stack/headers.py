"""Header-selected per-call overrides: which SIP header maps to which participant attribute, per trunk.

A route's ``header_overrides`` say "when the caller's INVITE carries header H with value V, use layer L".
LiveKit turns headers into participant attributes only through a trunk's ``headers_to_attributes``, so
each header is mapped on the route's trunks (reusing a mapping the trunk already declares, else to
``siphon.header.<header>``), and the route's metadata tells the worker which attribute values select
which layer (``RouteMetadata.attribute_overrides``).
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from infra.stack.checks import route_trunks
from infra.stack.model import StackFile
from worker.metadata import AgentConfig
from worker.rules import AttributeName

ATTRIBUTE_PREFIX = "siphon.header."
_ATTRIBUTE: TypeAdapter[str] = TypeAdapter(AttributeName)


def _valid_attribute(name: str) -> bool:
    """An attribute a trunk may map a header to (one that is not is reported once, at the route's header)."""
    try:
        _ATTRIBUTE.validate_python(name)
    except ValidationError:
        return False
    return True


def header_attribute(stack: StackFile, trunks: list[str], header: str) -> str:
    """The attribute a header arrives as on these trunks (a trunk's own mapping wins)."""
    for key in trunks:
        for name, attribute in stack.inbound_trunks[key].headers_to_attributes.items():
            if name.lower() == header.lower():
                return attribute
    return ATTRIBUTE_PREFIX + header.lower()


def trunk_header_mappings(stack: StackFile) -> dict[str, dict[str, str]]:
    """Extra headers_to_attributes entries each inbound trunk needs for the routes that use it."""
    extra: dict[str, dict[str, str]] = {}
    for key, route in stack.inbound_routes.items():
        trunks = route_trunks(stack, key)
        for override in route.header_overrides:
            attribute = header_attribute(stack, trunks, override.header)
            for trunk in trunks:
                declared = {h.lower() for h in stack.inbound_trunks[trunk].headers_to_attributes}
                if override.header.lower() not in declared and _valid_attribute(attribute):
                    extra.setdefault(trunk, {})[override.header] = attribute
    return extra


def route_attribute_overrides(stack: StackFile, route_key: str) -> dict[str, dict[str, AgentConfig]] | None:
    """The route's ``attribute_overrides`` for the worker (attribute -> value -> layer)."""
    route = stack.inbound_routes[route_key]
    trunks = route_trunks(stack, route_key)
    table = {header_attribute(stack, trunks, o.header): dict(o.values) for o in route.header_overrides}
    return table or None
