"""The pinned tools are the ones the project builds, and a warm set-up rebuilds nothing."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

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


def test_actionlint_is_the_pinned_build():
    actionlint = tools.require_binary(tools.actionlint_tool())
    assert _out(str(actionlint), "--version").splitlines()[0] == tools.ACTIONLINT_VERSION


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


def test_livekit_sip_is_the_pinned_build_from_the_wrapper_module():
    bridge = tools.require_binary(tools.livekit_sip_tool())
    assert _out(str(bridge), "--version") == f"SIP version {tools.LIVEKIT_SIP_VERSION.lstrip('v')}"
    gomod = (tools.LIVEKIT_SIP_WRAPPER / "go.mod").read_text()
    assert f"require github.com/livekit/sip {tools.LIVEKIT_SIP_VERSION}" in gomod
    gosum = (tools.LIVEKIT_SIP_WRAPPER / "go.sum").read_text()
    assert f"github.com/livekit/sip {tools.LIVEKIT_SIP_VERSION} h1:" in gosum, "builds verify the module against go.sum"


def test_the_bridge_is_rebuilt_when_its_wrapper_module_changes(tmp_path, monkeypatch):
    before = tools.livekit_sip_tool()
    wrapper = tmp_path / "livekit-sip"
    wrapper.mkdir()
    for f in tools.LIVEKIT_SIP_WRAPPER.iterdir():
        (wrapper / f.name).write_bytes(f.read_bytes())
    (wrapper / "go.mod").write_text((wrapper / "go.mod").read_text() + "\n// changed\n")
    monkeypatch.setattr(tools, "LIVEKIT_SIP_WRAPPER", wrapper)
    monkeypatch.setattr(tools, "REPO", tmp_path)
    after = tools.livekit_sip_tool()
    assert after.key != before.key and after.home != before.home and not after.installed()


def test_the_go_module_mirror_comes_from_the_environment_or_beside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv(tools.GO_MIRROR_ENV, str(tmp_path))
    assert tools.go_mirror() == tmp_path.resolve()
    monkeypatch.setenv(tools.GO_MIRROR_ENV, str(tmp_path / "missing"))
    with pytest.raises(tools.ToolError, match=tools.GO_MIRROR_ENV):
        tools.go_mirror()
