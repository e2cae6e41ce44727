"""Helpers for SIP resource tests: a stack of the tests/programs/sip program and LiveKit read-back."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from livekit import api
from pulumi import automation as auto

from infra.livekit.all_kinds import canonical
from localenv import engine
from localenv.reset import wipe_sip

PROGRAM = Path(__file__).parent / "programs" / "sip"


def sip_stack(tmp_path: Path, pulumi_env: dict[str, str], spec: dict[str, Any], password: str = "") -> auto.Stack:
    work = tmp_path / "program"
    if not work.exists():
        shutil.copytree(PROGRAM, work)
        engine.write_project(work, "sip")
    stack = engine.select_stack(work, "test", pulumi_env)
    set_spec(stack, spec)
    if password:
        stack.set_config("password", auto.ConfigValue(password, secret=True))
    return stack


def set_spec(stack: auto.Stack, spec: dict[str, Any]) -> None:
    stack.set_config("spec", auto.ConfigValue(json.dumps(spec)))


async def _dump() -> dict[str, list[Any]]:
    lk = api.LiveKitAPI()
    try:
        return {
            "inbound": list((await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items),
            "outbound": list((await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())).items),
            "rules": list((await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items),
        }
    finally:
        await lk.aclose()


def livekit_objects() -> dict[str, list[Any]]:
    """Every SIP object LiveKit holds, by kind (protobuf messages)."""
    return asyncio.run(_dump())


def livekit_canonical() -> dict[str, dict[str, dict[str, Any]]]:
    """Every SIP object as declared-shape dicts, by kind and name."""
    return {kind: {m.name: canonical(m) for m in items} for kind, items in livekit_objects().items()}


def wipe_livekit() -> None:
    """Delete every SIP object (per-test reset of the shared server)."""
    wipe_sip()
