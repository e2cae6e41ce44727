"""Generated stack files: `validate` never raises, and what it accepts the resources' own `check` accepts.

Hypothesis builds stack files from the stack schema (valid ones, and ones with a single fault: a wrong type,
a bad number, an unknown or missing field, a value too long, a missing reference, a duplicate number, a bad
model spec, a cut file), dumps each as YAML text (so the line numbers are real) and runs the step
``siphon-infra validate`` runs (parse, then ``compile_stack``). Every refusal must be a list of
``file:line: field: message`` problems; every acceptance must compile to arguments that the LiveKit and ECS
providers' ``check`` accept, given as the Pulumi program gives them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contract.deployment import max_calls_for
from infra import cli
from infra.ecs.provider import AgentWorkerProvider
from infra.livekit.provider import DispatchRuleProvider, InboundTrunkProvider, OutboundTrunkProvider
from infra.stack.errors import StackFileError
from infra.stack.load import StackConfig, parse
from infra.stack.model import Agent, InboundRoute, OutboundRoute, StackFile, StackInboundTrunk, StackOutboundTrunk
from infra.stack.plan import compile_stack
from infra.stack.types import Plan

FILE = "stacks/generated.yaml"
EXAMPLES = 500
PROBLEM_RE = re.compile(rf"^{re.escape(FILE)}:(\d+): (\S[^\n]*?): (\S[^\n]*)$", re.DOTALL)

NUMBERS = [f"+1555010{n:04d}" for n in range(100, 130)]
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/siphon-worker@sha256:" + "ab" * 32
LOCAL_MODELS = {"llm": "local/scripted", "stt": "local/silent", "tts": "local/espeak-ng"}
CLOUD_MODELS = {"llm": "openai/gpt-4.1-mini", "stt": "deepgram/nova-3:en", "tts": "cartesia/sonic-2"}
CLOUD_KEYS = {"OPENAI_API_KEY": "openaiApiKey", "DEEPGRAM_API_KEY": "deepgramApiKey",
              "CARTESIA_API_KEY": "cartesiaApiKey"}  # fmt: skip
HEADERS = ["X-Customer-Tier", "X-Language", "X-Region"]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same files on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- valid stack files ----------------------------------------------------------------------------------


def _layer(draw: st.DrawFn, local: bool) -> dict[str, Any]:
    models = LOCAL_MODELS if local else CLOUD_MODELS
    layer: dict[str, Any] = {k: v for k, v in models.items() if draw(st.booleans())}
    if draw(st.booleans()):
        layer["greeting_instructions"] = draw(st.sampled_from(["Hello.", "Bonjour !", "Welcome back."]))
    if draw(st.booleans()):
        layer["send_greeting"] = draw(st.booleans())
    return layer


@st.composite
def stack_files(draw: st.DrawFn) -> dict[str, Any]:
    """A stack file every check accepts: trunks with disjoint numbers, agents with workers, routes on them."""
    environment = draw(st.sampled_from(["local", "dev", "prod"]))
    local = environment == "local"
    pool = list(draw(st.permutations(NUMBERS)))
    doc: dict[str, Any] = {"environment": environment}
    if draw(st.booleans()):
        doc["protect"] = draw(st.booleans())
    if draw(st.booleans()):
        doc["livekit"] = {"url": "wss://example.livekit.cloud"}
    if draw(st.booleans()):
        doc["aws"] = {"region": "eu-west-1", "subnets": ["subnet-0123456789abcdef0"], "create_cluster": True}

    agents: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        agent: dict[str, Any] = {"defaults": LOCAL_MODELS | _layer(draw, True) if local else dict(CLOUD_MODELS)}
        where = draw(st.sampled_from(["ecs", "local", "both"] if local else ["ecs", "both"]))  # local: only in `local`
        cpu, memory = draw(st.sampled_from([(256, 512), (1024, 2048), (2048, 4096)]))
        if where in ("ecs", "both"):
            agent["ecs"] = {"image": IMAGE, "cpu": cpu, "memory": memory}
            if not local:
                agent["ecs"]["provider_key_secrets"] = dict(CLOUD_KEYS)
        if where in ("local", "both"):
            agent["local"] = {"processes": draw(st.integers(1, 3))} if draw(st.booleans()) else {}
        if "ecs" in agent and draw(st.booleans()):
            agent["ecs"].update(draw(st.sampled_from([
                {"autoscaling": {"min_count": 1, "max_count": 4}, "desired_count": 2},
                {"extra_env": {"LOG_LEVEL": "debug"}, "tags": {"team": "voice"}, "service_name": f"svc-{i}"},
                {"health_check": None, "call_protection_minutes": None, "deployment": {"min_healthy_percent": 50}},
                {"ecr_repository": {"scan_on_push": False}, "cpu_architecture": "ARM64", "log_retention_days": 7},
            ])))  # fmt: skip
        if draw(st.booleans()):
            agent["max_calls"] = draw(st.integers(1, max_calls_for(cpu, memory) if "ecs" in agent else 20))
        agents[f"agent-{i}"] = agent
    doc["agents"] = agents

    trunks: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        trunk: dict[str, Any] = {"numbers": [pool.pop() for _ in range(draw(st.integers(1, 3)))]}
        trunk["allowed_addresses"] = [draw(st.sampled_from(["203.0.113.0/24", "198.51.100.7", "sip.example.com"]))]
        if draw(st.booleans()):
            trunk["auth_username"], trunk["auth_password_secret"] = f"user{i}", f"trunk{i}Password"
        if draw(st.booleans()):
            trunk["headers_to_attributes"] = {"X-Customer-Tier": "customer.tier"}
        if draw(st.booleans()):
            trunk["ringing_timeout"] = draw(st.integers(1, 60))
        if draw(st.booleans()):
            trunk.update(draw(st.sampled_from([
                {"allowed_numbers": ["+14155550100"], "krisp_enabled": True, "include_headers": "x_headers"},
                {"headers": {"X-Source": "siphon"}, "max_call_duration": 3600, "auth_realm": "example"},
                {"media": {"encryption": "allow", "codecs": [{"name": "PCMU"}, {"name": "opus", "rate": 48000}]}},
            ])))  # fmt: skip
        trunks[f"in-{i}"] = trunk
    doc["inbound_trunks"] = trunks

    routes: dict[str, Any] = {}
    for key, trunk in trunks.items():
        route: dict[str, Any] = {"numbers": list(trunk["numbers"]), "agent": draw(st.sampled_from(sorted(agents)))}
        if draw(st.booleans()):
            route["trunks"] = [key]
        route_format = draw(st.sampled_from(["siphon-infra", "siphon-infra", "siphon", "none"]))
        if route_format != "siphon-infra":
            route["metadata_format"] = route_format
        if route_format != "none":
            if draw(st.booleans()):
                route["agent_config"] = _layer(draw, local)
            if draw(st.booleans()):
                route["context"] = {"line": key}
        if route_format == "siphon-infra" and draw(st.booleans()):
            route["header_overrides"] = [
                {"header": header, "values": {"gold": _layer(draw, local), "fr": {"greeting_instructions": "Salut"}}}
                for header in draw(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=2, unique=True))
            ]
        rule = draw(st.sampled_from(["default", "pin", "individual", "callee"]))
        if rule == "pin":
            route["pin"] = "1234"
        elif rule != "default":
            route["rule"] = {"type": rule, "pin": draw(st.sampled_from(["", "42"]))}
        if draw(st.booleans()):
            route["caller_numbers"] = ["+442079460018"]
        if draw(st.booleans()):
            route["room"] = {"empty_timeout": draw(st.integers(0, 600)), "max_participants": 3}
        if draw(st.booleans()):
            route["attributes"] = {"team": key}
        if draw(st.booleans()):
            route.update(draw(st.sampled_from([{"hide_phone_number": True}, {"krisp_enabled": True},
                                               {"media": {"media_timeout": 30}}, {"name": f"custom-{key}"}])))  # fmt: skip
        routes[f"route-{key}"] = route
    first = routes[f"route-{sorted(trunks)[0]}"]
    pinned = first.get("pin") or first.get("rule", {}).get("pin")  # an open lobby beside it would bypass the PIN
    if not pinned and draw(st.booleans()):  # a direct rule: one room, no agent
        routes["lobby"] = {"rule": {"type": "direct", "room_name": "lobby"}, "trunks": [sorted(trunks)[0]],
                           "caller_numbers": ["+14155550199"]}  # fmt: skip
    doc["inbound_routes"] = routes

    if draw(st.booleans()):
        numbers = [pool.pop() for _ in range(draw(st.integers(1, 2)))]
        carrier = {"address": "sip.carrier.example:5060", "numbers": numbers, "auth_username": "out",
                   "auth_password_secret": "carrierPassword"}  # fmt: skip
        if draw(st.booleans()):
            carrier.update({"transport": "tls", "destination_country": "us", "from_host": "calls.example.com"})
        doc["outbound_trunks"] = {"carrier": carrier}
        outbound: dict[str, Any] = {"trunk": "carrier", "agent": draw(st.sampled_from(sorted(agents)))}
        if draw(st.booleans()):
            outbound["caller_ids"] = numbers[:1]
        if draw(st.booleans()):
            outbound["ring_timeout"] = draw(st.integers(1, 120))
        if draw(st.booleans()):
            outbound["agent_config"] = _layer(draw, local)
        doc["outbound_routes"] = {"reminders": outbound}
    return doc


# -- single faults --------------------------------------------------------------------------------------

Where = tuple[Any, ...]


def _nodes(node: Any, path: Where = ()) -> list[tuple[Where, Any]]:
    """Every (path, value) of the document, containers included."""
    out = [(path, node)]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out += _nodes(value, (*path, key))
    return out


def _replace(doc: dict, path: Where, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _delete(doc: dict, path: Where) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


def _rename_key(doc: dict, path: Where, new: str) -> None:
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[new] = parent.pop(path[-1])


# Field names from the schema, for unknown-field faults that look like real ones.
SCHEMA_FIELDS = sorted({name for model in (StackFile, StackInboundTrunk, StackOutboundTrunk, Agent, InboundRoute,
                                           OutboundRoute) for name in model.model_fields})  # fmt: skip
OTHER_TYPES = st.sampled_from([0, -1, 3.5, True, None, "text", [], ["x"], {}, {"a": 1}, [{"b": None}]])
BAD_NUMBERS = st.sampled_from(["555-0100", "+0123", "+4402079460018", "+1", "015550100100", "+1555abc0100", "", "+"])
BAD_SPECS = st.sampled_from([
    "nope/x", "", " ", "a b", "local/scripted", "openai/gpt-4.1-mini", "elevenlabs/eleven_turbo_v2_5", 42, [],
    {"provider": "openai", "api_key": "x"}, {"model": "x"}, {"provider": ""}, {"provider": "openai", "p": {"x": 1}},
    {"provider": "openai", **{f"p{i}": i for i in range(40)}},
])  # fmt: skip
LONG = st.sampled_from([33, 65, 115, 129, 257, 1025, 8001, 17000, 70000]).map(lambda n: "x" * n)
ODD_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def faulty_stack_files(draw: st.DrawFn) -> str:
    """A valid stack file with one fault (or none), as YAML text."""
    doc = draw(stack_files())
    nodes = [(p, v) for p, v in _nodes(doc) if p]
    leaves = [(p, v) for p, v in nodes if not isinstance(v, dict | list)]
    fault = draw(st.sampled_from(["none", "type", "number", "unknown", "long", "long-key", "text", "reference",
                                  "duplicate", "spec", "delete", "header", "cut", "empty"]))  # fmt: skip
    if fault == "type":
        path, _ = draw(st.sampled_from(nodes))
        _replace(doc, path, draw(OTHER_TYPES))
    elif fault == "number":
        numbered = [p for p, v in leaves if isinstance(v, str) and v.startswith("+")]
        if numbered:
            _replace(doc, draw(st.sampled_from(numbered)), draw(BAD_NUMBERS))
    elif fault == "unknown":
        mappings = [(p, v) for p, v in [((), doc), *nodes] if isinstance(v, dict)]
        path, mapping = draw(st.sampled_from(mappings))
        mapping[draw(st.sampled_from([*SCHEMA_FIELDS, "numbrs", "agnet", "routes", "settings"]))] = draw(OTHER_TYPES)
    elif fault in ("long", "text"):
        strings = [p for p, v in leaves if isinstance(v, str)]
        if strings:
            _replace(doc, draw(st.sampled_from(strings)), draw(LONG if fault == "long" else ODD_TEXT))
    elif fault == "long-key":
        keyed = [p for p, _ in nodes if isinstance(p[-1], str) and len(p) > 1]
        _rename_key(doc, draw(st.sampled_from(keyed)), draw(LONG | ODD_TEXT))
    elif fault == "reference":
        refs = [p for p, _ in leaves if p[-1] in ("agent", "trunk") or (len(p) > 1 and p[-2] == "trunks")]
        if refs:
            _replace(doc, draw(st.sampled_from(refs)), draw(st.sampled_from(["ghost", "in-9", "carrier2", ""])))
    elif fault == "duplicate":
        lists = [(p, v) for p, v in nodes if isinstance(v, list) and v]
        items, target = (draw(st.sampled_from(lists))[1] for _ in range(2))
        target.append(copy.deepcopy(items[0]))  # a number, trunk, header override... listed twice or elsewhere
    elif fault == "spec":
        layers = [p for p, v in nodes if isinstance(v, dict) and (p[-1] in ("defaults", "agent_config")
                                                                   or (len(p) > 1 and p[-2] == "values"))]  # fmt: skip
        _replace(doc, (*draw(st.sampled_from(layers)), draw(st.sampled_from(["llm", "stt", "tts"]))), draw(BAD_SPECS))
    elif fault == "delete":
        _delete(doc, draw(st.sampled_from(nodes))[0])
    elif fault == "header":
        route = draw(st.sampled_from(sorted(doc["inbound_routes"])))
        header = draw(st.sampled_from(["", "X-" + "h" * 113, "X-" + "h" * 300, "Contact", "X Bad", "x-customer-tier"]))
        values = draw(st.sampled_from([{"": {}}, {"v" * 257: {}}, {"gold": {}}, {"ok": {"llm": "nope/x"}}]))
        doc["inbound_routes"][route]["header_overrides"] = [{"header": header, "values": values}]
        doc["inbound_routes"][route].pop("metadata_format", None)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200)
    if fault == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif fault == "empty":
        text = draw(st.sampled_from(["", "~\n", "[]\n", "42\n", "environment: [local\n", "environment: {a: 1}\n"]))
    return text


# -- the properties -------------------------------------------------------------------------------------


def _validate(text: str) -> Plan | list:
    """What `siphon-infra validate` runs: the plan, or the problems it prints."""
    try:
        stack, lines = parse(text, FILE)
        return compile_stack(stack, FILE, lines, StackConfig())  # secret references unchecked (as if all set)
    except StackFileError as e:
        return e.problems


def _assert_resources_accept(plan: Plan) -> None:
    """Each resource's provider accepts the arguments the program would give it (secrets and ids as values)."""
    checks: list[tuple[Any, dict[str, Any]]] = []
    for trunk in plan.inbound_trunks.values():
        checks.append((InboundTrunkProvider(), trunk.args.model_dump(exclude_defaults=True)))
    for trunk in plan.outbound_trunks.values():
        checks.append((OutboundTrunkProvider(), trunk.args.model_dump(exclude_defaults=True)))
    for route in plan.inbound_routes.values():
        props = route.rule.model_dump(exclude_defaults=True)
        props["trunk_ids"] = [f"ST_{key.replace('-', '')}" for key in route.trunks]
        checks.append((DispatchRuleProvider(), props))
    for worker in plan.workers.values():
        props = {**worker.args.public_fields(), "livekit_api_key": "k", "livekit_api_secret": "s",
                 "provider_keys": {env: "value" for env in worker.provider_key_secrets}}  # fmt: skip
        checks.append((AgentWorkerProvider(), props))
    for provider, props in checks:
        result = provider.check({}, props)
        assert not result.failures, [(f.property, f.reason) for f in result.failures]


