"""Driving the real Pulumi engine (the pinned CLI) through the Automation API, hermetically.

State goes to a ``file://`` backend, secrets use the passphrase provider, plugins are never
downloaded, and the CLI is the one built by ``./dev setup``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pulumi import automation as auto

from localenv import tools

VENV = tools.REPO / ".venv"


def engine_env(
    backend_dir: Path, passphrase: str, pulumi_home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for the CLI and every process it starts (language host, dynamic providers)."""
    backend_dir.mkdir(parents=True, exist_ok=True)
    pulumi_home.mkdir(parents=True, exist_ok=True)
    env = {
        "PULUMI_BACKEND_URL": backend_dir.resolve().as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": passphrase,
        "PULUMI_HOME": str(pulumi_home),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
        "PULUMI_DISABLE_REGISTRY_RESOLVE": "true",
        "PULUMI_SKIP_CONFIRMATIONS": "true",
        "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
        # The dynamic-provider plugin script runs `python -m pulumi.dynamic` from this virtualenv.
        "PULUMI_RUNTIME_VIRTUALENV": str(VENV),
    }
    env.update(extra or {})
    return env


def pulumi_command() -> auto.PulumiCommand:
    """The pinned CLI from the tool cache (its bin/ also holds the language host and plugin scripts)."""
    tool = tools.pulumi_tool()
    tools.require_binary(tool)
    return auto.PulumiCommand(root=str(tool.home), skip_version_check=False)


def write_project(work_dir: Path, name: str, description: str = "") -> None:
    """Write a Pulumi.yaml for a Python program that runs in the project's virtualenv."""
    (work_dir / "Pulumi.yaml").write_text(
        f"name: {name}\n"
        f"description: {description or name}\n"
        "runtime:\n"
        "  name: python\n"
        "  options:\n"
        "    toolchain: pip\n"
        f"    virtualenv: {VENV}\n"
    )


def select_stack(work_dir: Path, stack: str, env: Mapping[str, str]) -> auto.Stack:
    """Create or select ``stack`` of the program in ``work_dir``."""
    return auto.create_or_select_stack(
        stack_name=stack,
        work_dir=str(work_dir),
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(work_dir),
            pulumi_home=env["PULUMI_HOME"],
            env_vars=dict(env),  # added to os.environ, which the CLI and its plugins inherit
            secrets_provider="passphrase",
            pulumi_command=pulumi_command(),
        ),
    )
