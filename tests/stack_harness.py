"""Run the real stack program (stacks/__main__.py) on an editable copy of a stack file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from localenv import engine
from localenv.deploy import LOCAL_PASSPHRASE, LOCAL_STACK

REPO = Path(__file__).resolve().parents[1]


class StackUnderTest:
    """A temp copy of the project with one editable stack file, driven through the Automation API."""

    def __init__(self, tmp_path: Path, pulumi_env: dict[str, str], environment: str, doc: dict[str, Any]) -> None:
        self.work = tmp_path / "project"
        (self.work / "stacks").mkdir(parents=True)
        shutil.copy(REPO / "stacks" / "__main__.py", self.work / "stacks" / "__main__.py")
        engine.write_project(self.work, "siphon")
        with (self.work / "Pulumi.yaml").open("a") as f:
            f.write("main: stacks/\nstackConfigDir: stacks\n")
        self.environment = environment
        self.write(doc)
        env = {**pulumi_env, "SIPHON_STACKS_DIR": str(self.work / "stacks")}
        if environment == LOCAL_STACK:  # its committed config holds the local test passwords (encrypted)
            shutil.copy(REPO / "stacks" / f"Pulumi.{LOCAL_STACK}.yaml", self.work / "stacks")
            env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_PASSPHRASE
        self.stack = engine.select_stack(self.work, environment, env)

    def stack_file(self) -> Any:
        """The parsed stack file under test."""
        from infra.stack.load import load

        return load(self.work / "stacks" / f"{self.environment}.yaml")[0]

    def write(self, doc: dict[str, Any]) -> None:
        (self.work / "stacks" / f"{self.environment}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def preview_json(self) -> dict[str, Any]:
        """`pulumi preview --json` through the same CLI and settings."""
        import json
        import subprocess

        ws = self.stack.workspace
        cli = engine.pulumi_command()
        out = subprocess.run(
            [f"{cli.command}", "preview", "--json", "--stack", self.environment, "--non-interactive"],
            cwd=self.work, env={**__import__("os").environ, **ws.env_vars}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return json.loads(out.stdout)
