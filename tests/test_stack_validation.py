"""Invalid or hostile stack files are rejected offline with the file, line and field, before any call."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import cli
from infra.stack.errors import StackFileError
from infra.stack.load import STACKS_DIR, StackConfig, parse
from infra.stack.plan import compile_stack

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
    # the header value that selects a layer: one rule (contract.types.AttributeValue), as the worker's metadata reads it
    ("header-override-empty-value", [_set("inbound_routes.support.header_overrides.0.values", {"": {}})],
     "inbound_routes.support.header_overrides.0.values", "at least 1 character"),
    ("header-override-long-value", [_set("inbound_routes.support.header_overrides.0.values", {"x" * 257: {}})],
     "inbound_routes.support.header_overrides.0.values", "at most 256 characters"),
    ("header-override-without-trunks", [_set("inbound_routes.sales.numbers", []), _set("inbound_routes.sales.caller_numbers", ["+14155550000"])],
     "inbound_routes.sales.header_overrides.0", "need the route's trunks"),
    ("unknown-agent-config-key", [_set("inbound_routes.sales.agent_config.system_prompt", "hi")],
     "inbound_routes.sales.agent_config.system_prompt", "unknown field"),
    ("direct-rule-with-agent", [_set("inbound_routes.sales.rule", {"type": "direct", "room_name": "lobby"})],
     "inbound_routes.sales", "reuses one room"),
    ("bad-pin", [_set("inbound_routes.sales.pin", "12ab")], "inbound_routes.sales.pin", "1 to 16 digits"),
    ("unsecured-trunk-outside-local", [_set("environment", "dev"), _set("inbound_trunks.main.allowed_addresses", [])],
     "inbound_trunks.main", "needs allowed_addresses or auth_username"),
    ("image-tag-outside-local", [_set("environment", "dev"),
                                 _set("agents.sales-agent.ecs.image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/w:1.0")],
     "agents.sales-agent.ecs.image", "pin the image by digest"),
    ("huge-context", [_set("inbound_routes.sales.context", {"blob": "x" * 20000})], "inbound_routes.sales.context", "too large"),
    ("wrong-type-numbers", [_set("inbound_trunks.main.numbers", "+15550100100")], "inbound_trunks.main.numbers", "valid list"),
    ("no-calls-per-worker", [_set("agents.support-agent.max_calls", 0)], "agents.support-agent.max_calls", "greater than or equal to 1"),
    ("too-many-calls-per-worker", [_set("agents.support-agent.max_calls", 5000)], "agents.support-agent.max_calls", "less than or equal to 200"),
    ("negative-timeout", [_set("inbound_routes.sales.room", {"empty_timeout": -5})], "inbound_routes.sales.room.empty_timeout", "greater than or equal to 0"),
    # The route metadata is built from these: each used to end `validate` with a pydantic traceback.
    ("header-override-empty-value", [_set("inbound_routes.support.header_overrides.0.values", {"": {"tts": "local/espeak-ng"}})],
     "inbound_routes.support.header_overrides.0.values", "at least 1 character"),
    ("header-override-long-value", [_set("inbound_routes.support.header_overrides.0.values", {"v" * 257: {"tts": "local/espeak-ng"}})],
     "inbound_routes.support.header_overrides.0.values." + "v" * 257, "at most 256 characters"),
    ("header-override-long-header", [_set("inbound_routes.sales.header_overrides.0.header", "X-" + "a" * 113)],
     "inbound_routes.sales.header_overrides.0.header", "siphon.header.x-"),
    # Trust (#30): what arrives over SIP is data, never configuration.
    ("header-mapped-to-overrides", [_set("inbound_trunks.main.headers_to_attributes", {"X-Overrides": "siphon.overrides"})],
     "inbound_trunks.main.headers_to_attributes.X-Overrides", "header_overrides"),
    ("header-mapped-to-siphon-namespace", [_set("outbound_trunks.carrier.headers_to_attributes", {"X-Route": "siphon.route"})],
     "outbound_trunks.carrier.headers_to_attributes.X-Route", "whoever sends the header would write it"),
    ("allowed-overrides-unknown-key", [_set("inbound_routes.support.allowed_overrides", {"llm": [], "voices": []})],
     "inbound_routes.support.allowed_overrides.voices", "unknown field"),
    ("allowed-overrides-same-label-twice", [_set("inbound_routes.support.allowed_overrides",
                                                 {"tts": ["local/espeak-ng:fr", {"provider": "local", "model": "espeak-ng", "voice": "x"}, "local/espeak-ng:fr"]})],
     "inbound_routes.support.allowed_overrides.tts", "listed twice"),
    ("allowed-overrides-siphon-payload", [_set("inbound_routes.support.metadata_format", "siphon"),
                                          _set("inbound_routes.support.header_overrides", []),
                                          _set("inbound_routes.support.allowed_overrides", {"instructions": True})],
     "inbound_routes.support", "allowed_overrides needs metadata_format: siphon-infra"),
]  # fmt: skip


def _rename_agent(new: str) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        doc["agents"][new] = doc["agents"].pop("support-agent")
        for route in doc["inbound_routes"].values():
            if route["agent"] == "support-agent":
                route["agent"] = new

    return apply


BIG_LAYERS = {f"tier{i}": {"system_instructions": "x" * 7900} for i in range(9)}

# Classes that passed `validate` and failed only at preview (or never), before validate and the program shared
# one compile step: naming limits per system, Fargate sizes, unknown or mistyped ECS keys, open allow-lists,
# national prefixes, values that silently discard others, caller-vs-called filters, metadata size, unset secrets.
PREVIEW_CASES: list[tuple[str, list[Callable[[dict], None]], str, str]] = [
    ("environment-too-long-for-ecs", [_set("environment", "staging-eu-west-1")], "environment", "1-16 lower-case"),
    ("environment-ends-with-dash", [_set("environment", "dev-")], "environment", "not starting or ending with '-'"),
    ("agent-name-too-long-for-ecs", [_rename_agent("customer-support-agent-for-the-emea-region")],
     "agents.customer-support-agent-for-the-emea-region", "must fit 64 characters"),
    ("agent-name-livekit-accepts-ecs-refuses", [_rename_agent("Support_Agent")], "agents.Support_Agent", "on ECS"),
    ("fargate-memory-for-cpu", [_set("agents.sales-agent.ecs.memory", 4096)], "agents.sales-agent.ecs.memory",
     "not allowed with cpu 256 on Fargate (one of 512, 1024, 2048)"),
    ("fargate-cpu", [_set("agents.support-agent.ecs.cpu", 300)], "agents.support-agent.ecs.cpu", "not a Fargate cpu value"),
    ("ecs-settings-bag-is-gone", [_set("agents.support-agent.ecs.settings", {"desired_count": 0})],
     "agents.support-agent.ecs.settings", "unknown field"),
    ("ecs-typo", [_set("agents.support-agent.ecs.autoscalling", {"min_count": 1, "max_count": 2})],
     "agents.support-agent.ecs.autoscalling", "unknown field"),
    ("ecs-image-not-a-full-reference", [_set("agents.support-agent.ecs.image", "siphon-worker:latest")],
     "agents.support-agent.ecs.image", "full reference"),
    ("ecs-desired-outside-autoscaling", [_set("agents.support-agent.ecs.autoscaling", {"min_count": 2, "max_count": 4})],
     "agents.support-agent.ecs.desired_count", "outside autoscaling"),
    ("ecs-reserved-provider-key", [_set("agents.support-agent.ecs.provider_key_secrets", {"LIVEKIT_TOKEN": "localCarrierPassword"})],
     "agents.support-agent.ecs.provider_key_secrets", "is reserved"),
    ("ecs-bad-security-group", [_set("aws.security_groups", ["default"])], "aws.security_groups", "not security group ids"),
    # Renamed fields (the argument's name is the stack field's serialization_alias): the error is at the stack field.
    ("ecs-bad-cluster-name", [_set("aws.cluster", "my cluster")], "aws.cluster", "should match pattern"),
    ("livekit-url-without-host", [_set("livekit", {"url": "wss:///rtc"})], "livekit.url", "should match pattern"),
    ("open-allow-list", [_set("environment", "dev"), _set("inbound_trunks.main.allowed_addresses", ["0.0.0.0/0"])],
     "inbound_trunks.main.allowed_addresses.0", "admits every address"),
    ("open-ipv6-allow-list", [_set("environment", "dev"), _set("inbound_trunks.main.allowed_addresses", ["::/0"])],
     "inbound_trunks.main.allowed_addresses.0", "admits every address"),
    ("national-prefix-kept", [_set("inbound_trunks.main.numbers", ["+44 (0)20 7946 0018"])],
     "inbound_trunks.main.numbers.0", "write +442079460018"),
    ("national-prefix-kept-route", [_set("inbound_routes.sales.caller_numbers", ["+4402079460018"])],
     "inbound_routes.sales.caller_numbers.0", "write +442079460018"),
    ("pin-discarded-by-rule", [_set("inbound_routes.sales.pin", "4321"), _set("inbound_routes.sales.rule", {"type": "individual"})],
     "inbound_routes.sales.pin", "move it to rule.pin"),
    ("caller-filter-holds-the-called-number", [_set("inbound_routes.sales.caller_numbers", ["+15550100101"])],
     "inbound_routes.sales.caller_numbers", "a number this route answers"),
    ("route-metadata-over-livekit-limit", [_set("inbound_routes.support.header_overrides.0.values", BIG_LAYERS)],
     "inbound_routes.support", "LiveKit's limit"),
    ("unset-trunk-secret", [_set("inbound_trunks.partners.auth_password_secret", "partnersPassword")],
     "inbound_trunks.partners.auth_password_secret", "pulumi config set --secret partnersPassword"),
    # #32: files validate passed that broke after `up`; each refused at its field with what to write instead.
    ("local-worker-outside-local", [_set("environment", "dev"), _set("agents.sales-agent.ecs", _DELETE)],
     "agents.sales-agent.local", "add `ecs: {image: <repository>@sha256:<digest>}` under agents.sales-agent"),
    ("unrouted-agent-with-no-worker", [_set("agents.idle-agent", {"defaults": {"llm": "local/scripted"}})],
     "agents.idle-agent", "no worker: add `local: {}`"),
    ("routed-agent-with-no-task", [_set("agents.sales-agent.ecs.desired_count", 0), _set("agents.sales-agent.local", _DELETE)],
     "agents.sales-agent.ecs.desired_count", "route(s) sales send calls to this agent"),
    ("one-object-adopted-twice", [_set("inbound_trunks.main.adopt_id", "ST_abc"), _set("inbound_trunks.partners.adopt_id", "ST_abc")],
     "inbound_trunks.partners.adopt_id", "also adopted by inbound_trunks.main"),
    ("trunk-adopted-by-a-route", [_set("outbound_trunks.carrier.adopt_id", "ST_abc"), _set("inbound_routes.sales.adopt_id", "ST_abc")],
     "inbound_routes.sales.adopt_id", "a dispatch rule id starts with SDR_"),
    ("rule-id-adopted-by-a-trunk", [_set("inbound_trunks.main.adopt_id", "SDR_abc")],
     "inbound_trunks.main.adopt_id", "is a dispatch rule id: a trunk id starts with ST_"),
    ("pin-route-beside-an-open-route", [_set("inbound_routes.sales.numbers", []), _set("inbound_routes.sales.trunks", ["main"]),
                                        _set("inbound_routes.support.pin", "4321")],
     "inbound_routes.support.pin", "presses # alone reaches 'sales'"),
    ("extra-env-the-worker-refuses", [_set("agents.sales-agent.ecs.extra_env", {"SIPHON_PARTICIPANT_WAIT": "-1"})],
     "agents.sales-agent.ecs.extra_env", "SIPHON_PARTICIPANT_WAIT: Input should be greater than 0"),
    ("extra-env-moves-the-probed-port", [_set("agents.sales-agent.ecs.extra_env", {"SIPHON_HTTP_PORT": "9000"})],
     "agents.sales-agent.ecs.extra_env", "set health_check.command to probe where the server listens"),
    ("provider-dict-parameter-the-plugin-lacks", [_set("agents.sales-agent.defaults.tts", {"provider": "local", "model": "espeak-ng", "sped": 1.2})],
     "agents.sales-agent.defaults.tts.sped", "takes no parameter 'sped': did you mean speed?"),
    ("allowed-override-parameter-the-plugin-lacks", [_set("inbound_routes.support.allowed_overrides", {"llm": [{"provider": "openai", "model": "gpt-4.1-mini", "temprature": 0.2}]})],
     "inbound_routes.support.allowed_overrides.llm.0.temprature", "did you mean temperature?"),
    ("unset-key-file-secret", [_set("agents.support-agent.ecs.provider_key_secrets", {"GOOGLE_APPLICATION_CREDENTIALS": "googleCredentials"})],
     "agents.support-agent.ecs.provider_key_secrets.GOOGLE_APPLICATION_CREDENTIALS", 'pulumi config set --secret googleCredentials "$(cat key.json)"'),
    ("unset-model-key-secret", [_set("agents.support-agent.ecs.provider_key_secrets", {"OPENAI_API_KEY": "openaiApiKey"})],
     "agents.support-agent.ecs.provider_key_secrets.OPENAI_API_KEY", "pulumi config set --secret openaiApiKey"),
]  # fmt: skip
CASES += PREVIEW_CASES

# Messages that used to mislead: (id, mutations, field, words that must be there, words that must not).
MESSAGE_CASES = [
    ("national-number-hint", [_set("inbound_trunks.main.numbers", ["020 7946 0018"])], "inbound_trunks.main.numbers.0",
     "without the national prefix 0", "+020"),
    ("provider-dict-reason-first", [_set("agents.sales-agent.defaults.llm", {"model": "gpt-4.1-mini"})],
     "agents.sales-agent.defaults.llm.provider", "Field required", "valid string"),
    ("plain-password-at-its-line", [_set("inbound_trunks.main.auth_username", "u"), _set("inbound_trunks.main.auth_password", "hunter2")],
     "inbound_trunks.main.auth_password", "pulumi config set --secret", "hunter2"),
    ("header-mapping-says-what-to-write", [_set("inbound_trunks.main.headers_to_attributes", {"X-Layer": "siphon.overrides"})],
     "inbound_trunks.main.headers_to_attributes.X-Layer", "X-Layer: customer.layer", "Traceback"),
]  # fmt: skip


@pytest.mark.parametrize(("mutations", "field", "words", "wrong"), [c[1:] for c in MESSAGE_CASES],
                         ids=[c[0] for c in MESSAGE_CASES])  # fmt: skip
def test_messages_name_the_field_and_say_what_to_write(mutations, field, words, wrong):
    doc = copy.deepcopy(BASE)
    for mutate in mutations:
        mutate(doc)
    problems = _problems(doc)
    text = "\n".join(str(p) for p in problems)
    assert [p.field for p in problems] == [field], text
    assert words in text
    assert wrong not in text
    line = yaml.safe_dump(doc, sort_keys=False).splitlines()[problems[0].line - 1]
    assert any(part in line for part in field.split(".")[1:]), ("the line shown is the field's", line, text)


def test_a_stack_wide_setting_every_agents_arguments_take_is_one_problem():
    doc = copy.deepcopy(BASE)
    _set("aws.cluster", "my cluster")(doc)
    assert len(doc["agents"]) == 3
    assert [(p.field, p.line) for p in _problems(doc)] == [("aws.cluster", 5)]


def test_the_catalogue_covers_every_class_validate_used_to_miss():
    assert len(PREVIEW_CASES) >= 20
    assert len(CASES) >= 55


def _problems(doc: dict, environment: str = "case", config: StackConfig = CONFIG) -> list:
    """What `siphon-infra validate` and the Pulumi program report: parse, then the shared compile step."""
    text = yaml.safe_dump(doc, sort_keys=False)
    file = f"stacks/{environment}.yaml"
    try:
        stack, lines = parse(text, file)
        compile_stack(stack, file, lines, config)
    except StackFileError as e:
        return e.problems
    return []


PROD: dict[str, Any] = yaml.safe_load((STACKS / "prod.yaml").read_text())
_OPENAI = "openai/gpt-4.1-mini"

# Model and credential mistakes in every kind of layer of the repository's own prod stack file (with its secrets
# set): each would run production calls on the test models, stop the worker at start, or refuse the calls.
MODEL_CASES: list[tuple[str, list[Callable[[dict], None]], str, str]] = [
    ("defaults-kind-unset", [_set("agents.sales-agent.defaults.stt", _DELETE)], "agents.sales-agent.defaults.stt",
     "not set: outside `local` a worker runs only the models it is given"),
    ("defaults-test-model", [_set("agents.support-agent.defaults.llm", "local/scripted")],
     "agents.support-agent.defaults.llm", "local/scripted is an offline test model"),
    ("defaults-key-not-given", [_set("agents.reminders-agent.ecs.provider_key_secrets.DEEPGRAM_API_KEY", _DELETE)],
     "agents.reminders-agent.defaults.stt", "add `DEEPGRAM_API_KEY: deepgramApiKey` under agents.reminders-agent.ecs"),
    ("route-provider-without-key", [_set("inbound_routes.sales-us.agent_config.llm", "anthropic/claude-sonnet-4")],
     "inbound_routes.sales-us.agent_config.llm", "needs ANTHROPIC_API_KEY"),
    ("route-provider-dict-without-key", [_set("inbound_routes.sales-eu.agent_config.stt", {"provider": "assemblyai"})],
     "inbound_routes.sales-eu.agent_config.stt", "needs ASSEMBLYAI_API_KEY"),
    ("header-layer-test-model", [_set("inbound_routes.support.header_overrides.0.values.gold.tts", "local/espeak-ng")],
     "inbound_routes.support.header_overrides.0.values.gold.tts", "offline test model"),
    ("header-layer-provider-without-key", [_set("inbound_routes.support.header_overrides.0.values.gold.tts",
                                                "elevenlabs/eleven_turbo_v2_5")],
     "inbound_routes.support.header_overrides.0.values.gold.tts", "needs ELEVEN_API_KEY"),
    ("outbound-provider-without-key", [_set("outbound_routes.appointment-reminders.agent_config.llm", "groq/llama-3.3")],
     "outbound_routes.appointment-reminders.agent_config.llm", "needs GROQ_API_KEY"),
    ("outbound-test-model", [_set("outbound_routes.appointment-reminders.agent_config.stt", "local/silent")],
     "outbound_routes.appointment-reminders.agent_config.stt", "offline test model"),
    # Trust (#30): a URL the deployment's key travels to is https; what a caller may choose is run like any spec.
    ("route-url-not-https", [_set("inbound_routes.sales-us.agent_config.llm",
                                  {"provider": "openai", "model": "gpt-4.1-mini", "base_url": "http://10.0.0.5:8000/v1"})],
     "inbound_routes.sales-us.agent_config.llm.base_url", "is not an https URL"),
    ("header-layer-url-without-scheme", [_set("inbound_routes.support.header_overrides.0.values.gold.llm",
                                              {"provider": "openai", "base_url": "proxy.example.com/v1"})],
     "inbound_routes.support.header_overrides.0.values.gold.llm.base_url", "write https://<host>/"),
    ("defaults-url-not-https", [_set("agents.support-agent.defaults.tts",
                                     {"provider": "cartesia", "model": "sonic-2", "base_url": "ws://tts.example.com"})],
     "agents.support-agent.defaults.tts.base_url", "is not an https URL"),
    ("allowed-url-not-https", [_set("inbound_routes.sales-us.allowed_overrides",
                                    {"llm": [_OPENAI, {"provider": "openai", "model": "gpt-4o", "base_url": "http://p/v1"}]})],
     "inbound_routes.sales-us.allowed_overrides.llm.1.base_url", "is not an https URL"),
    ("allowed-test-model", [_set("inbound_routes.sales-us.allowed_overrides", {"tts": ["local/espeak-ng"]})],
     "inbound_routes.sales-us.allowed_overrides.tts.0", "offline test model"),
    ("allowed-provider-without-key", [_set("outbound_routes.appointment-reminders.allowed_overrides",
                                           {"llm": ["anthropic/claude-sonnet-4"]})],
     "outbound_routes.appointment-reminders.allowed_overrides.llm.0", "needs ANTHROPIC_API_KEY"),
    ("allowed-unknown-provider", [_set("inbound_routes.sales-us.allowed_overrides", {"stt": ["nobody/x"]})],
     "inbound_routes.sales-us.allowed_overrides.stt.0", "unknown stt provider 'nobody'"),
    # Fallback chains (#31): every entry is checked as one spec is, at its own field.
    ("chain-second-provider-key-not-declared", [_set("agents.support-agent.defaults.llm", [_OPENAI, "anthropic/claude-haiku-4-5"])],
     "agents.support-agent.defaults.llm.1",
     "add `ANTHROPIC_API_KEY: anthropicApiKey` under agents.support-agent.ecs.provider_key_secrets"),
    ("chain-unknown-provider-first", [_set("inbound_routes.sales-us.agent_config.stt", ["nobody/x", "deepgram/nova-3:en"])],
     "inbound_routes.sales-us.agent_config.stt.0", "unknown stt provider 'nobody'"),
    ("chain-entry-of-another-kind", [_set("agents.sales-agent.defaults.llm", [_OPENAI, "cartesia/sonic-2"])],
     "agents.sales-agent.defaults.llm.1", "cartesia is a provider of stt and tts: is this spec under the right kind?"),
    ("chain-entry-variant-the-provider-lacks", [_set("agents.sales-agent.defaults.tts", ["cartesia/sonic-2", "deepgram/aura-2:x"])],
     "agents.sales-agent.defaults.tts.1", "deepgram tts model strings take no ':variant' suffix"),
    ("chain-test-model-entry", [_set("outbound_routes.appointment-reminders.agent_config.tts", ["cartesia/sonic-2", "local/espeak-ng"])],
     "outbound_routes.appointment-reminders.agent_config.tts.1", "local/espeak-ng is an offline test model"),
    ("chain-header-layer-entry-without-key", [_set("inbound_routes.support.header_overrides.0.values.gold.tts",
                                                   ["cartesia/sonic-2", {"provider": "elevenlabs", "model": "eleven_flash_v2_5"}])],
     "inbound_routes.support.header_overrides.0.values.gold.tts.1", "needs ELEVEN_API_KEY"),
    ("chain-entry-url-not-https", [_set("agents.reminders-agent.defaults.llm",
                                        [_OPENAI, {"provider": "openai", "model": "gpt-4o", "base_url": "http://10.0.0.5/v1"}])],
     "agents.reminders-agent.defaults.llm.1.base_url", "is not an https URL"),
    ("chain-entry-parameter-the-plugin-lacks", [_set("agents.reminders-agent.defaults.llm",
                                                     [{"provider": "openai", "temprature": 0.2}, _OPENAI])],
     "agents.reminders-agent.defaults.llm.0.temprature", "did you mean temperature?"),
    ("chain-entry-credential-parameter", [_set("agents.reminders-agent.defaults.llm", [_OPENAI, {"provider": "openai", "api_key": "sk"}])],
     "agents.reminders-agent.defaults.llm.1", "looks like a credential"),
    ("chain-entry-repeated", [_set("agents.reminders-agent.defaults.stt", ["deepgram/nova-3:en", "deepgram/nova-3:en"])],
     "agents.reminders-agent.defaults.stt", "entry 1 repeats entry 0"),
    ("chain-empty", [_set("agents.reminders-agent.defaults.stt", [])],
     "agents.reminders-agent.defaults.stt", "an empty list names no model"),
    ("chain-too-long", [_set("agents.reminders-agent.defaults.llm", [_OPENAI, "openai/gpt-4o", "openai/gpt-4.1", "openai/o3", "openai/o4-mini"])],
     "agents.reminders-agent.defaults.llm", "at most 4 items"),
]  # fmt: skip


def _prod_problems(doc: dict) -> list:
    return _problems(doc, "prod", StackConfig())  # secret references unchecked: as if every one were set


def test_a_chain_whose_every_provider_key_is_declared_is_valid():
    doc = copy.deepcopy(PROD)
    _set("agents.support-agent.defaults.llm", [_OPENAI, "anthropic/claude-haiku-4-5"])(doc)
    _set("agents.support-agent.ecs.provider_key_secrets.ANTHROPIC_API_KEY", "anthropicApiKey")(doc)
    _set("inbound_routes.support.header_overrides.0.values.gold.tts", ["cartesia/sonic-2", "deepgram/aura-2"])(doc)
    assert _prod_problems(doc) == []


def test_a_chain_entry_is_reported_at_the_line_of_that_entry():
    doc = copy.deepcopy(PROD)
    _set("agents.support-agent.defaults.llm", [_OPENAI, "anthropic/claude-haiku-4-5"])(doc)
    problems = _prod_problems(doc)
    line = yaml.safe_dump(doc, sort_keys=False).splitlines()[problems[0].line - 1]
    assert "anthropic/claude-haiku-4-5" in line, (line, problems)


def test_the_prod_stack_file_is_valid_once_its_secrets_are_set():
    assert _prod_problems(copy.deepcopy(PROD)) == []


@pytest.mark.parametrize(("mutations", "field", "words"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_a_model_or_credential_mistake_in_any_layer_is_refused_at_its_line(mutations, field, words):
    doc = copy.deepcopy(PROD)
    for mutate in mutations:
        mutate(doc)
    problems = _prod_problems(doc)
    text = "\n".join(str(p) for p in problems)
    assert [p.field for p in problems] == [field], text
    assert words in problems[0].message and problems[0].line > 1, text


def test_the_local_stack_runs_test_models_but_its_ecs_agents_still_need_their_providers_keys():
    doc = copy.deepcopy(BASE)
    _set("agents.sales-agent.defaults.llm", _OPENAI)(doc)
    assert [(p.field, "needs OPENAI_API_KEY" in p.message) for p in _problems(doc)] == [
        ("agents.sales-agent.defaults.llm", True)
    ]
    _set("agents.sales-agent.ecs", _DELETE)(doc)  # a local worker process takes its keys from the shell
    assert _problems(doc) == []


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


@pytest.mark.parametrize(
    ("stack", "config", "expected"),
    [
        (b"environment: local\nagents: {\xff: 1}\n", None, "local.yaml:2: not UTF-8 text: byte 0xff"),
        (b"environment: local\n\x01: 1\n", None, "local.yaml:2: not valid YAML: character #x0001: control characters"),
        (None, b"config: {a: \xff}\n", "Pulumi.local.yaml:1: not UTF-8 text: byte 0xff"),
        (None, b"- a list\n", "Pulumi.local.yaml:1: a stack's config file is a YAML mapping"),
        (None, b"config: [a]\n", "Pulumi.local.yaml:1: a stack's config file is a YAML mapping"),
    ],
    ids=["stack-not-utf8", "stack-control-character", "config-not-utf8", "config-a-list", "config-config-a-list"],
)
def test_files_validate_cannot_read_are_one_problem_each_not_a_traceback(tmp_path, capsys, stack, config, expected):
    (tmp_path / "local.yaml").write_bytes(stack or (STACKS / "local.yaml").read_bytes())
    (tmp_path / "Pulumi.local.yaml").write_bytes(config or (STACKS / "Pulumi.local.yaml").read_bytes())
    assert cli.main(["validate", str(tmp_path / "local.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("INVALID (1 problem)") and out[1].startswith(f"  {tmp_path}/{expected}"), out


def test_a_key_with_a_line_break_is_one_problem_on_one_line():
    """Found by tests/test_stack_properties.py: a key may hold any character; the problem stays one line."""
    with pytest.raises(StackFileError) as err:
        parse('environment: local\nagents:\n  "bad\\nname": {local: {}}\n', "stacks/raw.yaml")
    assert [str(p) for p in err.value.problems] == [
        "stacks/raw.yaml:3: agents.bad\\nname: 'bad\\nname' is not a LiveKit agent name (1-128 letters, digits, "
        "'_', '-', '.'; starting alphanumeric)"
    ]


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
    assert cli.main(["validate", "local"]) == 0, "the local stack file and its config are complete"


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_the_committed_dev_and_prod_stacks_only_lack_their_secrets(environment, capsys, tmp_path):
    """dev and prod are templates whose config files hold no secret yet: validate lists exactly the commands to
    run before `pulumi preview` can work (it would fail on the same keys): the trunk passwords and every model
    provider's key; with all of them set (in a copy), the file passes. routes and summary need no secret."""
    assert cli.main(["validate", environment]) == 1
    out = capsys.readouterr().out
    problems = [line.strip() for line in out.splitlines()[1:]]
    commands = {m.group(1) for p in problems if (m := re.search(r"`pulumi config set --secret (\S+) <", p))}
    assert commands == {"carrierInboundPassword", "carrierOutboundPassword", "openaiApiKey", "deepgramApiKey",
                        "cartesiaApiKey"}, out  # fmt: skip
    for problem in problems:
        assert f"stacks/{environment}.yaml:" in problem and f"Pulumi.{environment}.yaml does not set" in problem
        assert f"--stack {environment}`" in problem, problem
    assert cli.main(["summary", environment]) == 0

    copy = tmp_path / f"{environment}.yaml"
    shutil.copy(STACKS_DIR / f"{environment}.yaml", copy)
    config = (STACKS_DIR / f"Pulumi.{environment}.yaml").read_text()
    config += "".join(f"  siphon:{key}:\n    secure: v1:AAAA\n" for key in sorted(commands))
    (tmp_path / f"Pulumi.{environment}.yaml").write_text(config)
    capsys.readouterr()
    assert cli.main(["validate", str(copy)]) == 0, capsys.readouterr().out


