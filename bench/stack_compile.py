"""Benchmark: compiling a stack file of N inbound routes (what `validate`, `routes` and every preview's program do).

For N = 100, 250, 500, 1000 routes (one trunk and one route per number, on the `local` stack's agents), in one
run: the time of ``infra.stack.plan.plan_file`` (parse with line numbers, validate, cross-check, compile every
route's arguments) and, as the same-run baseline, a bare ``yaml.safe_load`` of the same file. Prints both,
their ratio and the milliseconds per route: the ratio must stay flat as N grows (no per-route scan of the
whole stack).

    .venv/bin/python -m bench.stack_compile [N ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from infra.stack.plan import plan_file

ROOT = Path(__file__).resolve().parent.parent


def stack_text(n: int) -> str:
    """The `local` stack file with n inbound trunks and routes instead of its own (no outbound, no ECS)."""
    doc = yaml.safe_load((ROOT / "stacks" / "local.yaml").read_text())
    numbers = [f"+1555{2000000 + i:07d}" for i in range(n)]
    doc["inbound_trunks"] = {
        f"t{i}": {"numbers": [num], "allowed_addresses": ["127.0.0.1/32"]} for i, num in enumerate(numbers)
    }
    doc["inbound_routes"] = {
        f"r{i}": {"numbers": [num], "agent": "support-agent", "agent_config": {"greeting_instructions": f"Line {i}"}}
        for i, num in enumerate(numbers)
    }
    doc["outbound_trunks"], doc["outbound_routes"] = {}, {}
    for agent in doc["agents"].values():
        agent.pop("ecs", None)
    return yaml.safe_dump(doc, sort_keys=False)


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``fn`` (seconds): the least disturbed by a shared machine."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="*", default=[100, 250, 500, 1000])
    args = parser.parse_args()
    print(f"{'N':>5} | {'compile s':>9} {'ms/route':>8} | {'yaml.safe_load s':>16} | {'compile/yaml':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            path = Path(tmp) / f"s{n}" / "local.yaml"
            path.parent.mkdir()
            path.write_text(stack_text(n))
            compile_s = best_of(3, lambda: plan_file(path, secrets=False))  # noqa: B023 (used at once)
            yaml_s = best_of(3, lambda: yaml.safe_load(path.read_text()))  # noqa: B023
            ratio = compile_s / yaml_s
            print(f"{n:>5} | {compile_s:>9.3f} {1000 * compile_s / n:>8.2f} | {yaml_s:>16.3f} | {ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
