"""The real Pulumi engine runs a Python program with one dynamic resource: preview, up, refresh, destroy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pulumi import automation as auto

from localenv import engine

PROGRAM = Path(__file__).parent / "programs" / "tiny"


@pytest.fixture
def tiny_stack(tmp_path: Path, pulumi_env: dict[str, str]) -> auto.Stack:
    work = tmp_path / "program"
    shutil.copytree(PROGRAM, work)
    engine.write_project(work, "tiny")
    stack = engine.select_stack(work, "dev", pulumi_env)
    stack.set_config("path", auto.ConfigValue(str(tmp_path / "greeting.txt")))
    stack.set_config("content", auto.ConfigValue("hello"))
    return stack


@pytest.mark.engine
def test_preview_up_update_refresh_destroy(tiny_stack: auto.Stack, tmp_path: Path):
    target = tmp_path / "greeting.txt"

    preview = tiny_stack.preview(diff=True)
    assert preview.change_summary == {"create": 2}
    assert "pulumi-python:dynamic/test:File: (create)" in preview.stdout
    assert not target.exists(), "preview must not create anything"

    up = tiny_stack.up()
    assert up.summary.result == "succeeded"
    assert up.outputs["content"].value == "hello"
    assert target.read_text() == "hello"

    tiny_stack.set_config("content", auto.ConfigValue("bonjour"))
    preview = tiny_stack.preview(diff=True)
    assert preview.change_summary == {"same": 1, "update": 1}
    assert '~ content: "hello" => "bonjour"' in preview.stdout
    tiny_stack.up()
    assert target.read_text() == "bonjour"

    target.write_text("edited by hand")
    refresh = tiny_stack.refresh()
    assert refresh.summary.resource_changes == {"same": 1, "update": 1}
    assert tiny_stack.preview().change_summary == {"same": 1, "update": 1}

    target.unlink()
    refresh = tiny_stack.refresh()
    assert refresh.summary.resource_changes.get("delete") == 1
    assert tiny_stack.preview().change_summary == {"same": 1, "create": 1}
    tiny_stack.up()
    assert target.read_text() == "bonjour"

    destroy = tiny_stack.destroy()
    assert destroy.summary.resource_changes == {"delete": 2}
    assert not target.exists()


@pytest.mark.engine
def test_program_error_is_reported_with_the_user_traceback(tiny_stack: auto.Stack):
    tiny_stack.remove_config("content")
    with pytest.raises(auto.errors.CommandError) as err:
        tiny_stack.preview()
    assert "Missing required configuration variable 'tiny:content'" in str(err.value)
