"""Where the time of one Pulumi operation on N routes goes: CPU seconds per process, and py-spy profiles.

Deploys N routes (as bench/sip_deploy.py does), then runs the chosen operation while sampling every
process the Pulumi CLI starts: the CLI/engine (Go), the Python program, and the dynamic-provider
process. Prints wall time and each process's CPU seconds; with ``--py-spy DIR`` (py-spy installed
from PyPI, e.g. ``uv tool install py-spy``) it also writes a flat py-spy profile per Python process.

    uv run python -m bench.profile_sip --n 200 --op up|preview|destroy [--program routes|floor|table]
        [--py-spy /tmp/out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.sip_deploy import PROGRAM, Calls, declare, restore_sigint, spec, stack_for
from localenv.manager import LocalEnv
from localenv.reset import wipe_sip

TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    found = [int(p) for p in out.split()]
    return found + [c for p in found for c in _children(p)]


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return -1.0


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def watch(stop: threading.Event, seen: dict[int, tuple[str, float]], spy: str | None, out: Path | None) -> None:
    """Poll the process tree under us; remember each process's last CPU reading; attach py-spy to Python ones."""
    me = os.getpid()
    spies: list[subprocess.Popen[bytes]] = []
    while not stop.is_set():
        for pid in _children(me):
            cmd = _cmd(pid)
            if "py-spy" in cmd or cmd.startswith("ps "):
                continue
            cpu = _cpu(pid)
            if (
                pid not in seen
                and spy
                and out
                and "python" in cmd
                and ("pulumi.dynamic" in cmd or "language-python-exec" in cmd)
            ):
                tag = "provider" if "pulumi.dynamic" in cmd else "program"
                spies.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "-p",
                            str(pid),
                            "-r",
                            "250",
                            "--gil",
                            "--nonblocking",
                            "-f",
                            "raw",
                            "-o",
                            str(out / f"{tag}-{pid}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            if cpu >= 0:
                seen[pid] = (cmd, cpu)
        time.sleep(0.05)
    for s in spies:
        s.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--op", choices=["up", "preview", "destroy"], default="up")
    parser.add_argument(
        "--program",
        choices=["routes", "floor", "table"],
        default="routes",
        help="bench/programs/<name>: ours (routes), the do-nothing floor, or the one-resource table prototype",
    )
    parser.add_argument("--py-spy", dest="out", type=Path)
    parser.add_argument("--go-profile", type=Path, help="prefix for the CLI's own CPU profile (pulumi --profiling)")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the engine, e.g. PULUMI_SKIP_CHECKPOINTS=true"
    )
    a = parser.parse_args()
    restore_sigint()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as bench/sip_deploy.py: compile each module once
    root = Path(tempfile.mkdtemp(prefix="siphon-profile-"))
    spy = shutil.which("py-spy") if a.out else None
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    with LocalEnv.start(root / "env") as env:
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())
        os.environ.update(dict(kv.split("=", 1) for kv in a.env))
        calls = Calls.start(env.endpoints.livekit_url)
        stack = stack_for(root, "p", PROGRAM.parent / a.program, calls)
        declare(stack, spec(a.n, "p"))
        if a.op != "up":
            stack.up()
        calls.take()
        seen: dict[int, tuple[str, float]] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop, seen, spy, a.out))
        watcher.start()
        t0 = time.perf_counter()
        if a.go_profile:  # the Automation API has no option for it: run the same command with --profiling
            args = {
                "up": ["up", "--yes", "--skip-preview"],
                "preview": ["preview"],
                "destroy": ["destroy", "--yes", "--skip-preview"],
            }
            stack._run_pulumi_cmd_sync([*args[a.op], "--stack", stack.name, "--profiling", str(a.go_profile)])
        else:
            getattr(stack, a.op)()
        wall = time.perf_counter() - t0
        counted = calls.take()  # the operation's own calls (not the clean-up's below)
        stop.set()
        watcher.join()
        if a.op != "destroy":
            stack.destroy()
        calls.stop()
        wipe_sip()
    print(f"{a.op} of {a.n} routes ({2 * a.n} objects): {wall:.2f} s wall, LiveKit calls {dict(counted)}")
    for _pid, (cmd, cpu) in sorted(seen.items(), key=lambda kv: -kv[1][1]):
        if cpu >= 0.05:
            print(f"  {cpu:7.2f} s CPU  {cmd[:110]}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
