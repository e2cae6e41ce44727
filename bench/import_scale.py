"""Benchmark: ``siphon-infra import`` of N trunk+rule pairs against listing them with ``livekit.api`` alone.

Against one livekit-server started for the run: N inbound trunks (one number each) and N individual rules
carrying SIPHON 0.1.4's payload (what its ``Dispatch`` loop writes) are created, then, alternating, best of 3:

- list: one ``livekit.api.LiveKitAPI`` (made in the loop, closed after), the three listings concurrently;
- import: the import in this process (``infra.adopt.command.run_import``: list, build the document, compile it
  with the plan and compare every object, render and write the file, validate it), with its phases;
- CLI: ``siphon-infra import`` as a user runs it (a new interpreter: start-up and imports included), against
  the same listing as a script a user runs (``LIST_SCRIPT``: a new interpreter importing ``livekit.api``).

    uv run python -m bench.import_scale [N ...]     (default: 500)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from livekit import api

from contract.wire import LIVEKIT_URL_ENV
from infra.adopt import build, changes, command, live
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip

ROOT = Path(__file__).resolve().parents[1]
LIST_SCRIPT = """
import asyncio
from livekit import api

async def main():
    async with api.LiveKitAPI() as lk:
        found = await asyncio.gather(
            lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest()),
            lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest()),
            lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest()),
        )
    print(sum(len(f.items) for f in found))

asyncio.run(main())
"""


def number(i: int) -> str:
    return f"+1555{4_000_000 + i:07d}"


async def make(n: int) -> None:
    """N trunk+rule pairs as SIPHON's loop makes them (trunks first, then rules; 50 requests at a time)."""
    async with api.LiveKitAPI() as lk:
        gate = asyncio.Semaphore(50)

        async def trunk(i: int) -> str:
            info = api.SIPInboundTrunkInfo(name="bench-agent", numbers=[number(i)], krisp_enabled=True)
            async with gate:
                t = await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=info))
                return str(t.sip_trunk_id)

        async def rule(i: int, trunk_id: str) -> None:
            payload = {"agent_config": {"llm": None, "tts": None, "stt": None, "greeting_instructions": None,
                                        "system_instructions": f"You answer {number(i)}."},
                       "inbound_trunk_id": trunk_id, "agent_number": number(i)}  # fmt: skip
            info = api.SIPDispatchRuleInfo(
                name=f"bench-r{i}", trunk_ids=[trunk_id],
                rule=api.SIPDispatchRule(dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                    room_prefix="inbound-call-")),
                room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(
                    agent_name="bench-agent", metadata=json.dumps(payload))]))  # fmt: skip
            async with gate:
                await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(dispatch_rule=info))

        trunks = await asyncio.gather(*(trunk(i) for i in range(n)))
        await asyncio.gather(*(rule(i, t) for i, t in enumerate(trunks)))


async def list_alone() -> int:
    async with api.LiveKitAPI() as lk:
        found = await asyncio.gather(
            lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest()),
            lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest()),
            lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest()),
        )
    return sum(len(f.items) for f in found)


class Phases:
    """Wraps the import's steps to time each one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: object, name: str, label: str) -> None:
        fn = getattr(module, name)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)


def run(n: int, work: Path) -> None:
    wipe_sip()
    asyncio.run(make(n))
    url = os.environ[LIVEKIT_URL_ENV].replace("http", "ws", 1)
    phases = Phases()
    phases.wrap(command, "list_project", "list")
    phases.wrap(command, "build", "build")
    phases.wrap(command, "rewrites", "compile+compare")
    phases.wrap(command, "render", "render")
    phases.wrap(command, "plan_file", "validate")
    lists, imports, clis, scripts = [], [], [], []
    per_phase: list[dict[str, float]] = []
    for attempt in range(3):
        t0 = time.perf_counter()
        objects = asyncio.run(list_alone())
        lists.append(time.perf_counter() - t0)
        assert objects == 2 * n, objects
        phases.seconds = {}
        out = work / f"import-{attempt}.yaml"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = command.run_import("bench", url, out, allow_changes=False, force=True)
        imports.append(time.perf_counter() - t0)
        per_phase.append(dict(phases.seconds))
        assert result.written, "the import refused"
        assert not result.imported.findings, result.imported.findings[:3]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "infra.cli", "import", "bench", "--url", url, "--out", str(out),
                        "--force"], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
        clis.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        listed = subprocess.run([sys.executable, "-c", LIST_SCRIPT], check=True, capture_output=True, text=True)
        scripts.append(time.perf_counter() - t0)
        assert int(listed.stdout) == 2 * n
    best = min(range(3), key=lambda i: imports[i])
    listing, imported, cli, script = min(lists), imports[best], min(clis), min(scripts)
    print(f"N={n} pairs ({2 * n} objects), in process: list with livekit.api {listing:.3f}s; import {imported:.3f}s "
          f"= {imported / listing:.2f}x the listing (target < 2x)")  # fmt: skip
    print(f"  end to end (new interpreter each): listing script {script:.2f}s; `siphon-infra import` {cli:.2f}s "
          f"= {cli / script:.2f}x")  # fmt: skip
    print("  import phases (s): " + ", ".join(f"{k} {v:.3f}" for k, v in per_phase[best].items()))
    print(f"  all samples: list {[round(x, 3) for x in lists]}, import {[round(x, 3) for x in imports]}, "
          f"CLI {[round(x, 2) for x in clis]}, listing script {[round(x, 2) for x in scripts]}")  # fmt: skip
    wipe_sip()


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [500]
    root = Path(tempfile.mkdtemp(prefix="siphon-import-bench-"))
    with LocalEnv.start(root / "env") as env:
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())
        for n in sizes:
            run(n, root)


if __name__ == "__main__":
    _ = (build, changes, live)  # the modules whose functions the phases wrap (through infra.adopt.command)
    main()
