"""Human views of a stack: the routing table, a Mermaid diagram, and the Markdown summary for pull requests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from infra.stack.types import Plan

SECRET_MASK = "[secret]"


def table(rows: Iterable[dict[str, str]], columns: list[str] | None = None) -> str:
    """A Markdown table (also readable as plain text)."""
    rows = list(rows)
    columns = columns or (list(rows[0]) if rows else ["route"])
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    head = "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |"
    rule = "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _id(*parts: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


def mermaid(plan: Plan) -> str:
    """numbers -> trunks -> rules -> agents -> workers, as a Mermaid flowchart."""
    stack = plan.stack
    lines = ["flowchart LR"]
    for key, route in stack.inbound_routes.items():
        rule = _id("rule", key)
        lines.append(f'  {rule}{{{{"rule {key}"}}}}')
        for number in route.numbers or ["any number"]:
            lines.append(f'  {_id("n", number)}(["{number}"])')
            for trunk in plan.inbound_routes[key].trunks or ["any trunk"]:
                lines.append(f'  {_id("n", number)} --> {_id("in", trunk)}["trunk {trunk}"]')
                lines.append(f"  {_id('in', trunk)} --> {rule}")
        if route.agent:  # a direct rule dispatches no agent
            lines.append(f'  {rule} --> {_id("agent", route.agent)}["agent {route.agent}"]')
    for key, out in stack.outbound_routes.items():
        agent_id, trunk_id = _id("agent", out.agent), _id("out", out.trunk)
        lines.append(f'  {agent_id}["agent {out.agent}"] -->|"{key}"| {trunk_id}["trunk {out.trunk} (out)"]')
    for key, agent in stack.agents.items():
        if agent.ecs:
            lines.append(f'  {_id("agent", key)} --> {_id("w", key)}[("ECS {agent.ecs.image.rsplit("/", 1)[-1]}")]')
        if agent.local:
            lines.append(f'  {_id("agent", key)} --> {_id("w", key, "local")}[("local worker")]')
    return "\n".join(dict.fromkeys(lines))  # drop repeated edges, keep order


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") or {"ciphertext", "plaintext"} & set(value):
            return SECRET_MASK
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _changed_keys(step: dict[str, Any]) -> list[str]:
    """Top-level inputs that differ between a step's old and new state (dynamic providers send no detailed diff)."""
    old = (step.get("oldState") or {}).get("inputs") or {}
    new = (step.get("newState") or {}).get("inputs") or {}
    if not old or not new:
        return []
    return sorted(k for k in set(old) | set(new) if not k.startswith("__") and old.get(k) != new.get(k))


def changes(preview: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of what a `pulumi preview --json` would change (secrets masked), skipping unchanged resources."""
    rows = []
    for step in preview.get("steps", []):
        op = step.get("op", "")
        if op in ("same", "read"):
            continue
        urn = step.get("urn", "")
        name = urn.rsplit("::", 1)[-1]
        kind = urn.split("::")[-2].rsplit("$", 1)[-1] if "::" in urn else ""
        fields = step.get("diffReasons") or sorted((step.get("detailedDiff") or {}).keys()) or _changed_keys(step)
        rows.append({"op": op, "resource": name, "type": kind.split(":")[-1], "fields": ", ".join(fields) or "-"})
    return rows


def markdown_summary(environment: str, plan: Plan, preview: dict[str, Any] | None) -> str:
    """The pull-request comment: routing table, diagram, and what the preview would change."""
    parts = [f"## siphon-infra: `{environment}`", "", "### Routing", "", table(plan.routing_rows()), "",
             "```mermaid", mermaid(plan), "```", ""]  # fmt: skip
    if preview is not None:
        summary = _mask(preview.get("changeSummary", {}))
        rows = changes(_mask(preview))
        parts += ["### Changes", "", "`" + json.dumps(summary, sort_keys=True) + "`", ""]
        parts += [table(rows, ["op", "resource", "type", "fields"]) if rows else "No changes.", ""]
    return "\n".join(parts)
