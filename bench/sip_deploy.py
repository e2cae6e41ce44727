"""Benchmark: N inbound routes (trunk + dispatch rule each) through the real Pulumi engine, with same-run baselines.

For each N, against one livekit-server started for the run, from an empty server each time:

- ours: ``pulumi up`` (cold), a no-op ``preview``, an ``up`` that changes one route's prompt, ``destroy``;
  wall time and the LiveKit calls the providers made, by method;
- SIPHON 0.1.4's own ``Dispatch(...).agent_dispatch()`` loop for the same numbers (``bench/siphon_loop.py``);
- the asyncio floor: the same creates from one client, concurrently;
- once: ``pulumi preview`` of an empty program and of our program with no routes (the engine's fixed cost),
  and of a program with ONE do-nothing dynamic resource (``bench/programs/floor_one``: the least any
  program using a Python dynamic provider pays: the provider process);
- the floor: the same resources as do-nothing dynamic resources (``bench/programs/floor``): no-op preview;
- PROTOTYPE (not in the product): the same routes as ONE resource (``bench/prototype_table.py``): up,
  no-op preview, the same prompt change, destroy.

Ratios, not absolute times, are the result (this machine is shared and small).

    uv run python -m bench.sip_deploy [N ...] [--checkpoints]     (default: 10 50 200 500)

The engine runs with PULUMI_SKIP_CHECKPOINTS=true, as README recommends for large stacks (the
default engine rewrites the whole state file after every step: quadratic in the number of
resources); ``--checkpoints`` measures the default instead.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livekit import api
from pulumi import automation as auto

from bench import siphon_loop
from contract.wire import LIVEKIT_URL_ENV
from localenv import engine
from localenv.api_proxy import ApiProxy
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip

SKIP_CHECKPOINTS = "PULUMI_SKIP_CHECKPOINTS"
PROGRAM = Path(__file__).resolve().parent / "programs" / "routes"
FLOOR = PROGRAM.parent / "floor"
FLOOR_ONE = PROGRAM.parent / "floor_one"
TABLE = PROGRAM.parent / "table"


def number(i: int) -> str:
    return f"+1555{3_000_000 + i:07d}"


def prompt(i: int, version: int = 1) -> str:
    return json.dumps({"agent_config": {"system_instructions": f"You answer route {i} (v{version})."}})


def spec(n: int, prefix: str) -> dict[str, Any]:
    """N routes: an inbound trunk for one number and an individual rule dispatching an agent with a prompt."""
    return {
        "inbound": {f"t{i}": {"name": f"{prefix}-t{i}", "numbers": [number(i)]} for i in range(n)},
        "rules": {
            f"r{i}": {
                "name": f"{prefix}-r{i}",
                "rule": {"type": "individual", "room_prefix": "inbound-call-"},
                "trunk_refs": [f"t{i}"],
                "room_config": {"agents": [{"agent_name": f"{prefix}-agent", "metadata": prompt(i)}]},
            }
            for i in range(n)
        },
    }


async def floor(n: int, prefix: str) -> int:
    """The same creates from one client, all trunks then all rules, concurrently; returns API calls made."""
    async with api.LiveKitAPI() as lk:
        trunks = await asyncio.gather(
            *(
                lk.sip.create_inbound_trunk(
                    api.CreateSIPInboundTrunkRequest(
                        trunk=api.SIPInboundTrunkInfo(name=f"{prefix}-t{i}", numbers=[number(i)])
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
                                dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix="inbound-call-")
                            ),
                            room_config=api.RoomConfiguration(
                                agents=[api.RoomAgentDispatch(agent_name=f"{prefix}-agent", metadata=prompt(i))]
                            ),
                        )
                    )
                )
                for i, t in enumerate(trunks)
            )
        )
    return 2 * n


@dataclass
class Phase:
    seconds: float
    calls: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@dataclass
class Deploy:
    """One program's `up`, no-op preview (best of 2), one-prompt change and destroy."""

    up: Phase
    preview: Phase
    change: Phase
    destroy: Phase


