"""Deployed stacks survive an upgrade: state written by each release works with the current code.

Each release in ``RELEASES`` is checked out in a git worktree of its commit and deploys the
``local`` stack (its own program, stack file and config, its own ``infra``/``worker`` code in the
program and in the dynamic provider process). Then the current code, against the same state: refresh
(nothing drifted), preview (type tokens and provider classes unpickled by their import paths; what
changes is listed in ``UPGRADE_UPDATES`` and ``UPGRADE_CREATES``: since 0.1.0, an in-place update of each ECS worker,
which gains call protection; since 0.2.0, the stack's death queue, created, and each ECS worker updated to read it;
no route changes), then no changes, a one-field edit (exactly one in-place update) and destroy (nothing left in
LiveKit or on ECS).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from pulumi import automation as auto

from contract.deployment import CALL_PROTECTION_ENV, DEATH_QUEUE_ENV
from infra.ecs.naming import death_queue_name, default_service_name
from localenv import engine
from localenv.deploy import LOCAL_PASSPHRASE, LOCAL_STACK
from tests.sip_harness import livekit_objects, wipe_livekit

REPO = Path(__file__).resolve().parents[1]
RELEASES = REPO / "RELEASES"
DEATH_QUEUE = death_queue_name(LOCAL_STACK)


def releases() -> list[tuple[str, str]]:
    """(version, commit) of every recorded release, oldest first."""
    rows = [line.split() for line in RELEASES.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(version, commit) for version, commit in rows]


def test_the_newest_release_is_recorded_with_its_commit_and_changelog_entry():
    version, commit = releases()[-1]
    assert len(commit) == 40, "a full commit id: short ones can become ambiguous"
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-t", commit], capture_output=True, text=True)
    assert found.stdout.strip() == "commit", f"release {version}'s commit {commit} is not in this clone"
    assert f"## {version} (" in (REPO / "CHANGELOG.md").read_text()


UPGRADE_UPDATES = {"0.1.0": "ecs", "0.2.0": "ecs"}
"""What the current code changes in state written by a release: "ecs", one in-place update of each ECS worker
(0.1.0's gain call protection and ``SIPHON_ENVIRONMENT``; every release's gain the death queue's URL and their
permission to read it); a release not listed: nothing at all."""
UPGRADE_CREATES = {"0.1.0": 1, "0.2.0": 1}
"""Resources the current code adds to a release's stack: the stack's death queue (``WorkerDeathQueue``)."""


@pytest.fixture(params=[version for version, _ in releases()])
def release_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(version, a git worktree of that release's commit), for every recorded release (removed afterwards)."""
    version = request.param
    commit = dict(releases())[version]
    tree = tmp_path / "release"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield version, tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def _program(work: Path, source: Path) -> None:
    """Lay out the stack program of ``source`` (a checkout) in ``work``: entry point, local stack file, config."""
    (work / "stacks").mkdir(parents=True, exist_ok=True)
    engine.write_project(work, "siphon")
    with (work / "Pulumi.yaml").open("a") as f:
        f.write("main: stacks/\nstackConfigDir: stacks\n")
    for name in ("__main__.py", f"{LOCAL_STACK}.yaml", f"Pulumi.{LOCAL_STACK}.yaml"):
        shutil.copy(source / "stacks" / name, work / "stacks" / name)


def _stack(work: Path, env: dict[str, str]) -> auto.Stack:
    return engine.select_stack(work, LOCAL_STACK, env)


@pytest.mark.engine
def test_a_stack_deployed_by_each_release_upgrades_to_the_current_code(
    endpoints, aws, tmp_path, pulumi_env, release_tree
):
    version, release_tree = release_tree
    wipe_livekit()
    work = tmp_path / "project"
    env = {**pulumi_env, "PULUMI_CONFIG_PASSPHRASE": LOCAL_PASSPHRASE, "SIPHON_STACKS_DIR": str(work / "stacks")}

    # the release deploys, with its own code in the program and in the provider process
    release_env = {**env, "PYTHONPATH": str(release_tree)}
    where = subprocess.run([sys.executable, "-c", "import infra, worker; print(infra.__file__, worker.__file__)"],
                           env={**os.environ, **release_env}, cwd=tmp_path, capture_output=True, text=True, check=True)  # fmt: skip
    assert all(p.startswith(str(release_tree)) for p in where.stdout.split()), where.stdout
    _program(work, release_tree)
    outputs = {k: v.value for k, v in _stack(work, release_env).up().outputs.items()}
    before = {r.name: r.sip_dispatch_rule_id for r in livekit_objects()["rules"]}
    assert set(before) == {f"{LOCAL_STACK}-{row['route']}" for row in outputs["routing_table"].values()}

    # the current code takes over the same state and the same stack file (what a user has when upgrading)
    shutil.copy(REPO / "stacks" / "__main__.py", work / "stacks" / "__main__.py")
    stack = _stack(work, env)
    refreshed = stack.refresh()
    assert set(refreshed.summary.resource_changes or {}) <= {"same"}, refreshed.summary.resource_changes
    doc = yaml.safe_load((work / "stacks" / f"{LOCAL_STACK}.yaml").read_text())
    ecs_agents = [name for name, agent in doc["agents"].items() if agent.get("ecs")]
    assert ecs_agents, "the local stack deploys ECS workers"
    upgrade = stack.preview()
    updates = len(ecs_agents) if UPGRADE_UPDATES.get(version) == "ecs" else 0
    creates = UPGRADE_CREATES.get(version, 0)
    assert upgrade.change_summary == {
        "same": upgrade.change_summary["same"],
        **({"update": updates} if updates else {}),
        **({"create": creates} if creates else {}),
    }
    stack.up()
    for agent in ecs_agents:
        service = boto3.client("ecs").describe_services(
            cluster="siphon-local", services=[default_service_name("local", agent)]
        )
        td = boto3.client("ecs").describe_task_definition(taskDefinition=service["services"][0]["taskDefinition"])
        env = {e["name"]: e["value"] for e in td["taskDefinition"]["containerDefinitions"][0]["environment"]}
        assert env[CALL_PROTECTION_ENV] == "60", agent
        assert env[DEATH_QUEUE_ENV] == boto3.client("sqs").get_queue_url(QueueName=DEATH_QUEUE)["QueueUrl"], agent
    assert {r.name: r.sip_dispatch_rule_id for r in livekit_objects()["rules"]} == before, "routes untouched"
    stack.preview(expect_no_changes=True)  # raises if anything would change

    edited = copy.deepcopy(doc)
    edited["inbound_routes"]["sales"]["agent_config"]["greeting_instructions"] = "Sales, upgraded. How can I help?"
    (work / "stacks" / f"{LOCAL_STACK}.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    preview = stack.preview()
    assert preview.change_summary == {"same": preview.change_summary["same"], "update": 1}, preview.change_summary
    stack.up()
    rules = {r.name: r for r in livekit_objects()["rules"]}
    assert {n: r.sip_dispatch_rule_id for n, r in rules.items()} == before, "updated in place, same ids"
    sales = json.loads(rules[f"{LOCAL_STACK}-sales"].room_config.agents[0].metadata)
    assert sales["agent_config"]["greeting_instructions"] == "Sales, upgraded. How can I help?"

    stack.destroy()
    assert livekit_objects() == {"inbound": [], "outbound": [], "rules": []}
    clusters = boto3.client("ecs").describe_clusters(clusters=["siphon-local"])["clusters"]
    assert [c["status"] for c in clusters] in ([], ["INACTIVE"]), "the stack's ECS cluster is gone"
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == [], "the stack's death queue is gone"
