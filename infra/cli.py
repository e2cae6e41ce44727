"""``siphon-infra``: validate stack files offline, show routing, render pull-request summaries.

siphon-infra validate [ENV|FILE ...]   check stack files (no credentials, no network); exit 1 on problems
siphon-infra routes ENV [--mermaid]    routing table (and diagram) of a stack
siphon-infra summary ENV [--preview preview.json]
                                       Markdown for a pull-request comment (from `pulumi preview --json`)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.stack.load import STACKS_DIR, StackFileError, stack_path
from infra.stack.plan import Plan, plan_file
from infra.stack.render import markdown_summary, mermaid, table


def _path(target: str) -> Path:
    """A stack file path (it ends in .yaml/.yml), else the stack file of the environment of that name.

    Only the suffix decides: ``routes dev`` means ``stacks/dev.yaml`` even beside a file named ``dev``.
    """
    return Path(target) if Path(target).suffix in (".yaml", ".yml") else stack_path(target)


def _plan(path: Path) -> Plan:
    return plan_file(path)


def cmd_validate(targets: list[str]) -> int:
    """Validate each stack file; print problems or a one-line OK."""
    paths = [_path(t) for t in targets] or sorted(
        p for p in STACKS_DIR.glob("*.yaml") if not p.name.startswith("Pulumi.")
    )
    failed = False
    for path in paths:
        try:
            plan = _plan(path)
        except StackFileError as e:
            failed = True
            print(f"{path}: INVALID ({len(e.problems)} problem{'s' if len(e.problems) > 1 else ''})")
            for problem in e.problems:
                print(f"  {problem}")
            continue
        stack = plan.stack
        print(f"{path}: ok ({len(stack.inbound_routes)} inbound, {len(stack.outbound_routes)} outbound routes, "
              f"{len(stack.agents)} agents)")  # fmt: skip
    return 1 if failed else 0


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _stack_outputs(target: str, outputs: Path | None) -> dict:
    import subprocess

    if outputs:
        return json.loads(outputs.read_text())
    run = subprocess.run(
        ["pulumi", "stack", "output", "--json", "--stack", target], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"cannot read the outputs of stack {target!r}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def _config_secret(target: str, key: str) -> str:
    """One config value of the stack (secrets decrypted), as `pulumi config get` gives it."""
    import subprocess

    run = subprocess.run(
        ["pulumi", "config", "get", key, "--stack", target], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"cannot read config {key!r} of stack {target!r}: {run.stderr.strip()}")
    return run.stdout.rstrip("\n")


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify inbound routes; print route, number, agent, result and time to answer."""
    import os

    from infra.verify import expectations, trunk_auth_keys, verify_one

    sip_address = os.environ.get("SIPHON_SIP_ADDRESS")
    if not sip_address:
        print(
            "siphon-infra verify: no SIP bridge to call through: set SIPHON_SIP_ADDRESS to livekit-sip's host:port "
            "(`./dev local` prints it when livekit-sip is installed)",
            file=sys.stderr,
        )
        return 2
    stack = _plan(_path(args.target)).stack
    unknown = [r for r in args.route if r not in stack.inbound_routes]
    if unknown:
        print(f"siphon-infra verify: no inbound route {', '.join(unknown)}", file=sys.stderr)
        return 2
    outputs = _stack_outputs(args.target, args.outputs)
    passwords = {k: _config_secret(args.target, k) for k in set(trunk_auth_keys(stack, args.route).values())}
    exps = expectations(stack, outputs["routing_table"], args.route, passwords)
    results = [verify_one(e, sip_address, args.timeout) for e in exps]
    rows = [{"route": r.route, "number": r.number, "agent": r.agent, "result": "ok" if r.ok else f"FAIL: {r.detail}",
             "time to answer": f"{r.seconds:.2f}s"} for r in results]  # fmt: skip
    print(table(rows, ["route", "number", "agent", "result", "time to answer"]))
    return 0 if results and all(r.ok for r in results) else 1


def cmd_call(args: argparse.Namespace) -> int:
    """Place one call and print its ids."""
    from infra.calls import CallError, place_call
    from infra.livekit.client import LiveKitError

    try:
        result = place_call(
            _stack_outputs(args.target, args.outputs)["outbound_routes"],
            args.route,
            args.number,
            call_id=args.call_id,
            overrides=_pairs(args.set) or None,
            context=_pairs(args.context),
            dial="direct" if args.direct else "worker",
        )
    except (CallError, LiveKitError) as e:
        print(f"siphon-infra call: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result.__dict__, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``siphon-infra`` command."""
    parser = argparse.ArgumentParser(
        prog="siphon-infra", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check stack files offline")
    v.add_argument("targets", nargs="*", help="environment names or stack file paths (default: all in stacks/)")
    r = sub.add_parser("routes", help="routing table of a stack")
    r.add_argument("target")
    r.add_argument("--mermaid", action="store_true", help="also print the Mermaid diagram")
    s = sub.add_parser("summary", help="Markdown summary for a pull-request comment")
    s.add_argument("target")
    s.add_argument("--preview", type=Path, help="output of `pulumi preview --json`")
    c = sub.add_parser("call", help="place a call through an outbound route")
    c.add_argument("target", help="environment (its stack outputs are read with `pulumi stack output`)")
    c.add_argument("route")
    c.add_argument("number")
    c.add_argument("--call-id", help="idempotency key: a retry with the same id does not dial again")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="per-call override")
    c.add_argument("--context", action="append", default=[], metavar="KEY=VALUE", help="customer context")
    c.add_argument("--direct", action="store_true", help="dial from here instead of letting the worker dial")
    c.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    vf = sub.add_parser("verify", help="prove inbound routes with synthetic SIP calls")
    vf.add_argument("target")
    vf.add_argument("--route", action="append", default=[], help="only these routes (repeatable)")
    vf.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    vf.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)

    if args.command == "verify":
        return cmd_verify(args)
    if args.command == "call":
        return cmd_call(args)
    if args.command == "validate":
        return cmd_validate(args.targets)
    try:
        plan = _plan(_path(args.target))
    except StackFileError as e:
        print(e, file=sys.stderr)
        return 1
    if args.command == "routes":
        print(table(plan.routing_rows()))
        if args.mermaid:
            print("\n```mermaid\n" + mermaid(plan) + "\n```")
        return 0
    preview = json.loads(args.preview.read_text()) if args.preview else None
    print(markdown_summary(plan.stack.environment, plan, preview))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
