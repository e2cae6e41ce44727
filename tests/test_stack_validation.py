"""Invalid or hostile stack files are rejected offline with the file, line and field, before any call."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import cli
from infra.stack.load import StackFileError, parse
from infra.stack.plan import StackConfig, compile_stack

STACKS = Path(__file__).parents[1] / "stacks"
BASE: dict[str, Any] = yaml.safe_load((STACKS / "local.yaml").read_text())
# The committed config of `local` (its keys only: nothing is decrypted), used for secret references.
CONFIG = StackConfig.read(STACKS / "local.yaml", "local")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


_DELETE = object()

# (id, mutations, expected field path, words in the message)
CASES: list[tuple[str, list[Callable[[dict], None]], str, str]] = [
    ("no-environment", [_set("environment", _DELETE)], "environment", "Field required"),
    ("bad-environment", [_set("environment", "Prod!")], "environment", "not a valid environment name"),
    ("unknown-top-key", [_set("routes", {})], "routes", "unknown field"),
    ("typo-in-trunk", [_set("inbound_trunks.main.numbrs", ["+15550100100"])], "inbound_trunks.main.numbrs", "unknown field"),
    ("number-not-e164", [_set("inbound_trunks.main.numbers", ["555-0100"])], "inbound_trunks.main.numbers.0", "E.164 form"),
    ("plain-password", [_set("inbound_trunks.main.auth_username", "u"), _set("inbound_trunks.main.auth_password", "hunter2")],
     "inbound_trunks.main.auth_password", "must not be written in the stack file"),
    ("user-without-secret", [_set("inbound_trunks.main.auth_username", "u")], "inbound_trunks.main", "auth_password_secret"),
    ("bad-header", [_set("inbound_trunks.main.headers", {"Call-ID": "x"})], "inbound_trunks.main.headers", "managed by the SIP stack"),
    ("bad-address", [_set("inbound_trunks.main.allowed_addresses", ["300.1.1.1"])], "inbound_trunks.main.allowed_addresses.0", "not an IP"),
    ("outbound-sip-uri", [_set("outbound_trunks.carrier.address", "sip:carrier@example.com")], "outbound_trunks.carrier.address", "SIP URI"),
    ("outbound-no-numbers", [_set("outbound_trunks.carrier.numbers", [])], "outbound_trunks.carrier", "caller-ID"),
    ("bad-trunk-key", [lambda d: d["inbound_trunks"].update({"Main Trunk": {"numbers": ["+15550100999"]}})],
     "inbound_trunks.Main Trunk", "lower-case"),
    ("route-unknown-agent", [_set("inbound_routes.support.agent", "suport-agent")], "inbound_routes.support.agent", "no agent named 'suport-agent'"),
    ("agent-without-worker", [_set("agents.support-agent.local", _DELETE), _set("agents.support-agent.ecs", _DELETE)], "inbound_routes.support.agent", "has no worker"),
    ("outbound-unknown-agent", [_set("outbound_routes.reminders.agent", "nobody")], "outbound_routes.reminders.agent", "no agent named"),
    ("route-unknown-trunk", [_set("inbound_routes.support.trunks", ["missing"])], "inbound_routes.support.trunks.0", "no inbound trunk named"),
    ("route-number-not-on-trunk", [_set("inbound_routes.support.numbers", ["+15550100999"])], "inbound_routes.support.numbers", "no inbound trunk serves"),
    ("route-number-not-on-named-trunk", [_set("inbound_routes.support.trunks", ["main"]), _set("inbound_routes.support.numbers", ["+15550100999"])],
     "inbound_routes.support.numbers.0", "never reach this route"),
    ("outbound-unknown-trunk", [_set("outbound_routes.reminders.trunk", "nope")], "outbound_routes.reminders.trunk", "no outbound trunk named"),
    ("caller-id-not-on-trunk", [_set("outbound_routes.reminders.caller_ids", ["+15550100299"])], "outbound_routes.reminders.caller_ids.0", "not one of trunk"),
    ("duplicate-trunk-number", [lambda d: d["inbound_trunks"].update({"backup": {"numbers": ["+15550100100"]}})],
     "inbound_trunks.backup.numbers", "conflicts with inbound trunk 'main'"),
    ("conflicting-routes", [_set("inbound_routes.sales.numbers", ["+15550100100"])], "inbound_routes.sales", "conflicts with inbound route 'support'"),
    ("two-wildcard-routes", [_set("inbound_routes.support.numbers", []), _set("inbound_routes.sales.numbers", []),
                             _set("inbound_routes.support.trunks", ["main"]), _set("inbound_routes.sales.trunks", ["main"])],
     "inbound_routes.sales", "conflicts with inbound route 'support'"),
    ("unresolvable-llm", [_set("inbound_routes.sales.agent_config.llm", "skynet/t-800")], "inbound_routes.sales.agent_config.llm", "cannot resolve"),
    ("unresolvable-default-tts", [_set("agents.sales-agent.defaults.tts", {"provider": "nosuchvoice"})],
     "agents.sales-agent.defaults.tts", "cannot resolve"),
    ("credential-in-provider-dict", [_set("agents.sales-agent.defaults.llm", {"provider": "openai", "api_key": "sk-123"})],
     "agents.sales-agent.defaults.llm", "looks like a credential"),
    ("unresolvable-header-override", [_set("inbound_routes.support.header_overrides.0.values.gold.llm", "nope/x")],
     "inbound_routes.support.header_overrides.0.values.gold.llm", "cannot resolve"),
    ("header-override-bad-header", [_set("inbound_routes.support.header_overrides.0.header", "Contact")],
     "inbound_routes.support.header_overrides.0.header", "managed by the SIP stack"),
    ("header-override-without-trunks", [_set("inbound_routes.sales.numbers", []), _set("inbound_routes.sales.caller_numbers", ["+14155550000"])],
     "inbound_routes.sales.header_overrides.0", "need the route's trunks"),
    ("unknown-agent-config-key", [_set("inbound_routes.sales.agent_config.system_prompt", "hi")],
     "inbound_routes.sales.agent_config.system_prompt", "unknown field"),
    ("direct-rule-with-agent", [_set("inbound_routes.sales.rule", {"type": "direct", "room_name": "lobby"})],
     "inbound_routes.sales", "reuses one room"),
    ("bad-pin", [_set("inbound_routes.sales.pin", "12ab")], "inbound_routes.sales.pin", "1 to 16 digits"),
    ("unsecured-trunk-outside-local", [_set("environment", "dev"), _set("inbound_trunks.main.allowed_addresses", [])],
     "inbound_trunks.main", "needs allowed_addresses or auth_username"),
    ("huge-context", [_set("inbound_routes.sales.context", {"blob": "x" * 20000})], "inbound_routes.sales.context", "too large"),
    ("wrong-type-numbers", [_set("inbound_trunks.main.numbers", "+15550100100")], "inbound_trunks.main.numbers", "valid list"),
    ("no-calls-per-worker", [_set("agents.support-agent.max_calls", 0)], "agents.support-agent.max_calls", "greater than or equal to 1"),
    ("too-many-calls-per-worker", [_set("agents.support-agent.max_calls", 5000)], "agents.support-agent.max_calls", "less than or equal to 200"),
    ("negative-timeout", [_set("inbound_routes.sales.room", {"empty_timeout": -5})], "inbound_routes.sales.room.empty_timeout", "greater than or equal to 0"),
]  # fmt: skip


def _problems(doc: dict) -> list:
    """What `siphon-infra validate` and the Pulumi program report: parse, then the shared compile step."""
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        stack, lines = parse(text, "stacks/case.yaml")
        compile_stack(stack, "stacks/case.yaml", lines, CONFIG)
    except StackFileError as e:
        return e.problems
    return []


def test_the_base_stack_file_is_valid():
    assert _problems(copy.deepcopy(BASE)) == []


@pytest.mark.parametrize(("mutations", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_stack_file_is_rejected_naming_the_field(mutations, field, words):
    doc = copy.deepcopy(BASE)
    for mutate in mutations:
        mutate(doc)
    problems = _problems(doc)
    assert problems, "accepted an invalid stack file"
    text = "\n".join(str(p) for p in problems)
    assert any(p.field == field or p.field.startswith(field + ".") for p in problems), text
    assert words in text
    assert all(p.file == "stacks/case.yaml" and p.line for p in problems), text


RAW_CASES = [
    ("not-yaml", "environment: local\ninbound_trunks: [unclosed\n", 3, "not valid YAML"),
    ("not-a-mapping", "- just\n- a list\n", 1, "a stack file is a YAML mapping"),
    ("line-of-field", "environment: local\nagents:\n  a:\n    defaults:\n      llm: 42\n", 5, "agents.a.defaults.llm"),
    (
        "yaml-bomb-alias",
        "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\nenvironment: local\n",
        1,
        "unknown field",
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_raw_stack_files_report_the_line(text, line, words):
    with pytest.raises(StackFileError) as err:
        parse(text, "stacks/raw.yaml")
    assert any(p.line == line for p in err.value.problems), str(err.value)
    assert words in str(err.value)


def test_cli_validate_reports_problems_and_exit_code(tmp_path, capsys):
    bad = copy.deepcopy(BASE)
    bad["inbound_routes"]["support"]["agent"] = "ghost"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out
    assert "inbound_routes.support.agent" in out
    assert "ghost" in out
    assert cli.main(["validate"]) == 0, "every committed stack file is valid"


def test_cli_routes_prints_table_and_diagram(capsys):
    assert cli.main(["routes", "local", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "| inbound   | +15550100100 | support" in out
    assert "flowchart LR" in out
    assert "rule support" in out


def test_an_agents_call_capacity_is_declared_or_derived_from_its_ecs_size_and_reaches_its_workers():
    from worker.config import MAX_JOBS_ENV

    stack, _ = parse(yaml.safe_dump(BASE, sort_keys=False), "stacks/case.yaml")
    declared, derived = stack.agents["support-agent"], stack.agents["sales-agent"]
    assert (declared.max_calls, declared.calls_per_worker) == (10, 10)
    assert (derived.ecs.cpu, derived.ecs.memory, derived.calls_per_worker) == (256, 512, 2)
    assert declared.worker_env()[MAX_JOBS_ENV] == "10" and derived.worker_env()[MAX_JOBS_ENV] == "2"
    local_only = derived.model_copy(update={"ecs": None})
    assert local_only.calls_per_worker == 10
