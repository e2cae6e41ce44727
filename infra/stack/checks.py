"""Cross-checks on a whole stack file, run before any resource is declared (so preview fails, nothing is sent).

Each check mirrors a way a real deployment goes wrong: a route whose agent has no worker (a call
nobody answers), numbers LiveKit would match ambiguously, rules LiveKit would reject as conflicting
(both culprits named), unsecured inbound trunks outside `local`, and model specs the worker cannot
resolve, test models outside `local`, and providers whose credential an agent's ECS workers are not given; a SIP
header mapped to an attribute the worker reads as configuration (whoever sends the header would configure the agent),
and, outside `local`, a provider URL that is not https.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

from contract.metadata import (
    MODEL_KINDS,
    AgentConfig,
    AllowedOverrides,
    ModelKind,
    ModelSpec,
    ProviderSpec,
    entry_fields,
)
from contract.models import (
    RunProblem,
    SpecError,
    check_spec,
    layer_spec_problems,
    parameter_problems,
    parse_spec,
    run_problems,
    url_problems,
)
from contract.types import LOCAL_ENVIRONMENT as LOCAL
from contract.wire import HEADER_ATTRIBUTE_PREFIX, OVERRIDES_ATTRIBUTE, SIPHON_ATTRIBUTE_PREFIX
from infra.ecs.validation import IMAGE_RE
from infra.livekit.conflicts import rule_cells, trunk_cells
from infra.livekit.dispatch_rule import rule_priority
from infra.livekit.fields import object_name
from infra.stack.model import StackFile


def _specs(layer: AgentConfig, where: str) -> Iterator[tuple[str, str]]:
    for kind, field, reason in layer_spec_problems(layer):
        yield f"{where}.{field}", f"the worker cannot resolve this {kind} spec: {reason}"


def _agent_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Every route's agent is declared and has a worker."""
    routes = [("inbound_routes", k, r.agent) for k, r in stack.inbound_routes.items() if r.agent]  # direct: none
    routes += [("outbound_routes", k, r.agent) for k, r in stack.outbound_routes.items()]
    for section, key, agent_name in routes:
        agent = stack.agents.get(agent_name)
        if agent is None:
            known = ", ".join(sorted(stack.agents)) or "none declared"
            yield (
                f"{section}.{key}.agent",
                (f"no agent named {agent_name!r} (declared: {known}); calls routed here would reach no worker"),
            )
        elif not agent.has_worker:
            yield (
                f"{section}.{key}.agent",
                (
                    f"agent {agent_name!r} has no worker (set `ecs:` or `local:` under agents.{agent_name}); "
                    "calls routed here would reach no worker"
                ),
            )


def _trunk_reference_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Routes name existing trunks, and their numbers are served by them."""
    for key, route in stack.inbound_routes.items():
        for i, trunk in enumerate(route.trunks):
            if trunk not in stack.inbound_trunks:
                yield f"inbound_routes.{key}.trunks.{i}", f"no inbound trunk named {trunk!r}"
        trunks = stack.route_trunks[key]
        served = {n for t in trunks if t in stack.inbound_trunks for n in stack.inbound_trunks[t].numbers}
        for i, number in enumerate(route.numbers):
            if trunks and served and number not in served:
                yield (
                    f"inbound_routes.{key}.numbers.{i}",
                    (f"{number} is not a number of trunk(s) {', '.join(trunks)}: calls to it never reach this route"),
                )
        if route.numbers and not trunks:
            yield (
                f"inbound_routes.{key}.numbers",
                ("no inbound trunk serves these numbers: add them to a trunk's numbers or name trunks:"),
            )
    for key, out in stack.outbound_routes.items():
        out_trunk = stack.outbound_trunks.get(out.trunk)
        if out_trunk is None:
            yield f"outbound_routes.{key}.trunk", f"no outbound trunk named {out.trunk!r}"
            continue
        for i, number in enumerate(out.caller_ids):
            if number not in out_trunk.numbers:
                yield f"outbound_routes.{key}.caller_ids.{i}", f"{number} is not one of trunk {out.trunk!r}'s numbers"


def _trunk_conflicts(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Inbound trunks LiveKit would match ambiguously (``infra.livekit.conflicts.trunk_cells``)."""
    cells: dict[tuple[str, str], str] = {}
    for key, inbound in stack.inbound_trunks.items():
        for cell in trunk_cells(inbound.numbers, inbound.allowed_numbers):
            other = cells.setdefault(cell, key)
            if other != key:
                number = cell[0] or "<any number>"
                yield (
                    f"inbound_trunks.{key}.numbers",
                    (
                        f"conflicts with inbound trunk {other!r}: both serve {number} for the same callers; "
                        "LiveKit would reject it (separate them with allowed_numbers or merge the trunks)"
                    ),
                )
                break


