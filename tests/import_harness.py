"""Helpers for the import tests: run `siphon-infra import`, deploy what it wrote, count LiveKit calls.

The calls are counted at a proxy in front of livekit-server (the ``livekit_calls`` fixture): a test imports through
it (``run_import(..., url=livekit_calls.url)``), so the stack file it deploys names the proxy as its LiveKit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from bench.sip_deploy import Calls  # counts the engine processes' LiveKit calls
from infra.cli import main
from tests.sip_harness import livekit_objects
from tests.stack_harness import StackUnderTest

WRITES = ("CreateSIPInboundTrunk", "CreateSIPOutboundTrunk", "CreateSIPDispatchRule", "UpdateSIPInboundTrunk",
          "UpdateSIPOutboundTrunk", "UpdateSIPDispatchRule", "DeleteSIPTrunk", "DeleteSIPDispatchRule")  # fmt: skip


def run_import(capsys: Any, out: Path, *extra: str, environment: str = "local", url: str = "") -> tuple[int, str]:
    """`siphon-infra import` against the session's LiveKit (at ``url``, default LIVEKIT_URL); (exit code, stdout +
    stderr)."""
    import os

    code = main(["import", environment, "--url", url or os.environ["LIVEKIT_URL"], "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def secret_commands(output: str) -> list[str]:
    """The config keys the import told the user to set."""
    return re.findall(r"pulumi config set --secret (\S+) --stack", output)


def deployed(tmp_path: Path, pulumi_env: dict[str, str], text: str, passwords: dict[str, str], calls: Calls,
             environment: str = "local") -> StackUnderTest:  # fmt: skip
    """The imported stack file under the real engine, its secrets set, its LiveKit calls counted by ``calls`` (the
    file names ``calls.url`` when it was imported through it; the engine is given it as LIVEKIT_URL too)."""
    sut = StackUnderTest(tmp_path, {**pulumi_env, **calls.env()}, environment, yaml.safe_load(text))
    (sut.work / "stacks" / f"{environment}.yaml").write_text(text)
    for key, value in passwords.items():
        sut.stack.set_config(key, auto.ConfigValue(value, secret=True))
    return sut


def bridge_call(number: str, wait: float = 20.0) -> dict[str, str]:
    """One inbound call through livekit-sip to ``number``; the answering agent's published attributes."""
    import asyncio
    import os

    from livekit import api

    from infra import sipp
    from infra.verify import TEST_CALLER, observe

    async def run() -> dict[str, str]:
        lk = api.LiveKitAPI()
        try:
            known = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
            call = sipp.place(os.environ["SIPHON_SIP_ADDRESS"], number, caller=TEST_CALLER, hold_s=wait + 15,
                              answer_timeout_s=8)  # fmt: skip
            seen = await observe(lk, call, known, wait)
            if seen.room:
                await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
            await asyncio.to_thread(call.wait, 15)
            assert seen.attributes, f"no agent answered {number} (room {seen.room!r}, dispatched {seen.dispatched})"
            return seen.attributes
        finally:
            await lk.aclose()

    return asyncio.run(run())


def snapshot() -> dict[str, dict[str, bytes]]:
    """Every SIP object LiveKit holds, serialised (byte-for-byte comparison)."""
    return {kind: {m.name + "/" + (getattr(m, "sip_trunk_id", "") or m.sip_dispatch_rule_id): m.SerializeToString(
        deterministic=True) for m in items} for kind, items in livekit_objects().items()}  # fmt: skip


def adoption_cycle(sut: StackUnderTest, calls: Calls, edit: Any, after_up: Any = None) -> dict[str, Any]:
    """Preview (only creates), up (count writes), preview (no changes), one edit (one update). Returns the figures;
    ``after_up`` runs after the first up."""
    before = snapshot()
    preview = sut.stack.preview()
    assert set(preview.change_summary) == {"create"}, preview.change_summary
    calls.take()
    logs: list[str] = []
    up = sut.stack.up(on_output=logs.append)
    first_up = calls.take()
    assert up.summary.result == "succeeded"
    writes = {k: first_up[k] for k in WRITES if first_up[k]}
    assert writes == {}, f"the first up wrote to LiveKit: {writes}"
    assert snapshot() == before, "an adopted object changed"
    if after_up is not None:
        after_up()
    again = sut.stack.preview()
    assert set(again.change_summary) == {"same"}, again.change_summary
    calls.take()
    edit()
    changed = sut.stack.up()
    change_calls = calls.take()
    changes = {str(k): v for k, v in (changed.summary.resource_changes or {}).items()}
    assert changes.get("update") == 1, changes
    assert {k: change_calls[k] for k in WRITES if change_calls[k]} == {"UpdateSIPDispatchRule": 1}, change_calls
    return {"first_up_calls": dict(first_up), "logs": "\n".join(logs), "resources": preview.change_summary["create"]}
