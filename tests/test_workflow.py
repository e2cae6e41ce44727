"""The pull-request preview workflow is valid YAML that follows the Pulumi GitHub Action's conventions, and actionlint
finds no problem in it (it has never run on GitHub)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from localenv import tools

REPO = Path(__file__).resolve().parents[1]


def test_preview_workflow_uses_pulumi_actions_for_every_deployed_stack():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "preview.yml").read_text())
    assert "pull_request" in wf[True]  # YAML 1.1 reads the `on:` key as True
    assert wf["permissions"]["pull-requests"] == "write"
    job = wf["jobs"]["preview"]
    stacks = sorted(p.stem for p in (REPO / "stacks").glob("*.yaml") if not p.name.startswith("Pulumi."))
    assert sorted(job["strategy"]["matrix"]["stack"]) == [s for s in stacks if s != "local"]
    steps = {s.get("name", s.get("uses", "")): s for s in job["steps"]}
    pulumi = next(s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["stack-name"] == "${{ matrix.stack }}"
    assert pulumi["with"]["comment-on-pr"] is True and pulumi["with"]["diff"] is True
    assert pulumi["with"]["pulumi-version"] == "3.260.0"
    assert "siphon-infra validate" in steps["Validate the stack file (offline)"]["run"]
    assert "siphon-infra summary" in steps["Routing summary"]["run"]


def test_every_deployed_stack_is_rehearsed_and_its_report_posted_without_any_secret():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "preview.yml").read_text())
    job = wf["jobs"]["rehearse"]
    assert sorted(job["strategy"]["matrix"]["stack"]) == sorted(wf["jobs"]["preview"]["strategy"]["matrix"]["stack"])
    assert "secrets." not in yaml.safe_dump(job)  # the rehearsal needs no secret of the environment
    runs = [s.get("run", "") for s in job["steps"]]
    assert any("./dev rehearse ${{ matrix.stack }} --report rehearsal.md" in r for r in runs)
    assert any("gh pr comment" in r and "rehearsal.md" in r for r in runs)


def test_actionlint_finds_no_problem_in_the_workflows():
    """actionlint (pinned in localenv/tools.py, built by ./dev setup) checks the syntax, the expressions and their
    types, the known actions' inputs and, through shellcheck, every ``run:`` script. A missing tool fails the test."""
    actionlint = tools.require_binary(tools.actionlint_tool())
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run `./dev setup` (Debian package shellcheck)"
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.y*ml"))
    assert workflows, "no workflow found"
    run = subprocess.run(
        [str(actionlint), "-no-color", f"-shellcheck={shellcheck}", *workflows],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"actionlint exited {run.returncode}:\n{run.stdout}{run.stderr}"
