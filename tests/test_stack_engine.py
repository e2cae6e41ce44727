"""The stack program through the real engine on the local environment: deploy, edit, remove, summarise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import boto3
import pytest
import yaml
from pulumi import automation as auto

from infra.stack.load import parse
from infra.stack.plan import compile_stack
from infra.stack.render import markdown_summary
from tests.sip_harness import livekit_canonical, livekit_objects
from tests.stack_harness import StackUnderTest

TRUNK_PASSWORD = "Tr0nk-Passw0rd-from-config-91"


def endpoints_secret() -> str:
    """The LiveKit API secret of the session environment (stored in Secrets Manager for the ECS workers)."""
    import os

    return os.environ["LIVEKIT_API_SECRET"]


LOCAL = yaml.safe_load((Path(__file__).parents[1] / "stacks" / "local.yaml").read_text())


@pytest.mark.engine
def test_local_stack_deploys_and_the_routing_table_matches_livekit(clean_livekit, aws, tmp_path, pulumi_env):
    doc = copy.deepcopy(LOCAL)
    doc["inbound_trunks"]["main"].update(auth_username="carrier", auth_password_secret="mainTrunkPassword")
    sut = StackUnderTest(tmp_path, pulumi_env, "local", doc)
    sut.stack.set_config("mainTrunkPassword", auto.ConfigValue(TRUNK_PASSWORD, secret=True))
    logs: list[str] = []
    outputs = {k: v.value for k, v in sut.stack.up(on_output=logs.append).outputs.items()}
    main = next(t for t in livekit_objects()["inbound"] if t.name == "local-main")
    assert main.auth_password == TRUNK_PASSWORD, "the password reached LiveKit"
    state = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file())
    local_passwords = [sut.stack.get_config(k).value for k in ("localPartnersPassword", "localCarrierPassword")]
    for secret in (TRUNK_PASSWORD, endpoints_secret(), *local_passwords):
        assert secret not in state, "a secret is in plain text in the state"
        assert secret not in "\n".join(logs), "a secret is in the up output"
        assert secret not in json.dumps(outputs), "a secret is in the stack outputs"
    table = outputs["routing_table"]
    assert set(table) == {"+15550100100", "+15550100101", "+15550100102"}

    live = livekit_canonical()
    rules = {r["name"]: r for r in live["rules"].values()}
    assert live["inbound"]["local-main"]["numbers"] == ["+15550100100", "+15550100101"]
    for number, row in table.items():
        rule = next(r for r in livekit_objects()["rules"] if r.sip_dispatch_rule_id == row["rule_id"])
        assert list(rule.numbers) == [number]
        assert list(rule.trunk_ids) == [outputs["inbound_trunks"][t] for t in row["trunks"]]
        agents = rule.room_config.agents
        assert [a.agent_name for a in agents] == [row["agent_name"]]
        metadata = json.loads(agents[0].metadata)
        assert metadata["route"] == row["route"]
        assert metadata["direction"] == "inbound"
    assert rules["local-sales"]["room_config"]["agents"][0]["agent_name"] == "sales-agent"
    # header-selected overrides: the trunk maps the headers, the rule metadata tells the worker the layers
    assert live["inbound"]["local-main"]["headers_to_attributes"] == {
        "X-Customer-Tier": "customer.tier",
        "X-Language": "siphon.header.x-language",
    }
    support_meta = json.loads(rules["local-support"]["metadata"])
    assert support_meta["attribute_overrides"]["customer.tier"]["gold"]["greeting_instructions"].startswith(
        "Welcome back"
    )
    sales_meta = json.loads(rules["local-sales"]["metadata"])
    assert sales_meta["attribute_overrides"]["siphon.header.x-language"]["fr"]["tts"] == "local/espeak-ng:fr"
    assert "Which product" in json.loads(rules["local-sales"]["metadata"])["agent_config"]["greeting_instructions"]

    ecs = boto3.client("ecs")
    services = ecs.list_services(cluster="siphon-local")["serviceArns"]
    assert sorted(a.rsplit("/", 1)[-1] for a in services) == [
        "siphon-local-reminders-agent",
        "siphon-local-sales-agent",
        "siphon-local-support-agent",
    ]
    for arn in services:  # tasks run the image pinned by digest
        taskdef = ecs.describe_services(cluster="siphon-local", services=[arn])["services"][0]["taskDefinition"]
        image = ecs.describe_task_definition(taskDefinition=taskdef)["taskDefinition"]["containerDefinitions"][0]
        assert "@sha256:" in image["image"], image["image"]
    assert outputs["agents"] == {
        "support-agent": "ecs+local",
        "sales-agent": "ecs+local",
        "reminders-agent": "ecs+local",
    }

    reminders = outputs["outbound_routes"]["reminders"]
    assert reminders["trunk_id"] == outputs_trunk_id(live, "local-carrier")
    assert reminders["caller_ids"] == ["+15550100200"]
    assert reminders["agent_name"] == "reminders-agent"

    # one route's instructions change: exactly one resource update, naming the field
    edited = copy.deepcopy(doc)
    edited["inbound_routes"]["sales"]["agent_config"]["greeting_instructions"] = "Hi, sales here. What can I do?"
    sut.write(edited)
    preview = sut.stack.preview(diff=True)
    assert preview.change_summary.get("update") == 1, preview.change_summary
    assert set(preview.change_summary) == {"same", "update"}
    assert "local-sales" in preview.stdout
    assert "~ metadata" in preview.stdout
    assert "What can I do?" in preview.stdout
    ids_before = {r.name: r.sip_dispatch_rule_id for r in livekit_objects()["rules"]}
    sut.stack.up()
    assert {r.name: r.sip_dispatch_rule_id for r in livekit_objects()["rules"]} == ids_before, "updated in place"

    # a new worker image (another digest) for one agent: one update, and image is the field the preview names
    new_image = doc["agents"]["sales-agent"]["ecs"]["image"].split("@")[0] + "@sha256:" + "1" * 64
    edited["agents"]["sales-agent"]["ecs"]["image"] = new_image
    sut.write(edited)
    preview = sut.stack.preview(diff=True)
    assert preview.change_summary.get("update") == 1, preview.change_summary
    assert "~ image" in preview.stdout and new_image in preview.stdout, preview.stdout[-3000:]
    edited["agents"]["sales-agent"]["ecs"]["image"] = doc["agents"]["sales-agent"]["ecs"]["image"]
    sut.write(edited)

    # the Markdown summary for that kind of change renders
    edited["inbound_routes"]["support"]["context"] = {"line": "support", "v": 2}
    sut.write(edited)
    stack, lines = parse(yaml.safe_dump(edited), "local.yaml")
    summary = markdown_summary("local", compile_stack(stack, "local.yaml", lines), sut.preview_json())
    assert "| inbound   | +15550100100 | support" in summary
    assert "```mermaid" in summary
    assert "flowchart LR" in summary
    assert "| update | support-rule" in summary
    assert "metadata" in summary

    # removing a route deletes only that route's objects
    del edited["inbound_routes"]["sales"]
    sut.write(edited)
    preview = sut.stack.preview()
    assert preview.change_summary.get("delete") == 2, preview.change_summary  # the component and its rule
    sut.stack.up()
    assert sorted(r.name for r in livekit_objects()["rules"]) == ["local-partners", "local-support"]
    assert sorted(t.name for t in livekit_objects()["inbound"]) == ["local-main", "local-partners"]

    sut.stack.destroy()
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}


def outputs_trunk_id(live: dict, name: str) -> str:
    return next(t.sip_trunk_id for t in livekit_objects()["outbound"] if t.name == name)


@pytest.mark.engine
@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d["inbound_routes"]["support"].__setitem__("agent", "ghost-agent"), "no agent named 'ghost-agent'"),
        (
            lambda d: d["inbound_routes"]["sales"].__setitem__("numbers", ["+15550100100"]),
            "conflicts with inbound route",
        ),
    ],
    ids=["unknown-agent", "conflicting-routes"],
)
def test_invalid_stack_fails_preview_and_up_without_touching_livekit(
    clean_livekit, tmp_path, pulumi_env, mutate, words
):
    doc = copy.deepcopy(LOCAL)
    mutate(doc)
    sut = StackUnderTest(tmp_path, pulumi_env, "local", doc)
    for op in (sut.stack.preview, sut.stack.up):
        with pytest.raises(auto.errors.CommandError) as err:
            op()
        assert words in str(err.value)
        assert "local.yaml:" in str(err.value), "the message names the file and line"
        assert "Traceback" not in str(err.value)
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}


ENGINE_CASES = ["fargate-memory-for-cpu", "ecs-image-not-a-full-reference", "pin-discarded-by-rule",
                "unset-trunk-secret", "route-metadata-over-livekit-limit"]  # fmt: skip


def _preview_refuses_at_the_same_line(tmp_path, pulumi_env, environment, base, cases, names, problems) -> None:
    """Each named case's stack file fails `pulumi preview` with the file:line: field that `validate` reports."""
    by_name = {c[0]: c for c in cases}
    for i, name in enumerate(names):
        _, mutations, field, words = by_name[name]
        doc = copy.deepcopy(base)
        for mutate in mutations:
            mutate(doc)
        expected = [p for p in problems(doc) if p.field == field]
        assert expected, name
        sut = StackUnderTest(tmp_path / str(i), pulumi_env, environment, doc)
        with pytest.raises(auto.errors.CommandError) as err:
            sut.stack.preview()
        message = str(err.value)
        assert f"{environment}.yaml:{expected[0].line}: {field}: " in message, (name, message[-2000:])
        assert words in message and "Traceback" not in message, name
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}


@pytest.mark.engine
def test_preview_refuses_what_validate_refuses_at_the_same_line(clean_livekit, tmp_path, pulumi_env):
    """The same stack files `validate` rejects fail `pulumi preview` with the same file:line: field (one compile step)."""
    from tests.test_stack_validation import PREVIEW_CASES, _problems

    _preview_refuses_at_the_same_line(tmp_path, pulumi_env, "local", LOCAL, PREVIEW_CASES, ENGINE_CASES, _problems)


MODEL_ENGINE_CASES = ["defaults-test-model", "route-provider-without-key", "header-layer-test-model",
                      "outbound-provider-without-key"]  # fmt: skip


@pytest.mark.engine
def test_preview_refuses_model_and_credential_mistakes_at_the_same_line(clean_livekit, tmp_path, pulumi_env):
    """The prod stack file with a test model or a provider whose key its workers lack (one case per kind of layer)
    fails `pulumi preview` at the line `validate` names, before anything is declared."""
    from tests.test_stack_validation import MODEL_CASES, PROD, _prod_problems

    _preview_refuses_at_the_same_line(tmp_path, pulumi_env, "prod", PROD, MODEL_CASES, MODEL_ENGINE_CASES,
                                      _prod_problems)  # fmt: skip
