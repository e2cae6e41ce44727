"""PROTOTYPE check: does the one-resource routing table (``bench/prototype_table.py``) keep what the product promises?

Against a real livekit-server and the real engine, for N routes (default 20) plus one trunk with a
password, it checks and prints each of:

- a cold ``up`` makes one LiveKit call per object (plus one listing per kind);
- a no-op preview calls LiveKit not at all and shows no change;
- ``preview --diff`` of one prompt change names that route and field, and no other route;
- that ``up`` makes exactly 1 LiveKit update and 0 deletes;
- the trunk password appears in plain text nowhere: state, preview/up/refresh output;
- a password change is shown as ``[secret]`` on that one field, the rest of the trunk stays readable;
- ``pulumi refresh`` reports one rule edited and one trunk deleted outside Pulumi, on their entries,
  and the next ``up`` repairs exactly those (1 update, 1 create + the rule that points at the trunk);
- ``destroy`` deletes every object once;
- a stack deployed with one resource per object (as release 0.1.0 deploys) and switched to the table
  keeps every LiveKit object (it does not: the check shows why the table is not shipped).

    uv run python -m bench.prototype_table_check [N]
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from livekit import api

from bench.sip_deploy import PROGRAM, Calls, declare, prompt, restore_sigint, spec, stack_for
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip

TABLE = PROGRAM.parent / "table"
PASSWORD = "pw-Zq8v1-not-for-output"
NEW_PASSWORD = "pw-Kc3r7-not-for-output-either"

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> None:
    results.append((ok, what))
    print(("PASS " if ok else "FAIL ") + what, flush=True)


def shown_diff(stack: Any, title: str, seen: list[str]) -> list[str]:
    """The change lines of ``pulumi preview --diff`` (printed under ``title``); its output joins ``seen``."""
    pv = stack.preview(diff=True)
    seen.append(pv.stdout)
    shown = [line for line in pv.stdout.splitlines() if line.strip().startswith(("~", "+", "-"))]
    print("\n".join([f"  preview --diff {title}:", *("    " + s for s in shown)]))
    return shown


def with_secret_trunk(routes: dict[str, Any], password: str) -> dict[str, Any]:
    out = copy.deepcopy(routes)
    out["inbound"]["secure"] = {
        "name": "proto-secure",
        "numbers": ["+15553999999"],
        "auth_username": "carrier",
        "auth_password": password,
    }
    return out


async def _edit_out_of_band(rule_name: str, trunk_name: str) -> None:
    async with api.LiveKitAPI() as lk:
        rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
        rule = next(r for r in rules if r.name == rule_name)
        rule.room_config.agents[0].metadata = prompt(99, version=9)
        await lk.sip.update_dispatch_rule(rule.sip_dispatch_rule_id, rule)
        trunks = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
        trunk = next(t for t in trunks if t.name == trunk_name)
        await lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))


def run(n: int, root: Path, calls: Calls) -> None:
    stack = stack_for(root, "table", TABLE, calls)
    routes = with_secret_trunk(spec(n, "p"), PASSWORD)
    declare(stack, routes)
    seen: list[str] = []  # every preview/up/refresh output, searched for the passwords at the end

    up = stack.up()
    seen.append(up.stdout)
    got = calls.take()
    check(
        got == {"ListSIPInboundTrunk": 1, "ListSIPDispatchRule": 1, "CreateSIPInboundTrunk": n + 1,
                "CreateSIPDispatchRule": n},
        f"cold up: one call per object plus one listing per kind ({dict(got)})",
    )  # fmt: skip

    pv = stack.preview(diff=True)
    seen.append(pv.stdout)
    check(pv.change_summary == {"same": 2} and calls.take() == Counter(), "no-op preview: no change, no LiveKit call")

    changed = copy.deepcopy(routes)
    changed["rules"]["r1"]["room_config"]["agents"][0]["metadata"] = prompt(1, version=2)
    declare(stack, changed)
    shown = shown_diff(stack, "of one prompt change", seen)
    check(
        any("r1" in s for s in shown)
        and any("metadata" in s for s in shown)
        and not any(f"r{i}:" in s or f'"r{i}"' in s for i in range(n) if i != 1 for s in shown),
        "preview --diff names the route (r1) and the field (metadata), and no other route",
    )
    up = stack.up()
    seen.append(up.stdout)
    got = calls.take()
    check(got == {"UpdateSIPDispatchRule": 1}, f"prompt change: exactly 1 LiveKit update, 0 deletes ({dict(got)})")

    repassed = with_secret_trunk(changed, NEW_PASSWORD)
    repassed["inbound"]["secure"]["auth_username"] = "carrier-2"
    declare(stack, repassed)
    shown = shown_diff(stack, "of a password + username change", seen)
    check(
        any("secure" in s for s in shown) and any("auth_username" in s for s in shown),
        "password + username change: the trunk (secure) and its readable field are shown (the password, like any "
        "secret, is not: the engine shows no diff of secrets, pulumi#16687, also for the per-object resources)",
    )
    up = stack.up()
    seen.append(up.stdout)
    got = calls.take()
    check(got == {"UpdateSIPInboundTrunk": 1}, f"password change: exactly 1 LiveKit update ({dict(got)})")

    edited, deleted = n - 1, n - 2  # a rule edited, a trunk (of another route) deleted outside Pulumi
    asyncio.run(_edit_out_of_band(f"p-r{edited}", f"p-t{deleted}"))
    refreshed = stack.refresh()
    seen.append(refreshed.stdout)
    calls.take()
    check(refreshed.summary.resource_changes == {"same": 1, "update": 1}, "refresh reports drift on the table")
    shown = shown_diff(stack, "after refresh", seen)
    check(
        any(f"r{edited}" in s for s in shown) and any(f"t{deleted}" in s for s in shown),
        f"after refresh, preview shows the edited rule r{edited} and the deleted trunk t{deleted}",
    )
    up = stack.up()
    seen.append(up.stdout)
    got = calls.take()
    check(
        got == {"UpdateSIPDispatchRule": 2, "ListSIPInboundTrunk": 1, "CreateSIPInboundTrunk": 1},
        f"up repairs r{edited}, recreates t{deleted} and rewrites r{deleted}, which points at it ({dict(got)})",
    )

    backend = Path(stack.workspace.env_vars["PULUMI_BACKEND_URL"].removeprefix("file://"))
    state = "\n".join(p.read_text(errors="replace") for p in backend.rglob("*") if p.is_file())  # with history
    for password in (PASSWORD, NEW_PASSWORD):
        check(password not in state, "password not in plain text in the state files (current, backups, history)")
        check(all(password not in out for out in seen), "password not in plain text in preview/up/refresh output")

    stack.destroy()
    got = calls.take()
    check(got == {"DeleteSIPDispatchRule": n, "DeleteSIPTrunk": n + 1}, f"destroy deletes every object ({dict(got)})")


def upgrade(n: int, root: Path, calls: Calls) -> None:
    """A stack deployed with one resource per object, switched to the table: what the upgrade would do."""
    stack = stack_for(root, "upgrade", PROGRAM, calls)
    declare(stack, spec(n, "u"))
    stack.up()
    calls.take()
    shutil.copy(TABLE / "__main__.py", Path(stack.workspace.work_dir) / "__main__.py")  # the new program
    summary = stack.preview().change_summary
    check(
        summary == {"same": 1, "create": 1},
        f"upgrade from per-object resources: preview changes nothing in LiveKit's terms ({summary}: every "
        "per-object resource leaves the program, and no alias can map many resources onto one)",
    )
    stack.up()
    got = calls.take()
    left = len(asyncio.run(_names()))
    check(left == 2 * n, f"upgrade: every LiveKit object survives ({left} of {2 * n} left; calls {dict(got)})")
    stack.destroy()
    wipe_sip()


async def _names() -> list[str]:
    async with api.LiveKitAPI() as lk:
        rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
        trunks = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
    return [r.name for r in rules] + [t.name for t in trunks]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    restore_sigint()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    root = Path(tempfile.mkdtemp(prefix="siphon-table-"))
    with LocalEnv.start(root / "env") as env:
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())
        wipe_sip()
        with Calls.start(env.endpoints.livekit_url) as calls:
            run(n, root, calls)
            upgrade(min(n, 5), root, calls)
    shutil.rmtree(root, ignore_errors=True)
    failed = [w for ok, w in results if not ok]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