def _assert_problems(text: str, problems: list) -> None:
    assert problems, "refused without a problem"
    lines = max(1, len(text.splitlines()))
    for problem in problems:
        shown = str(problem)
        assert problem.file == FILE and problem.line is not None and 1 <= problem.line <= lines + 1, shown
        if problem.field:
            assert PROBLEM_RE.match(shown), shown
        else:  # only the document itself may have no field: not YAML, or not a mapping
            assert "not valid YAML" in problem.message or "YAML mapping" in problem.message, shown


CONFIG_FILES = [None, b"", b"config: {}\n", b"- a\n", b"config: [x]\n", b"config: {a: \xff}\n", b"config: {: 1\n",
                b"config:\n  siphon:trunk0Password:\n    secure: v1:AAAA\n"]  # fmt: skip


@settings(SETTINGS, max_examples=100)
@given(faulty_stack_files(), st.sampled_from(CONFIG_FILES), st.sampled_from([None, b"\xff", b"\x00", b"\r\n"]))
def test_the_validate_command_prints_ok_or_each_problem_on_its_line_and_exits_0_or_1(text, config, corrupt):
    """The command itself, on files: a stack file (maybe with a byte that is not UTF-8 or YAML) beside a Pulumi
    config file (maybe missing or broken)."""
    data = text.encode()
    if corrupt:
        data = data[: len(data) // 2] + corrupt + data[len(data) // 2 :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.yaml"
        path.write_bytes(data)
        if config is not None:
            (Path(folder) / "Pulumi.generated.yaml").write_bytes(config)
            (Path(folder) / "Pulumi.local.yaml").write_bytes(config)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["validate", str(path)])
    head, *problems = out.getvalue().splitlines()
    assert (code, head.split(": ", 1)[0]) in ((0, str(path)), (1, str(path))), out.getvalue()
    assert head.endswith(" agents)") if code == 0 else re.search(r": INVALID \(\d+ problems?\)$", head), head
    assert all(re.match(rf"^  {re.escape(folder)}/(Pulumi\.)?\w+\.yaml(:\d+)?: \S", p) for p in problems), problems


@SETTINGS
@given(stack_files())
def test_generated_valid_stack_files_compile_to_arguments_every_resource_accepts(doc):
    text = yaml.safe_dump(doc, sort_keys=False)
    result = _validate(text)
    assert isinstance(result, Plan), "\n".join(map(str, result))
    _assert_resources_accept(result)


@SETTINGS
@given(faulty_stack_files())
def test_validate_never_raises_and_what_it_accepts_every_resource_accepts(text):
    result = _validate(text)
    event("accepted" if isinstance(result, Plan) else "refused")
    if isinstance(result, Plan):
        _assert_resources_accept(result)
    else:
        _assert_problems(text, result)