def _rule_conflicts(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Dispatch rules LiveKit would reject as conflicting (``infra.livekit.conflicts.rule_cells``)."""
    keys: dict[tuple[str, str, str, str], str] = {}
    for key, route in stack.inbound_routes.items():
        for cell in rule_cells(route.pin_code, stack.route_trunks[key], route.caller_numbers, route.numbers):
            other = keys.setdefault(cell, key)
            if other != key:
                what = ", ".join(p for p in (cell[1] and f"trunk {cell[1]}", cell[3] or "any number") if p)
                yield (
                    f"inbound_routes.{key}",
                    (
                        f"conflicts with inbound route {other!r}: both match calls to {what} from the same callers; "
                        "LiveKit would reject the second rule (give them different numbers or caller_numbers)"
                    ),
                )
                break


_ANY = "\0any"  # a caller or called number no route names


def _pin_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """A PIN protects its route only if no open route answers the same calls: LiveKit ranks the PIN rule first and
    asks every caller for the PIN, and a caller who enters none (``#`` alone) reaches the open route
    (``infra.livekit.dispatch_rule.rule_priority``). Checked on every call a PIN route can match: each of its trunks
    (all, for a route naming none) x caller x called number, where the PIN route or another PIN route wins."""
    pins = [k for k, r in stack.inbound_routes.items() if r.pin_code]
    if not pins:
        return
    callers = [*sorted({n for r in stack.inbound_routes.values() for n in r.caller_numbers}), _ANY]
    called = [*sorted({n for r in stack.inbound_routes.values() for n in r.numbers}), _ANY]

    def matches(key: str, trunk: str, caller: str, number: str) -> bool:
        route = stack.inbound_routes[key]
        return ((not stack.route_trunks[key] or trunk in stack.route_trunks[key])
                and (not route.caller_numbers or caller in route.caller_numbers)
                and (not route.numbers or number in route.numbers))  # fmt: skip

    def rank(key: str) -> tuple[bool, int, str]:
        route = stack.inbound_routes[key]
        priority = rule_priority(route.rule.type if route.rule else "individual", route.pin_code,
                                 any_caller=not route.caller_numbers, any_number=not route.numbers)  # fmt: skip
        return not stack.route_trunks[key], priority, key  # a rule naming the trunk first; then LiveKit's rank

    reported: set[tuple[str, str]] = set()
    for key in pins:
        cells = product(stack.route_trunks[key] or list(stack.inbound_trunks),
                        stack.inbound_routes[key].caller_numbers or callers,
                        stack.inbound_routes[key].numbers or called)  # fmt: skip
        for trunk, caller, number in cells:
            matching = [k for k in stack.inbound_routes if matches(k, trunk, caller, number)]
            winner = min(matching, key=rank)
            open_routes = [k for k in matching if not stack.inbound_routes[k].pin_code]
            if not stack.inbound_routes[winner].pin_code or not open_routes:
                continue
            other = min(open_routes, key=rank)
            if (winner, other) in reported:
                continue
            reported.add((winner, other))
            number_part = f"to {number}" if number != _ANY else "to any number"
            what = " ".join(
                p for p in (number_part, f"from {caller}" if caller != _ANY else "", f"on trunk {trunk}") if p
            )
            message = (f"inbound route {other!r} answers the same calls ({what}) with no PIN: LiveKit asks every such "
                       f"caller for this PIN first, and one who presses # alone reaches {other!r}, so the PIN protects "
                       f"nothing; give this route its own number (or trunk), or a PIN to {other!r} too")  # fmt: skip
            yield f"inbound_routes.{winner}.pin", message


def _security_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Inbound trunks outside `local` are restricted (an allow-list that admits every address restricts nothing)."""
    if stack.environment != LOCAL:
        for key, inbound in stack.inbound_trunks.items():
            for i, address in enumerate(inbound.allowed_addresses):
                if address.endswith("/0") and not inbound.auth_username:
                    yield (
                        f"inbound_trunks.{key}.allowed_addresses.{i}",
                        f"{address} admits every address, so it restricts nothing: list your carrier's signalling "
                        "addresses or ranges (for example 198.51.100.0/24), or use auth_username + "
                        "auth_password_secret",
                    )
            if not (inbound.auth_username or inbound.allowed_addresses):
                yield (
                    f"inbound_trunks.{key}",
                    (
                        f"outside `{LOCAL}` an inbound trunk needs allowed_addresses or auth_username + "
                        "auth_password_secret (anyone could otherwise call in as your carrier)"
                    ),
                )


def _image_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Outside `local`, ECS tasks run an image pinned by digest (a tag can be moved to other code)."""
    if stack.environment == LOCAL:
        return
    for key, agent in stack.agents.items():
        m = IMAGE_RE.match(agent.ecs.image) if agent.ecs else None
        if agent.ecs and not (m and m.group("digest")):
            yield (
                f"agents.{key}.ecs.image",
                f"outside `{LOCAL}` pin the image by digest (<repository>@sha256:<digest>; `./dev image` prints it)",
            )


def _layers(stack: StackFile) -> Iterator[tuple[str, str, AgentConfig]]:
    """Every configuration layer of the file: ``(where, agent, layer)``: each agent's defaults, each route's
    ``agent_config``, each header-selected layer and each outbound route's ``agent_config``."""
    for key, agent in stack.agents.items():
        yield f"agents.{key}.defaults", key, agent.defaults
    for key, route in stack.inbound_routes.items():
        if not route.agent:
            continue  # a direct rule: no agent, no layer (the model refuses one)
        yield f"inbound_routes.{key}.agent_config", route.agent, route.agent_config
        for i, override in enumerate(route.header_overrides):
            for value, layer in override.values.items():
                yield f"inbound_routes.{key}.header_overrides.{i}.values.{value}", route.agent, layer
    for key, out in stack.outbound_routes.items():
        yield f"outbound_routes.{key}.agent_config", out.agent, out.agent_config


def _spec_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Model specs the worker can resolve."""
    for key, route in stack.inbound_routes.items():
        if route.header_overrides and not stack.route_trunks[key]:
            yield (
                f"inbound_routes.{key}.header_overrides.0",
                (
                    "header overrides need the route's trunks (headers reach the agent through a trunk's "
                    "headers_to_attributes): set numbers served by a trunk, or trunks:"
                ),
            )
    for where, _, layer in _layers(stack):
        yield from _specs(layer, where)


def _allowed(stack: StackFile) -> Iterator[tuple[str, str, AllowedOverrides]]:
    """Every route's ``allowed_overrides``: ``(where, agent, allowed)``."""
    routes = [("inbound_routes", k, r.agent, r.allowed_overrides) for k, r in stack.inbound_routes.items()]
    routes += [("outbound_routes", k, r.agent, r.allowed_overrides) for k, r in stack.outbound_routes.items()]
    for section, key, agent, allowed in routes:
        if allowed is not None:
            yield f"{section}.{key}.allowed_overrides", agent, allowed


def _spec_sites(stack: StackFile) -> Iterator[tuple[str, ModelKind, ModelSpec]]:
    """Every model spec the file declares, with the field it is written at (``<layer>.<kind>``, a fallback chain's
    entry at ``<layer>.<kind>.<i>``, or ``<route>.allowed_overrides.<kind>.<i>``) and its kind."""
    for where, _, layer in _layers(stack):
        for kind in MODEL_KINDS:
            if (value := getattr(layer, kind)) is not None:
                for field, spec in entry_fields(kind, value):
                    yield f"{where}.{field}", kind, spec
    for where, _, allowed in _allowed(stack):
        for kind in MODEL_KINDS:
            for i, spec in enumerate(allowed.specs(kind)):
                yield f"{where}.{kind}.{i}", kind, spec


def _allowed_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """The specs a route lets a caller choose are ones its agent's workers can run, like any other spec."""
    for where, agent_key, allowed in _allowed(stack):
        agent = stack.agents.get(agent_key)
        keys = agent.ecs.provider_key_secrets if agent and agent.ecs else None
        for kind in MODEL_KINDS:
            for i, spec in enumerate(allowed.specs(kind)):
                if reason := check_spec(kind, spec):
                    yield f"{where}.{kind}.{i}", f"the worker cannot resolve this {kind} spec: {reason}"
                    continue
                if agent is None or not agent.has_worker:
                    continue  # reported by _agent_problems
                layer = AgentConfig.model_validate({kind: spec})
                for problem in run_problems(layer, environment=stack.environment, credentials=keys):
                    yield f"{where}.{kind}.{i}", _run_message(stack, agent_key, problem)


def _parameter_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Every parameter a provider dict gives is one its plugin's constructor takes (read from the constructor's
    signature through the registry, ``contract.models.parameter_problems``): the worker builds the model with them."""
    for field, kind, spec in _spec_sites(stack):
        if not isinstance(spec, ProviderSpec):
            continue
        try:
            norm = parse_spec(kind, spec)
        except SpecError:
            continue  # reported by _spec_problems
        for param, why in parameter_problems(norm):
            yield f"{field}.{param}", why


def _url_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Outside `local`, a provider URL a layer declares is https: the deployment's key travels to it."""
    if stack.environment == LOCAL:
        return
    for field, _, spec in _spec_sites(stack):
        for param, why in url_problems(spec):
            yield f"{field}.{param}", f"outside `{LOCAL}` a provider URL {why}"


def _header_mapping_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """No trunk maps a SIP header to a ``siphon.`` attribute the worker reads (``siphon.overrides``, or any other but
    ``siphon.header.<header>``, whose values only select stack-declared layers): the header's sender would write it."""
    sections = (("inbound_trunks", stack.inbound_trunks), ("outbound_trunks", stack.outbound_trunks))
    for section, trunks in sections:
        for key, trunk in trunks.items():
            for header, attribute in trunk.headers_to_attributes.items():
                if attribute.startswith(SIPHON_ATTRIBUTE_PREFIX) and not attribute.startswith(HEADER_ATTRIBUTE_PREFIX):
                    what = ("the caller's configuration layer" if attribute == OVERRIDES_ATTRIBUTE
                            else "an attribute of the worker's own namespace")  # fmt: skip
                    yield (
                        f"{section}.{key}.headers_to_attributes.{header}",
                        f"maps SIP header {header} to {attribute}, {what}: whoever sends the header would write it. "
                        "To vary the agent by header, declare the layers on the route: header_overrides: "
                        f"[{{header: {header}, values: {{<value>: {{...}}}}}}] (and allowed_overrides for what a "
                        "caller may choose); to pass the header on as data, map it outside siphon.* "
                        f"(e.g. {header}: customer.{header.lower().removeprefix('x-')})",
                    )


def _credential_key(stack: StackFile, variable: str, provider: str) -> str:
    """The config key to hold ``variable``: the one another agent already maps it to, else ``<provider>ApiKey``."""
    for agent in stack.agents.values():
        if agent.ecs and variable in agent.ecs.provider_key_secrets:
            return agent.ecs.provider_key_secrets[variable]
    return f"{provider}ApiKey"


def _model_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """The models each worker runs are the ones the file names: outside `local`, every agent's defaults name all
    three kinds and no layer names an offline test model; an ECS agent's workers are given the credential of
    every provider its layers name (the worker would otherwise refuse to start, or refuse those calls)."""
    for where, agent_key, layer in _layers(stack):
        agent = stack.agents.get(agent_key)
        if agent is None or not agent.has_worker:
            continue  # reported by _agent_problems
        keys = agent.ecs.provider_key_secrets if agent.ecs else None
        defaults = where == f"agents.{agent_key}.defaults"
        for problem in run_problems(layer, environment=stack.environment, credentials=keys, defaults=defaults):
            yield f"{where}.{problem.field}", _run_message(stack, agent_key, problem)


def _run_message(stack: StackFile, agent_key: str, problem: RunProblem) -> str:
    """What keeps ``agent_key``'s workers from running a model as declared, and the line to add for a key."""
    variable = problem.missing_credential or ""
    config_key = _credential_key(stack, variable, problem.spec.provider if problem.spec else "")
    to_add = (f"add `{variable}: {config_key}` under agents.{agent_key}.ecs.provider_key_secrets, and "
              f"`pulumi config set --secret {config_key} <key> --stack {stack.environment}`")  # fmt: skip
    return problem.message(to_add)


def _name_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """LiveKit names are unique per kind: two entries with one name would adopt the same object."""
    sections = (("inbound_trunks", stack.inbound_trunks), ("outbound_trunks", stack.outbound_trunks),
                ("inbound_routes", stack.inbound_routes))  # fmt: skip
    for section, entries in sections:
        seen: dict[str, str] = {}
        for key, entry in entries.items():
            name = object_name(stack.environment, key, entry.name)
            other = seen.setdefault(name, key)
            if other != key and not (entry.adopt_id and entries[other].adopt_id):  # adopted by id: names may repeat
                yield f"{section}.{key}.name", f"LiveKit name {name!r} is also {section}.{other}'s: names are unique"


def _worker_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Every agent has a worker that runs in the stack's environment: outside `local` only ECS runs one (a ``local:``
    stanza is what ``siphon-infra import`` writes for the user to complete); an ECS service with no task and no
    autoscaling answers none of the calls its routes send."""
    routes = [(k, r.agent) for k, r in stack.inbound_routes.items() if r.agent]
    routes += [(k, r.agent) for k, r in stack.outbound_routes.items()]
    routed = {agent_key for _, agent_key in routes}
    for key, agent in stack.agents.items():
        if not agent.has_worker and key not in routed:  # a routed one is reported at its routes (_agent_problems)
            message = ("no worker: add `local: {}` (a worker process of `./dev local`) or `ecs: {image: "
                       "<repository>@sha256:<digest>}` under it, or remove the agent")  # fmt: skip
            yield f"agents.{key}", message
        elif not stack.is_local and agent.ecs is None:
            where = f"agents.{key}.local" if agent.local is not None else f"agents.{key}"
            yield where, (f"no worker runs in `{stack.environment}`: a `local:` worker runs only in `{LOCAL}`; add "
                          f"`ecs: {{image: <repository>@sha256:<digest>}}` under agents.{key} (`./dev image` builds "
                          "the image and prints its digest)")  # fmt: skip
        elif agent.ecs is not None and agent.ecs.desired_count == 0 and agent.ecs.autoscaling is None:
            sending = sorted(route for route, agent_key in routes if agent_key == key)
            if not sending or (stack.is_local and agent.local is not None):
                continue  # no calls for it, or the local worker processes answer them
            message = (f"0 tasks and no autoscaling, yet route(s) {', '.join(sending)} send calls to this agent: no "
                       "worker would answer them; set desired_count: 1 (or more), or autoscaling: {min_count: 1, "
                       "max_count: <n>}")  # fmt: skip
            yield f"agents.{key}.ecs.desired_count", message


def _adopt_problems(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Each LiveKit object is adopted by one entry: two entries with one ``adopt_id`` would overwrite each other's
    object (trunk ids, inbound and outbound alike, start with ST_; dispatch rule ids with SDR_)."""
    seen: dict[str, str] = {}
    entries = [("inbound_trunks", k, e.adopt_id) for k, e in stack.inbound_trunks.items()]
    entries += [("outbound_trunks", k, e.adopt_id) for k, e in stack.outbound_trunks.items()]
    entries += [("inbound_routes", k, e.adopt_id) for k, e in stack.inbound_routes.items()]
    for section, key, adopt_id in entries:
        if not adopt_id:
            continue
        other = seen.setdefault(adopt_id, f"{section}.{key}")
        if other != f"{section}.{key}":
            yield (
                f"{section}.{key}.adopt_id",
                (
                    f"{adopt_id} is also adopted by {other}: one LiveKit object, two entries, and each `up` would "
                    "overwrite the other's settings; keep one entry for it (remove the other, or drop its adopt_id to "
                    "create a new object)"
                ),
            )


CHECKS = (_agent_problems, _worker_problems, _adopt_problems, _name_problems, _trunk_reference_problems,
          _trunk_conflicts, _rule_conflicts, _pin_problems, _security_problems, _image_problems, _spec_problems,
          _model_problems, _allowed_problems, _parameter_problems, _url_problems, _header_mapping_problems)  # fmt: skip


def cross_check(stack: StackFile) -> Iterator[tuple[str, str]]:
    """Every cross-entry problem of a parsed stack file: ``(field, message)``."""
    for check in CHECKS:
        yield from check(stack)