@dataclass
class Row:
    n: int
    ours: Deploy
    siphon: Phase
    floor: Phase
    null_preview: Phase  # the same resources doing nothing: the engine's and SDK's cost per resource
    table: Deploy  # PROTOTYPE: the same routes as one resource

    @property
    def up(self) -> Phase:
        return self.ours.up

    @property
    def preview(self) -> Phase:
        return self.ours.preview

    @property
    def change(self) -> Phase:
        return self.ours.change

    @property
    def destroy(self) -> Phase:
        return self.ours.destroy


class Calls:
    """LiveKit calls made by the engine's processes (program and providers): counted by method at a proxy in front of
    livekit-server (``localenv/api_proxy.py``) whose URL they are given as ``LIVEKIT_URL`` (``env()``), or as the
    stack file's ``livekit.url`` (``url``). The product keeps no request log of its own."""

    def __init__(self, proxy: ApiProxy) -> None:
        self.proxy = proxy
        self._seen = 0

    @classmethod
    def start(cls, livekit_url: str) -> Calls:
        """A proxy in front of the livekit-server at ``livekit_url``, counting from now; ``stop()`` ends it."""
        return cls(ApiProxy.start(livekit_url))

    @property
    def url(self) -> str:
        """The proxy's URL: what the counted processes use as LiveKit's."""
        return self.proxy.url

    def env(self) -> dict[str, str]:
        """The environment that sends a process's LiveKit calls through the proxy."""
        return {LIVEKIT_URL_ENV: self.proxy.url}

    def take(self) -> Counter[str]:
        """The calls answered since the last ``take``, by method (``CreateSIPInboundTrunk``)."""
        calls = self.proxy.calls()
        new, self._seen = calls[self._seen :], len(calls)
        return Counter(c.method.rsplit("/", 1)[-1] for c in new)

    def stop(self) -> None:
        """Stop the proxy."""
        self.proxy.stop()

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def timed(fn: Any, calls: Calls) -> tuple[Any, Phase]:
    calls.take()
    t0 = time.perf_counter()
    result = fn()
    return result, Phase(time.perf_counter() - t0, calls.take())


def stack_for(root: Path, name: str, program: Path, calls: Calls, extra: dict[str, str] | None = None) -> auto.Stack:
    env = engine.engine_env(
        root / f"state-{name}",
        secrets.token_urlsafe(16),
        root / "home",
        {**calls.env(), **(extra or {})},
    )
    work = root / f"program-{name}"
    shutil.copytree(program, work)
    engine.write_project(work, "sip")
    return engine.select_stack(work, "bench", env)


def declare(stack: auto.Stack, routes: dict[str, Any]) -> None:
    """Write the routes the program declares (a file: too big for a config value on the command line)."""
    (Path(stack.workspace.work_dir) / "spec.json").write_text(json.dumps(routes))


@dataclass
class Fixed:
    """Preview seconds (best of 3) of programs whose cost does not grow with N."""

    empty: float  # declares nothing: the engine's fixed cost, the baseline of every ratio
    zero: float  # our program declaring no routes
    one: float  # one do-nothing dynamic resource: what starting a Python dynamic provider adds


def fixed_cost(root: Path, calls: Calls) -> Fixed:
    empty = root / "empty-src"
    empty.mkdir()
    (empty / "__main__.py").write_text("import pulumi  # declares nothing\n")
    times = []
    for name, program, configure in (("empty", empty, False), ("zero", PROGRAM, True), ("one", FLOOR_ONE, False)):
        stack = stack_for(root, name, program, calls)
        if configure:
            declare(stack, spec(0, "z"))
        if program == FLOOR_ONE:
            stack.up()
        stack.preview()  # warm-up (first plugin and package listing)
        times.append(min(timed(stack.preview, calls)[1].seconds for _ in range(3)))
    return Fixed(*times)


def noop_preview(stack: auto.Stack, calls: Calls, resources: int) -> Phase:
    """The faster of two previews with nothing to change (the machine is shared: one sample can be unlucky)."""
    phases = []
    for _ in range(2):
        result, phase = timed(stack.preview, calls)
        assert result.change_summary == {"same": resources}, result.change_summary
        phases.append(phase)
    return min(phases, key=lambda p: p.seconds)


