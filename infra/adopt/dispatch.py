"""A dispatch rule's agent metadata, read back into a route's ``metadata_format``, ``agent_config`` and ``context``.

Two payloads are understood: SIPHON 0.1.4's (``{"agent_config": {...}, "inbound_trunk_id": ..., "agent_number":
...}``, written by its ``Dispatch``) and siphon-infra's own (``contract.metadata.RouteMetadata``). Both are read
with the worker's own models, so the route keeps the prompts and models the worker resolves today. Anything else
is reported (``problem``): the file cannot hold it, so the first ``up`` would rewrite it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contract.metadata import SIPHON_CONFIG_KEY, SIPHON_PAYLOAD_KEYS, AgentConfig, RouteMetadata
from contract.types import describe_errors
from infra.stack.model import MetadataFormat

OUR_KEYS = frozenset({"schema_version", "route", "direction"})


@dataclass(frozen=True)
class Layer:
    """What a route declares for its dispatch; ``problem`` says why it would not reproduce the metadata."""

    format: MetadataFormat
    agent_config: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    route: str = ""
    problem: str = ""


def _why(e: ValidationError) -> str:
    return "; ".join(f"{f}: {m}" for f, m in describe_errors(e))[:300]


def _layer(config: Any) -> dict[str, Any]:
    return AgentConfig.model_validate(config or {}).model_dump(mode="json", exclude_none=True)


def read_dispatch(agent_metadata: str, rule_metadata: str) -> Layer:
    """The route layer behind an agent dispatch's metadata (and the rule's own metadata)."""
    if not agent_metadata and not rule_metadata:
        return Layer("none")
    try:
        data = json.loads(agent_metadata) if agent_metadata else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Layer("siphon-infra", problem=f"the agent's metadata ({len(agent_metadata)} characters) is not a "
                                             "JSON object of SIPHON's or siphon-infra's")  # fmt: skip
    if set(data) & OUR_KEYS:
        try:
            meta = RouteMetadata.model_validate(data)
        except ValidationError as e:
            return Layer("siphon-infra", problem=f"the agent's metadata is not readable: {_why(e)}")
        problem = ""
        if meta.attribute_overrides:
            problem = "header-selected layers (attribute_overrides) are not read back into header_overrides"
        elif meta.allowed_overrides:
            problem = "what a caller may choose (allowed_overrides) is not read back into the route"
        elif rule_metadata != agent_metadata:
            problem = "the rule's own metadata differs from its agent's"
        config = meta.agent_config.model_dump(mode="json", exclude_none=True) if meta.agent_config else {}
        return Layer("siphon-infra", config, dict(meta.context or {}), meta.route or "", problem)
    if SIPHON_CONFIG_KEY in data and set(data) <= SIPHON_PAYLOAD_KEYS:
        try:
            config = _layer(data[SIPHON_CONFIG_KEY])
        except ValidationError as e:
            return Layer("siphon", problem=f"SIPHON's agent_config is not one the worker reads: {_why(e)}")
        context = {k: v for k, v in data.items() if k != SIPHON_CONFIG_KEY}
        return Layer("siphon", config, context, problem="the rule's own metadata is set" if rule_metadata else "")
    keys = ", ".join(sorted(data))[:200]
    return Layer("siphon-infra", problem=f"the agent's metadata (keys {keys}) is neither SIPHON's nor siphon-infra's")
