"""siphon-infra: validate stack files offline, show routing, render pull-request summaries, place and verify calls.

An environment name (dev) means stacks/dev.yaml; a path ending in .yaml or .yml is read as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from infra.stack.errors import StackFileError
from infra.stack.load import STACKS_DIR, stack_path
from infra.stack.plan import plan_file
from infra.stack.render import markdown_summary, mermaid, table
from infra.stack.types import Plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)

Target = Annotated[str, typer.Argument(help="environment name or stack file path")]
Outputs = Annotated[Path | None, typer.Option(help="`pulumi stack output --json` saved to a file")]


def _path(target: str) -> Path:
    """A stack file path (it ends in .yaml/.yml), else the stack file of the environment of that name.

    Only the suffix decides: ``routes dev`` means ``stacks/dev.yaml`` even beside a file named ``dev``.
    """
    return Path(target) if Path(target).suffix in (".yaml", ".yml") else stack_path(target)


def _plan_or_exit(target: str, *, secrets: bool = True) -> Plan:
    """The plan of a stack file, or every problem (``file:line: field: message``) on stderr and exit 1."""
    try:
        return plan_file(_path(target), secrets=secrets)
    except StackFileError as e:
        print(e, file=sys.stderr)
        raise typer.Exit(1) from None


def _fail(command: str, message: str, code: int = 1) -> typer.Exit:
    print(f"siphon-infra {command}: {message}", file=sys.stderr)
    return typer.Exit(code)


@app.command()
def validate(
    targets: Annotated[list[str] | None, typer.Argument(help="default: every stack file in stacks/")] = None,
) -> None:
    """Check stack files (no credentials, no network); exit 1 on problems."""
    paths = [_path(t) for t in targets or []] or sorted(
        p for p in STACKS_DIR.glob("*.yaml") if not p.name.startswith("Pulumi.")
    )
    failed = False
    for path in paths:
        try:
            stack = plan_file(path).stack
        except StackFileError as e:
            failed = True
            print(f"{path}: INVALID ({len(e.problems)} problem{'s' if len(e.problems) > 1 else ''})")
            print("\n".join(f"  {problem}" for problem in e.problems))
            continue
        print(f"{path}: ok ({len(stack.inbound_routes)} inbound, {len(stack.outbound_routes)} outbound routes, "
              f"{len(stack.agents)} agents)")  # fmt: skip
    raise typer.Exit(1 if failed else 0)


@app.command()
def routes(
    target: Target, mermaid_: Annotated[bool, typer.Option("--mermaid", help="also print the Mermaid diagram")] = False
) -> None:
    """Routing table (and diagram) of a stack (its secrets need not be set yet)."""
    plan = _plan_or_exit(target, secrets=False)
    print(table(plan.routing_rows()))
    if mermaid_:
        print("\n```mermaid\n" + mermaid(plan) + "\n```")


@app.command()
def summary(
    target: Target, preview: Annotated[Path | None, typer.Option(help="output of `pulumi preview --json`")] = None
) -> None:
    """Markdown summary for a pull-request comment (its secrets need not be set yet)."""
    plan = _plan_or_exit(target, secrets=False)
    print(markdown_summary(plan.stack.environment, plan, _json_file("summary", preview) if preview else None))


def _json_file(command: str, path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise _fail(command, f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise _fail(command, f"{path} is not JSON ({e}); save it with `pulumi preview --json > {path.name}`") from None
    if not isinstance(data, dict):
        raise _fail(command, f"{path} is not a JSON object")
    return data


LOCAL_ENV_HINT = "for the local stack: `source .run/local/env.sh` after `./dev local`"


def _pulumi_problem(stderr: str) -> str:
    """The Pulumi CLI's failure in one line, with the command that fixes it when it is a known one."""
    if "PULUMI_ACCESS_TOKEN must be set for login" in stderr or "not logged in" in stderr:
        return f"no Pulumi backend is set: `pulumi login <backend url>` ({LOCAL_ENV_HINT})"
    if "no stack named" in stderr:
        return f"{stderr.strip().splitlines()[-1].removeprefix('error: ')} ({LOCAL_ENV_HINT}, or `pulumi stack ls`)"
    if "passphrase" in stderr.lower():
        return f"the stack's secrets need its passphrase: set PULUMI_CONFIG_PASSPHRASE ({LOCAL_ENV_HINT})"
    lines = [line.removeprefix("error: ") for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the Pulumi CLI failed without a message"


def _pulumi(command: str, what: str, *argv: str) -> str:
    try:
        run = subprocess.run(["pulumi", *argv], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise _fail(command, f"cannot read {what}: the Pulumi CLI is not on PATH (`./dev setup` builds it; "
                             f"{LOCAL_ENV_HINT})") from None  # fmt: skip
    if run.returncode != 0:
        raise _fail(command, f"cannot read {what}: {_pulumi_problem(run.stderr)}")
    return run.stdout


def _stack_outputs(command: str, target: str, outputs: Path | None) -> dict:
    if outputs:
        return _json_file(command, outputs)
    text = _pulumi(command, f"the outputs of stack {target!r}", "stack", "output", "--json", "--stack", target)
    return json.loads(text)


def _pairs(items: list[str] | None) -> dict[str, str]:
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
    return dict(item.partition("=")[::2] for item in items or [])


@app.command()
def call(
    target: Annotated[str, typer.Argument(help="environment (its stack outputs are read with `pulumi stack output`)")],
    route: str,
    number: str,
    call_id: Annotated[str | None, typer.Option(help="idempotency key: a retry with the same id does not dial")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="per-call override")] = None,
    context: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="customer context")] = None,
    direct: Annotated[bool, typer.Option("--direct", help="dial from here instead of letting the worker dial")] = False,
    outputs: Outputs = None,
) -> None:
    """Place a call through an outbound route and print its ids."""
    from infra.calls import CallError, place_call
    from infra.livekit.client import LiveKitError

    overrides, customer = _pairs(set_), _pairs(context)
    try:
        result = place_call(
            _stack_outputs("call", target, outputs)["outbound_routes"], route, number, call_id=call_id,
            overrides=overrides or None, context=customer, dial="direct" if direct else "worker",
        )  # fmt: skip
    except (CallError, LiveKitError) as e:
        raise _fail("call", str(e)) from None
    print(json.dumps(result.__dict__, indent=2))


