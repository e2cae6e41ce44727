"""``siphon-local``: bring the local environment up, print its endpoints, and tear it down on Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from localenv import tools
from localenv.manager import Endpoints, LocalEnv, wait_forever
from localenv.process import ServiceError


def default_run_dir() -> Path:
    """A fresh run folder under .run/ in the checkout."""
    return tools.REPO / ".run" / time.strftime("local-%Y%m%d-%H%M%S")


def render(endpoints: Endpoints, env: LocalEnv) -> str:
    """Human-readable endpoints, and how a second terminal gets everything it needs (the env file)."""
    from localenv.deploy import LATEST_LINK, write_env_file

    env_file = write_env_file(env)
    link = LATEST_LINK  # only for run folders under .run/ (a --run-dir elsewhere may be gone soon)
    if env.run_dir.resolve().parent == link.parent.resolve() and (link.is_symlink() or not link.exists()):
        link.unlink(missing_ok=True)
        link.symlink_to(env.run_dir.resolve(), target_is_directory=True)
    lines = ["Local environment is up:"]
    for name, secs in env.startup_seconds.items():
        lines.append(f"  {name:<15} healthy in {secs:.2f}s")
    lines.append(f"  logs            {endpoints.run_dir}")
    lines.append("")
    lines.append("In a second terminal, to run the README's commands (tools on PATH, endpoints, the local stack's")
    lines.append("state and passphrase):")
    shown = link / env_file.name if link.resolve() == env.run_dir.resolve() else env_file
    lines.append(f"  source {_relative(shown)}")
    lines.append("It exports:")
    lines += [f"  {line}" for line in env_file.read_text().splitlines() if line.startswith("export ")]
    return "\n".join(lines)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def deploy_and_run(env: LocalEnv) -> str:
    """Deploy the local stack, start its local workers, and describe the routing that is now live."""
    from infra.stack.load import stack_path
    from infra.stack.plan import plan_file
    from infra.stack.render import table
    from localenv.deploy import deploy, start_stack_workers

    log = env.run_dir / "pulumi-up.log"
    with log.open("w") as f:
        outputs = deploy(env, on_output=lambda line: f.write(line + "\n"))
    plan = plan_file(stack_path("local"))
    workers = start_stack_workers(env, plan.stack)
    ids = {("inbound", row["route"]): row["rule_id"] for row in outputs["routing_table"].values()}
    ids.update({("outbound", name): f"trunk {r['trunk_id']}" for name, r in outputs["outbound_routes"].items()})
    rows = [  # the plan's routing table (Plan.routing), with the ids the deployment gave
        {"number": row.number or "*", "route": row.route + (" (outbound)" if row.direction == "outbound" else ""),
         "rule id": ids.get((row.direction, row.route), "-"), "agent": row.agent, "worker": row.worker}
        for row in plan.routing()
    ]  # fmt: skip
    lines = [
        f"Deployed stack `local` (engine log {log}).",
        f"Local workers running: {', '.join(w.name for w in workers) or 'none'} (a worker that dies is restarted)",
        "",
        table(rows),
    ]
    return "\n".join(lines)


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    """First Ctrl-C or SIGTERM: stop. Later ones (a terminal sends SIGINT to the whole process group, `uv run`
    forwards it once more, an impatient user presses again) must not abort the teardown: they are noted only."""
    signal.signal(signal.SIGINT, _already_stopping)
    signal.signal(signal.SIGTERM, _already_stopping)
    print("\nsiphon-local: stopping (workers drain first, then the services)...", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    print("siphon-local: already stopping...", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``siphon-local`` command."""
    parser = argparse.ArgumentParser(prog="siphon-local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything, print endpoints, stay up until Ctrl-C")
    up.add_argument("--run-dir", type=Path, default=None, help="folder for configs and logs")
    up.add_argument("--once", action="store_true", help="start, print, stop (a smoke test)")
    up.add_argument("--no-deploy", action="store_true", help="only the services: do not deploy the local stack")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, _stop_requested)
    signal.signal(signal.SIGTERM, _stop_requested)  # `kill` tears down like Ctrl-C
    run_dir = args.run_dir or default_run_dir()
    try:
        env = LocalEnv.start(run_dir)
    except (ServiceError, tools.ToolError) as e:
        print(f"siphon-local: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        with env:  # every exit path stops the workers (drained first), then the services
            return _serve(env, deploy=not args.no_deploy, once=args.once)
    except KeyboardInterrupt:
        print("siphon-local: stopped", file=sys.stderr)
        return 0


def _serve(env: LocalEnv, *, deploy: bool, once: bool) -> int:
    assert env.endpoints is not None
    print(render(env.endpoints, env), flush=True)
    if deploy:
        try:
            print(deploy_and_run(env), flush=True)
        except Exception as e:  # the engine's own message says what failed; the services still stop
            print(f"siphon-local: deploying the local stack failed: {e}", file=sys.stderr)
            return 1
    if once:
        return 0
    print("\nPress Ctrl-C to stop.", flush=True)
    try:
        wait_forever(env, say=lambda line: print(line, file=sys.stderr, flush=True))
    except ServiceError as e:
        print(f"siphon-local: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
