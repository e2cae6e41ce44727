"""Benchmark: deploy N inbound trunk + dispatch rule pairs through the real Pulumi engine, then a no-op preview.

Prints wall times and LiveKit API call counts, next to a minimal asyncio script that makes the same
creates against the same server in the same run (the floor). Ratios are engine time / floor time.

    uv run python bench/sip_deploy.py [N ...]      (default: 10 50)
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from livekit import api
from pulumi import automation as auto

from infra.livekit.client import CALL_LOG_ENV
from localenv import engine
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip

PROGRAM = Path(__file__).resolve().parent.parent / "tests" / "programs" / "sip"


def spec(n: int, prefix: str) -> dict:
    return {
        "inbound": {f"t{i}": {"name": f"{prefix}-t{i}", "numbers": [f"+1555030{i:04d}"]} for i in range(n)},
        "rules": {
            f"r{i}": {
                "name": f"{prefix}-r{i}",
                "rule": {"type": "individual", "room_prefix": "b"},
                "trunk_refs": [f"t{i}"],
            }
            for i in range(n)
        },
    }


async def floor(n: int, prefix: str) -> int:
    """The same creates with one client, trunks then rules, concurrently; returns API calls made."""
    lk = api.LiveKitAPI()
    try:
        trunks = await asyncio.gather(
            *(
                lk.sip.create_inbound_trunk(
                    api.CreateSIPInboundTrunkRequest(
                        trunk=api.SIPInboundTrunkInfo(name=f"{prefix}-t{i}", numbers=[f"+1555030{i:04d}"])
                    )
                )
                for i in range(n)
            )
        )
        await asyncio.gather(
            *(
                lk.sip.create_dispatch_rule(
                    api.CreateSIPDispatchRuleRequest(
                        dispatch_rule=api.SIPDispatchRuleInfo(
                            name=f"{prefix}-r{i}",
                            trunk_ids=[t.sip_trunk_id],
                            rule=api.SIPDispatchRule(
                                dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="b")
                            ),
                        )
                    )
                )
                for i, t in enumerate(trunks)
            )
        )
        return 2 * n
    finally:
        await lk.aclose()


def calls(log: Path) -> Counter[str]:
    c = Counter(log.read_text().split()) if log.exists() else Counter()
    log.unlink(missing_ok=True)
    return c


def run(n: int, work_root: Path) -> None:
    log = work_root / f"calls-{n}.log"
    env = engine.engine_env(
        work_root / f"state-{n}", secrets.token_urlsafe(16), work_root / "home", {CALL_LOG_ENV: str(log)}
    )
    work = work_root / f"program-{n}"
    shutil.copytree(PROGRAM, work)
    engine.write_project(work, "sip")
    stack = engine.select_stack(work, "bench", env)
    stack.set_config("spec", auto.ConfigValue(json.dumps(spec(n, f"e{n}"))))

    t0 = time.perf_counter()
    up = stack.up()
    t_up = time.perf_counter() - t0
    assert up.summary.result == "succeeded"
    c_up = calls(log)

    t0 = time.perf_counter()
    pv = stack.preview()
    t_preview = time.perf_counter() - t0
    assert pv.change_summary == {"same": 2 * n + 1}, pv.change_summary
    c_preview = calls(log)

    t0 = time.perf_counter()
    stack.destroy()
    t_destroy = time.perf_counter() - t0
    c_destroy = calls(log)

    t0 = time.perf_counter()
    floor_calls = asyncio.run(floor(n, f"f{n}"))
    t_floor = time.perf_counter() - t0
    wipe_sip()

    print(f"N={n} pairs ({2 * n} objects)")
    print(f"  pulumi up          {t_up:7.2f} s  {sum(c_up.values()):4d} LiveKit calls {dict(c_up)}")
    print(f"  no-op preview      {t_preview:7.2f} s  {sum(c_preview.values()):4d} LiveKit calls")
    print(f"  pulumi destroy     {t_destroy:7.2f} s  {sum(c_destroy.values()):4d} LiveKit calls")
    print(f"  asyncio floor      {t_floor:7.2f} s  {floor_calls:4d} LiveKit calls")
    print(f"  up / floor         {t_up / t_floor:7.1f} x")
    print(f"  up per object      {1000 * t_up / (2 * n):7.1f} ms (floor {1000 * t_floor / (2 * n):.1f} ms)")


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 50]
    root = Path(tempfile.mkdtemp(prefix="siphon-bench-"))
    with LocalEnv.start(root / "env") as env:
        assert env.endpoints is not None
        import os

        os.environ.update(env.endpoints.env())
        for n in sizes:
            run(n, root)


if __name__ == "__main__":
    main()