CONFIG_FILES = [
    # (id, content of Pulumi.local.yaml or None for no file, words in the problem; None: accepted)
    ("config-file-missing", None, "Pulumi.local.yaml does not exist: create the stack (`pulumi stack init local`), "
     "then `pulumi config set --secret localPartnersPassword <password> --stack local`"),
    ("secret-in-plain-text", "config:\n  siphon:localPartnersPassword: hunter2\n  siphon:localCarrierPassword:\n"
     "    secure: v1:abc\n", "holds in plain text: `pulumi config set --secret localPartnersPassword"),
    ("secret-under-another-project", "config:\n  other:localPartnersPassword:\n    secure: v1:abc\n"
     "  siphon:localCarrierPassword:\n    secure: v1:abc\n", "does not set: `pulumi config set --secret localPartners"),
    ("config-file-not-yaml", "config: [unclosed\n", "Pulumi.local.yaml:2: not valid YAML"),
    ("secrets-from-an-esc-environment", "environment:\n  - siphon/local\n", None),
]  # fmt: skip


@pytest.mark.parametrize(("config", "words"), [c[1:] for c in CONFIG_FILES], ids=[c[0] for c in CONFIG_FILES])
def test_secret_references_are_checked_against_the_stack_config_file(tmp_path, capsys, config, words):
    (tmp_path / "local.yaml").write_text((STACKS / "local.yaml").read_text())
    (tmp_path / "Pulumi.yaml").write_text("name: siphon\n")
    if config is not None:
        (tmp_path / "Pulumi.local.yaml").write_text(config)
    code = cli.main(["validate", str(tmp_path / "local.yaml")])
    out = capsys.readouterr().out
    assert code == (0 if words is None else 1), out
    if words is not None:
        assert words in out
        assert "hunter2" not in out
        assert all(line.startswith(f"  {tmp_path}/") for line in out.splitlines()[1:]), "file:line: field: message"