@app.command()
def verify(
    target: Target,
    route: Annotated[list[str] | None, typer.Option(help="only these routes (repeatable)")] = None,
    outputs: Outputs = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 20.0,
) -> None:
    """Prove inbound routes with synthetic SIP calls; print route, number, agent, result and time to answer."""
    from infra.verify import expectations, trunk_auth_keys, verify_one

    sip_address = os.environ.get("SIPHON_SIP_ADDRESS")
    if not sip_address:
        raise _fail("verify", "no SIP bridge to call through: set SIPHON_SIP_ADDRESS to livekit-sip's host:port "
                              "(`./dev local` prints it when livekit-sip is installed)", 2)  # fmt: skip
    from infra.sipp import SippMissing, sipp_binary

    try:
        sipp_binary()
    except SippMissing as e:
        raise _fail("verify", str(e), 2) from None
    plan = _plan_or_exit(target)
    routes_ = route or []
    unknown = [r for r in routes_ if r not in plan.inbound_routes]
    if unknown:
        raise _fail("verify", f"no inbound route {', '.join(unknown)}", 2)
    deployed = _stack_outputs("verify", target, outputs)
    passwords = {
        key: _pulumi("verify", f"config {key!r} of stack {target!r}", "config", "get", key, "--stack", target)
        .rstrip("\n")
        for key in set(trunk_auth_keys(plan, routes_).values())
    }  # fmt: skip
    results = [verify_one(e, sip_address, timeout) for e in expectations(plan, deployed, routes_, passwords)]
    rows = [{"route": r.route, "number": r.number, "agent": r.agent, "result": "ok" if r.ok else f"FAIL: {r.detail}",
             "time to answer": f"{r.seconds:.2f}s"} for r in results]  # fmt: skip
    print(table(rows, ["route", "number", "agent", "result", "time to answer"]))
    raise typer.Exit(0 if results and all(r.ok for r in results) else 1)


@app.command("import")
def import_(
    environment: Annotated[str, typer.Argument(help="environment: writes stacks/<environment>.yaml")],
    url: Annotated[
        str,
        typer.Option(
            help="LiveKit URL (ws://, wss://, http:// or https://); key and secret: LIVEKIT_API_KEY, LIVEKIT_API_SECRET"
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="write here instead of stacks/<environment>.yaml")] = None,
    allow_changes: Annotated[
        bool, typer.Option("--allow-changes", help="write even if the first up would rewrite or leave out objects")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing stack file")] = False,
) -> None:
    """Write the stack file of an existing LiveKit project (trunks, dispatch rules -> routes, agents)."""
    import re

    from pydantic import TypeAdapter, ValidationError

    from contract.types import EnvironmentName, describe_errors
    from infra.adopt.command import ImportFailed, run_import

    try:  # the stack file's own rule for environment names
        TypeAdapter(EnvironmentName).validate_python(environment)
    except ValidationError as e:
        raise _fail("import", f"environment {environment!r}: {describe_errors(e)[0][1]}", 2) from None
    if not re.match(r"^(wss?|https?)://[^\s/]+", url):
        raise _fail("import", f"--url {url!r} is not a LiveKit URL (ws://, wss://, http:// or https://host[:port])", 2)
    ws_url = re.sub(r"^http", "ws", url)
    try:
        result = run_import(environment, ws_url, out or stack_path(environment), allow_changes=allow_changes,
                            force=force)  # fmt: skip
    except ImportFailed as e:
        raise _fail("import", str(e)) from None
    raise typer.Exit(0 if result.written else 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``siphon-infra`` command; returns its exit code."""
    try:
        app(args=None if argv is None else list(argv), prog_name="siphon-infra")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