def deploy(n: int, stack: auto.Stack, prefix: str, calls: Calls, resources: int) -> Deploy:
    """`up` N routes, a no-op preview, change route 0's prompt, destroy; ``resources`` Pulumi resources in all."""
    declared = spec(n, prefix)
    declare(stack, declared)
    result, up = timed(stack.up, calls)
    assert result.summary.result == "succeeded"
    preview = noop_preview(stack, calls, resources)

    changed = copy.deepcopy(declared)
    changed["rules"]["r0"]["room_config"]["agents"][0]["metadata"] = prompt(0, version=2)
    declare(stack, changed)
    result, change = timed(stack.up, calls)
    assert result.summary.resource_changes == {"same": resources - 1, "update": 1}, result.summary.resource_changes

    result, destroy = timed(stack.destroy, calls)
    assert result.summary.resource_changes == {"delete": resources}, result.summary.resource_changes
    wipe_sip()
    return Deploy(up, preview, change, destroy)


def null_preview(n: int, root: Path, calls: Calls) -> Phase:
    """No-op preview of the same resources as do-nothing dynamic resources (the floor of one resource per object)."""
    stack = stack_for(root, f"floor{n}", FLOOR, calls)
    declare(stack, spec(n, f"f{n}"))
    stack.up()
    preview = noop_preview(stack, calls, 2 * n + 1)
    stack.destroy()
    return preview


def run(n: int, root: Path, calls: Calls) -> Row:
    ours = deploy(n, stack_for(root, f"n{n}", PROGRAM, calls), f"e{n}", calls, 2 * n + 1)
    table = deploy(n, stack_for(root, f"table{n}", TABLE, calls), f"t{n}", calls, 2)
    floor_preview = null_preview(n, root, calls)

    seconds, siphon_calls = siphon_loop.run(n, f"s{n}", 3_000_000)
    siphon = Phase(seconds, Counter({"(all)": siphon_calls}))
    wipe_sip()

    t0 = time.perf_counter()
    floor_calls = asyncio.run(floor(n, f"f{n}"))
    floor_phase = Phase(time.perf_counter() - t0, Counter({"(all)": floor_calls}))
    wipe_sip()
    return Row(n, ours, siphon, floor_phase, floor_preview, table)


