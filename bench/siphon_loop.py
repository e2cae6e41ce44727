"""SIPHON 0.1.4's own inbound set-up loop, as its users write it, for the same-run baseline.

Installs PyPI ``siphon-ai==0.1.4`` into its own virtualenv (cached next to the project's tools, made
once) and runs, in that interpreter, one ``Dispatch(...).agent_dispatch()`` per number: SIPHON finds
or creates an inbound trunk for the number, then creates a dispatch rule on it (one trunk + one rule
per number). Only the loop is timed, not the interpreter start or imports; LiveKit calls are counted
by wrapping aiohttp's request method in that interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from localenv import tools

PIN = "siphon-ai==0.1.4"

LOOP = r"""
import asyncio, json, sys, time, warnings
warnings.simplefilter("ignore")
import aiohttp

calls = 0
_request = aiohttp.ClientSession._request


async def counted(self, *args, **kwargs):
    global calls
    calls += 1
    return await _request(self, *args, **kwargs)


aiohttp.ClientSession._request = counted
from siphon.telephony.inbound.dispatch import Dispatch  # noqa: E402

n, prefix, first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


async def main():
    errors = []
    for i in range(n):
        number = f"+1555{first + i:07d}"
        result = await Dispatch(
            agent_name=f"{prefix}-agent", dispatch_name=f"{prefix}-r{i}", sip_number=number,
            system_instructions=f"You answer {number}.",
        ).agent_dispatch()
        if isinstance(result, dict) and result.get("error"):
            errors.append(result["error"])
    return errors


t0 = time.perf_counter()
errors = asyncio.run(main())
print(json.dumps({"seconds": time.perf_counter() - t0, "calls": calls, "errors": errors[:3]}))
"""


def venv() -> Path:
    """The virtualenv holding siphon-ai 0.1.4 (created with the project's uv on first use)."""
    home = tools.cache_root() / "bench" / PIN.replace("==", "-")
    python = home / "bin" / "python"
    if not python.exists():
        uv = str(tools.uv_tool().path())
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
        subprocess.run([uv, "venv", "--quiet", "--python", "python3", str(home)], check=True, env=env)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), PIN], check=True, env=env)
    return python


def run(n: int, prefix: str, first_number: int) -> tuple[float, int]:
    """Set up ``n`` numbers with SIPHON; returns (seconds for the loop, LiveKit calls made)."""
    out = subprocess.run(
        [str(venv()), "-c", LOOP, str(n), prefix, str(first_number)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tools.cache_root(),  # SIPHON runs load_dotenv() on import: keep it away from any .env
        env=dict(os.environ),
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"SIPHON reported errors: {result['errors']}")
    return float(result["seconds"]), int(result["calls"])