def test_cli_routes_prints_table_and_diagram(capsys):
    assert cli.main(["routes", "local", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "| inbound   | +15550100100 | support" in out
    assert "flowchart LR" in out
    assert "rule support" in out


def test_an_agents_call_capacity_is_declared_or_derived_from_its_ecs_size_and_reaches_its_workers():
    from contract.deployment import MAX_JOBS_ENV

    stack, _ = parse(yaml.safe_dump(BASE, sort_keys=False), "stacks/case.yaml")
    declared, derived = stack.agents["support-agent"], stack.agents["sales-agent"]
    assert (declared.max_calls, declared.calls_per_worker) == (10, 10)
    assert (derived.ecs.cpu, derived.ecs.memory, derived.calls_per_worker) == (256, 512, 2)
    assert declared.worker_env("local")[MAX_JOBS_ENV] == "10" and derived.worker_env("local")[MAX_JOBS_ENV] == "2"
    local_only = derived.model_copy(update={"ecs": None})
    assert local_only.calls_per_worker == 10


def test_routes_takes_an_environment_name_even_beside_a_file_of_that_name(monkeypatch, capsys):
    monkeypatch.chdir(STACKS.parent)  # the repository root holds the ./dev script
    assert (STACKS.parent / "dev").is_file()
    assert cli.main(["routes", "dev"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| inbound " in out and "not valid YAML" not in out


def test_a_route_uses_every_trunk_serving_its_numbers_in_the_stack_files_order():
    """Without `trunks:`, a route's rule covers each inbound trunk that serves one of its numbers (looked up in
    an index of numbers, not a scan of every trunk per route), listed as the stack file declares them."""
    doc = copy.deepcopy(BASE)
    backup = {"numbers": ["+15550100101"], "allowed_addresses": ["127.0.0.1/32"], "allowed_numbers": ["+15005550006"]}
    doc["inbound_trunks"] = {"backup": backup, **doc["inbound_trunks"]}
    stack, lines = parse(yaml.safe_dump(doc, sort_keys=False), "stacks/case.yaml")
    plan = compile_stack(stack, "stacks/case.yaml", lines, CONFIG)
    assert plan.inbound_routes["sales"].trunks == ["backup", "main"]
    assert plan.inbound_routes["support"].trunks == ["main"]


def test_the_death_queue_of_a_stack_is_checked_by_validate_as_its_resource_checks_it():
    """The stack's death queue (one per stack with ECS agents) is compiled with the rest: more ECS services than one
    queue's rule may list is refused by validate at the agents, not at preview."""
    doc = copy.deepcopy(PROD)
    for i in range(101):
        doc["agents"][f"extra-{i}"] = copy.deepcopy(doc["agents"]["sales-agent"])
    problems = _prod_problems(doc)
    assert [(p.field, "at most 100" in p.message and "split the agents" in p.message) for p in problems] == [
        ("agents", True)
    ], problems
    assert _prod_problems(copy.deepcopy(PROD)) == []


def test_a_pin_route_on_its_own_number_beside_open_routes_is_valid():
    """LiveKit ranks an open rule naming a number before a PIN rule naming none, so a PIN-protected catch-all
    beside open routes on their own numbers protects what it answers: no problem."""
    doc = copy.deepcopy(BASE)
    _set("inbound_routes.partners.pin", "2468")(doc)
    assert _problems(doc) == []
    _set("inbound_routes.partners.numbers", [])(doc)
    _set("inbound_routes.partners.trunks", ["main"])(doc)
    assert _problems(doc) == []


def test_every_problem_of_a_file_comes_in_one_round():
    """A cross-check problem (an unknown agent) does not hide a problem of the resources' arguments (a cluster name
    ECS refuses) or an unset secret: all three are reported together."""
    doc = copy.deepcopy(BASE)
    for mutate in (_set("inbound_routes.sales.agent", "nobody"), _set("aws.cluster", "my cluster"),
                   _set("inbound_trunks.partners.auth_password_secret", "partnersPassword")):  # fmt: skip
        mutate(doc)
    fields = {p.field for p in _problems(doc)}
    assert {"inbound_routes.sales.agent", "aws.cluster",
            "inbound_trunks.partners.auth_password_secret"} <= fields, fields  # fmt: skip


def test_max_calls_above_what_the_ecs_task_holds_is_refused_outside_local():
    """prod's support agent runs on 1024 cpu units and 2048 MiB, which hold 8 calls: 40 would get the task killed
    with every call on it. In `local` the ECS deployment (on moto) runs nothing, so its max_calls is not held to it."""
    doc = copy.deepcopy(PROD)
    agent = next(iter(doc["agents"]))
    doc["agents"][agent]["max_calls"] = 40
    problems = [p for p in _prod_problems(doc) if p.field == f"agents.{agent}.max_calls"]
    assert problems and "lower max_calls to 8, or give the task cpu: 8192 and memory: 16384" in problems[0].message
    local = copy.deepcopy(BASE)
    _set("agents.sales-agent.max_calls", 40)(local)
    assert _problems(local) == []