def report(rows: list[Row], fixed: Fixed) -> None:
    empty = fixed.empty
    print(
        f"engine fixed cost: empty-program preview {empty:.2f} s; our program with 0 routes {fixed.zero:.2f} s "
        f"({fixed.zero / empty:.2f}x); one do-nothing dynamic resource {fixed.one:.2f} s ({fixed.one / empty:.2f}x)"
    )
    print()
    head = (
        f"{'N':>4} {'objs':>5} | {'up s':>6} {'ms/obj':>6} {'marg':>6} {'calls/obj':>9} | "
        f"{'SIPHON s':>8} {'ms/obj':>6} {'marg':>6} | {'floor s':>7} | {'up/SIPHON':>9} {'marg/SIPHON':>11} | "
        f"{'noop pv s':>9} {'pv/empty':>8} | "
        f"{'change s':>8} {'upd':>3} {'del':>3} | {'destroy s':>9} {'dst/up':>6}"
    )
    print(head)
    print("-" * len(head))
    prev: Row | None = None
    for r in rows:
        objs = 2 * r.n
        creates = r.up.calls["CreateSIPInboundTrunk"] + r.up.calls["CreateSIPDispatchRule"]
        per = 1000 * r.up.seconds / objs
        sper = 1000 * r.siphon.seconds / objs
        marg = smarg = float("nan")
        if prev is not None:
            d = 2 * (r.n - prev.n)
            marg = 1000 * (r.up.seconds - prev.up.seconds) / d
            smarg = 1000 * (r.siphon.seconds - prev.siphon.seconds) / d
        calls_per = r.up.total / max(creates, 1)
        print(
            f"{r.n:>4} {objs:>5} | {r.up.seconds:>6.2f} {per:>6.1f} {marg:>6.1f} {calls_per:>9.3f} | "
            f"{r.siphon.seconds:>8.2f} {sper:>6.1f} {smarg:>6.1f} | {r.floor.seconds:>7.2f} | "
            f"{per / sper:>9.1f} {marg / sper:>11.1f} | {r.preview.seconds:>9.2f} {r.preview.seconds / empty:>8.2f} | "
            f"{r.change.seconds:>8.2f} {r.change.calls['UpdateSIPDispatchRule']:>3} "
            f"{r.change.calls['DeleteSIPDispatchRule'] + r.change.calls['DeleteSIPTrunk']:>3} | "
            f"{r.destroy.seconds:>9.2f} {r.destroy.seconds / r.up.seconds:>6.2f}"
        )
        prev = r
    print()
    print("marg = marginal ms per created object from the previous N (marg/SIPHON: over SIPHON's ms/obj at that N)")
    print("calls/obj = LiveKit calls made by `up` per object created; upd/del = calls made by the one-prompt change")
    for r in rows:
        print(
            f"N={r.n}: up {dict(r.up.calls)}; no-op preview {r.preview.total} calls; change {dict(r.change.calls)}; "
            f"destroy {r.destroy.total} calls; SIPHON {r.siphon.total} calls; floor {r.floor.total} calls"
        )
    print()
    print("No-op preview over the empty-program preview, by design (target <= 1.5x at N=500):")
    print(
        f"  one do-nothing dynamic resource, any N: {fixed.one / empty:.2f}x (the provider process alone); "
        "null = one do-nothing dynamic resource per object; TABLE = PROTOTYPE, all routes in one resource"
    )
    head = (
        f"{'N':>4} {'objs':>5} | {'ours pv/empty':>13} {'null pv/empty':>13} | {'TABLE pv s':>10} {'pv/empty':>8} | "
        f"{'TABLE up s':>10} {'calls/obj':>9} | {'change s':>8} {'upd':>3} {'del':>3} | {'destroy s':>9} {'dst/up':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        t = r.table
        creates = t.up.calls["CreateSIPInboundTrunk"] + t.up.calls["CreateSIPDispatchRule"]
        print(
            f"{r.n:>4} {2 * r.n:>5} | {r.preview.seconds / empty:>13.2f} {r.null_preview.seconds / empty:>13.2f} | "
            f"{t.preview.seconds:>10.2f} {t.preview.seconds / empty:>8.2f} | "
            f"{t.up.seconds:>10.2f} {t.up.total / max(creates, 1):>9.3f} | {t.change.seconds:>8.2f} "
            f"{t.change.calls['UpdateSIPDispatchRule']:>3} "
            f"{t.change.calls['DeleteSIPDispatchRule'] + t.change.calls['DeleteSIPTrunk']:>3} | "
            f"{t.destroy.seconds:>9.2f} {t.destroy.seconds / t.up.seconds:>6.2f}"
        )


def restore_sigint() -> None:
    """Let the processes the Pulumi CLI starts be interrupted, also when this runs as a background job.

    A shell starts a background job (``cmd &`` without job control) with SIGINT ignored, and children
    inherit that. The CLI stops each plugin (language host, dynamic providers) with SIGINT and waits
    5 s before killing one that ignores it: every operation would then be charged 5-10 s that are no
    cost of the program's, and the empty-program baseline five times its real cost.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # children exec with the default action


def main() -> None:
    restore_sigint()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sizes = [int(a) for a in args] or [10, 50, 200, 500]
    if "--checkpoints" not in sys.argv:
        os.environ[SKIP_CHECKPOINTS] = "true"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # compile each module once, not in every engine process
    print(f"engine: {SKIP_CHECKPOINTS}={os.environ.get(SKIP_CHECKPOINTS, 'false')} (--checkpoints for the default)")
    siphon_loop.venv()  # install before timing anything
    root = Path(tempfile.mkdtemp(prefix="siphon-bench-"))
    with LocalEnv.start(root / "env") as env:
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())
        with Calls.start(env.endpoints.livekit_url) as calls:
            fixed = fixed_cost(root, calls)
            rows = [run(n, root, calls) for n in sizes]
    report(rows, fixed)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
