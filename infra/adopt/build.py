"""Live SIP objects -> the stack file's document (a plain dict in ``StackFile``'s shape), and what it cannot hold.

Every field that differs from its default is kept; trunk passwords become ``auth_password_secret`` references
(the values never leave LiveKit's answer); each rule's agent dispatch becomes a route with its agent, read back
by ``infra.adopt.dispatch``; each agent gets a worker stanza. An object the file cannot name (no name, a name two
objects share, a rule whose agents a route cannot declare) is left out and reported; a field the file cannot
hold is reported as a rewrite (``infra.adopt.changes`` then finds every difference the plan would make).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from contract.types import ECS_AGENT_NAME_RE, LOCAL_ENVIRONMENT, STACK_KEY_RE, describe_errors
from contract.wire import ROUTE_ATTRIBUTE
from infra.adopt.dispatch import Layer, read_dispatch
from infra.adopt.keys import Keys
from infra.adopt.live import LiveProject
from infra.livekit.all_kinds import DISPATCH_RULE, INBOUND_TRUNK, OUTBOUND_TRUNK, canonical
from infra.livekit.dispatch_rule import DispatchRuleArgs, RoomConfig
from infra.livekit.fields import object_name
from infra.livekit.kind import Kind

Effect = Literal["left out", "rewritten"]


@dataclass(frozen=True)
class Finding:
    """Something of the live project the stack file does not reproduce exactly (never carries a secret)."""

    kind: str
    name: str
    object_id: str
    effect: Effect
    reason: str

    def __str__(self) -> str:
        what = {"left out": "left out (stays in LiveKit, not managed)", "rewritten": "rewritten by the first up"}
        return f"{self.kind} {self.name or '<no name>'!r} ({self.object_id}): {what[self.effect]}: {self.reason}"


@dataclass
class Imported:
    """The document to write and everything the import has to say about it."""

    doc: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # config key -> where it is used
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> key -> LiveKit id
    live: dict[str, Any] = field(default_factory=dict)  # LiveKit id -> message
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)  # LiveKit id -> its canonical() shape

    def shape(self, message: Any, object_id: str) -> dict[str, Any]:
        """``canonical(message)``, computed once per object."""
        if object_id not in self.shapes:
            self.shapes[object_id] = canonical(message)
        return self.shapes[object_id]


def _why(e: ValidationError) -> str:
    return "; ".join(f"{f}: {m}" for f, m in describe_errors(e))[:300]


def _camel(*parts: str) -> str:
    words = [w for p in parts for w in p.replace("_", "-").split("-") if w]
    return words[0].lower() + "".join(w.capitalize() for w in words[1:])


def _named(messages: list[Any], kind: Kind, out: Imported) -> list[tuple[Any, bool]]:
    """The objects the file can name, each with whether its name is shared (then it is adopted by id)."""
    counts = Counter(m.name for m in messages)
    kept = []
    for m in messages:
        if not m.name:
            reason = "it has no name: the stack file needs one, and naming it is a write"
            out.findings.append(Finding(kind.label, "", kind.object_id(m), "left out", reason))
        else:
            kept.append((m, counts[m.name] > 1))
    return kept


def _valid(message: Any, kind: Kind, out: Imported) -> BaseModel | None:
    try:
        return kind.args.model_validate(out.shape(message, kind.object_id(message)))
    except ValidationError as e:
        out.findings.append(Finding(kind.label, message.name, kind.object_id(message), "left out",
                                    f"LiveKit holds what the stack file refuses: {_why(e)}"))  # fmt: skip
        return None


def _trunks(environment: str, section: str, kind: Kind, messages: list[Any], out: Imported) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    keys = Keys(environment)
    named = sorted(_named(messages, kind, out), key=lambda m: (keys.priority(m[0].name), kind.object_id(m[0])))
    for message, shared in named:
        args = _valid(message, kind, out)
        if args is None:
            continue
        key = keys.key(message.name, "trunk")
        entry: dict[str, Any] = {"name": message.name} if message.name != object_name(environment, key) else {}
        if shared:
            entry["adopt_id"] = kind.object_id(message)
        body = args.model_dump(mode="json", exclude_defaults=True, exclude={"name", "auth_password"})
        entry.update(body)
        if message.auth_password:
            secret = _camel(environment, key, "password")
            entry["auth_password_secret"] = secret
            out.secrets[secret] = f"{section}.{key}"
        entries[key] = entry
        out.ids.setdefault(section, {})[key] = kind.object_id(message)
        out.live[kind.object_id(message)] = message
    return entries


_ROOM_EXTRAS = ("name", "metadata", "min_playout_delay", "max_playout_delay", "sync_streams")


def default_rule(environment: str, key: str) -> dict[str, Any]:
    """The rule the plan builds for a route that names none (its ``pin`` aside), as its non-default fields."""
    return {"type": "individual", "room_prefix": object_name(environment, key)}


def _route(environment: str, key: str, args: DispatchRuleArgs, trunk_keys: dict[str, str],
           message: Any, out: Imported, layer: Layer) -> dict[str, Any]:  # fmt: skip
    """The route entry of one dispatch rule (its unexpressed fields reported)."""
    rc = args.room_config or RoomConfig()
    agent = rc.agents[0] if rc.agents else None

    def rewrite(reason: str) -> None:
        out.findings.append(Finding(DISPATCH_RULE.label, args.name, DISPATCH_RULE.object_id(message), "rewritten",
                                    reason))  # fmt: skip

    if layer.problem:
        rewrite(layer.problem)
    lacking = [f"room_config.{f}" for f in _ROOM_EXTRAS if getattr(rc, f) != RoomConfig.model_fields[f].default]
    lacking += ["room_preset"] * bool(args.room_preset) + ["room_config.agents.0.attributes"] * bool(
        agent and agent.attributes
    )
    if lacking:
        rewrite(f"the stack file has no field for {', '.join(lacking)}")
    route: dict[str, Any] = {"name": args.name} if args.name != object_name(environment, key) else {}
    if args.numbers:
        route["numbers"] = list(args.numbers)
    trunks = []
    for trunk_id in args.trunk_ids:
        if trunk_id in trunk_keys:
            trunks.append(trunk_keys[trunk_id])
        else:
            rewrite(f"trunk_ids names {trunk_id}, a trunk the file does not hold")
    if trunks:
        route["trunks"] = trunks
    if args.inbound_numbers:
        route["caller_numbers"] = list(args.inbound_numbers)
    if agent:
        route["agent"] = agent.agent_name
    if layer.format != "siphon-infra":  # a direct rule without agent: none (no siphon.route attribute either)
        route["metadata_format"] = layer.format
    rule = args.rule.model_dump(mode="json", exclude_defaults=True)
    rule["type"] = args.rule.type
    pin = rule.pop("pin", "") if rule["type"] == "individual" else ""
    if rule != default_rule(environment, key):
        route["rule"] = {**rule, "pin": pin} if pin else rule
    elif pin:
        route["pin"] = pin
    if args.hide_phone_number:
        route["hide_phone_number"] = True
    if layer.agent_config:
        route["agent_config"] = layer.agent_config
    if layer.context:
        route["context"] = layer.context
    attributes = dict(args.attributes)
    if layer.format == "siphon-infra" and attributes.get(ROUTE_ATTRIBUTE) == key:
        del attributes[ROUTE_ATTRIBUTE]  # the plan sets it for routes in siphon-infra's format
    if attributes:
        route["attributes"] = attributes
    room = {f: getattr(rc, f) for f in ("empty_timeout", "departure_timeout", "max_participants") if getattr(rc, f)}
    if room:
        route["room"] = room
    if args.krisp_enabled:
        route["krisp_enabled"] = True
    if args.media is not None:
        route["media"] = args.media.model_dump(mode="json", exclude_defaults=True)
    return route


def _routes(environment: str, messages: list[Any], out: Imported, trunk_keys: dict[str, str]) -> dict[str, Any]:
    routes: dict[str, Any] = {}
    keys = Keys(environment)
    found: list[tuple[str, Any, bool, DispatchRuleArgs, Layer]] = []  # (key wanted, message, shared, args, layer)
    for message, shared in _named(messages, DISPATCH_RULE, out):
        args = _valid(message, DISPATCH_RULE, out)
        if not isinstance(args, DispatchRuleArgs):
            continue
        agents = args.room_config.agents if args.room_config else []
        reason = ""
        if len(agents) > 1:
            reason = f"it dispatches {len(agents)} agents ({', '.join(a.agent_name for a in agents)}); a route one"
        elif not agents and args.rule.type != "direct":
            reason = "it dispatches no agent by name (LiveKit's default dispatch); a route names its agent"
        elif agents and not ECS_AGENT_NAME_RE.match(agents[0].agent_name):
            reason = (f"agent name {agents[0].agent_name!r} is not a stack agent name (1-32 lower-case letters, "
                      "digits and '-'), and renaming it changes which workers answer")  # fmt: skip
        if reason:
            out.findings.append(Finding(DISPATCH_RULE.label, args.name, DISPATCH_RULE.object_id(message), "left out",
                                        reason))  # fmt: skip
            continue
        layer = read_dispatch(agents[0].metadata if agents else "", args.metadata)
        ours = layer.route if layer.format == "siphon-infra" and STACK_KEY_RE.match(layer.route or "-") else ""
        found.append((ours, message, shared, args, layer))
    # siphon-infra's own route keys first, then as for trunks: a re-import hands out the same keys
    found.sort(key=lambda f: (not f[0], f[0], keys.priority(f[3].name), DISPATCH_RULE.object_id(f[1])))
    for ours, message, shared, args, layer in found:
        rule_id = DISPATCH_RULE.object_id(message)
        key = ours if ours and keys.claim(ours) else keys.key(args.name, "route")
        routes[key] = _route(environment, key, args, trunk_keys, message, out, layer)
        if shared:
            routes[key] = {"name": args.name, "adopt_id": rule_id, **routes[key]}
        out.ids.setdefault("inbound_routes", {})[key] = rule_id
        out.live[rule_id] = message
    return routes


def build(live: LiveProject, environment: str, url: str = "") -> Imported:
    """The stack file's document for everything ``live`` holds, with the findings."""
    out = Imported({"environment": environment})
    if url:
        out.doc["livekit"] = {"url": url}
    inbound = _trunks(environment, "inbound_trunks", INBOUND_TRUNK, live.inbound, out)
    outbound = _trunks(environment, "outbound_trunks", OUTBOUND_TRUNK, live.outbound, out)
    trunk_keys = {out.ids["inbound_trunks"][k]: k for k in inbound}
    routes = _routes(environment, live.rules, out, trunk_keys)
    agents = dict.fromkeys(r["agent"] for r in routes.values() if r.get("agent"))
    if inbound:
        out.doc["inbound_trunks"] = inbound
    if outbound:
        out.doc["outbound_trunks"] = outbound
    if agents:
        stanza: dict[str, Any] = {"local": {}}
        if environment != LOCAL_ENVIRONMENT:
            stanza = {"defaults": {}, "local": {}}
        out.doc["agents"] = {a: copy.deepcopy(stanza) for a in agents}
    if routes:
        out.doc["inbound_routes"] = routes
    return out
