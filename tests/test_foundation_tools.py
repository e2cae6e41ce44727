"""The pinned tools are the ones the project builds, and a warm set-up rebuilds nothing."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib

from localenv import tools


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_pulumi_cli_prints_the_pinned_version_and_matches_the_sdk():
    cli = tools.require_binary(tools.pulumi_tool())
    assert _out(str(cli), "version") == f"v{tools.PULUMI_VERSION}"
    assert importlib.metadata.version("pulumi") == tools.PULUMI_VERSION
    pyproject = tomllib.loads((tools.REPO / "pyproject.toml").read_text())
    assert f"pulumi=={tools.PULUMI_VERSION}" in pyproject["project"]["dependencies"]
    gomod = (tools.PULUMI_WRAPPER / "go.mod").read_text()
    assert f"github.com/pulumi/pulumi/pkg/v3 v{tools.PULUMI_VERSION}" in gomod
    assert f"github.com/pulumi/pulumi/sdk/v3 v{tools.PULUMI_VERSION}" in gomod


def test_language_host_and_plugin_scripts_sit_next_to_the_cli():
    tool = tools.pulumi_tool()
    for binary in tool.binaries:
        path = tool.path(binary)
        assert path.exists(), binary
        assert os.access(path, os.X_OK), binary


def test_livekit_server_is_the_pinned_build():
    server = tools.require_binary(tools.livekit_server_tool())
    assert tools.LIVEKIT_SERVER_VERSION.lstrip("v") in _out(str(server), "--version")


def test_warm_setup_rebuilds_nothing():
    run = subprocess.run(
        [sys.executable, "-m", "localenv.tools", "install"],
        cwd=tools.REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    commands = [line for line in run.stderr.splitlines() if line.startswith("[setup] $")]
    builds = [c for c in commands if " build " in c or " install " in c]
    assert builds == [], f"a warm set-up ran builds: {builds}"


def test_cache_key_follows_the_build_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SIPHON_CACHE", str(tmp_path))
    tool = tools.pulumi_tool()
    assert tool.home.parent == tmp_path
    assert tool.home.name == f"pulumi-{tools.PULUMI_VERSION}-{tool.key}"
    assert not tool.installed()
