"""Deploy the ``local`` stack onto a running local environment and start its local worker processes."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulumi import automation as auto

from contract.deployment import worker_env
from localenv import engine, tools
from localenv.manager import LocalEnv, http_ok
from localenv.ports import free_tcp_port
from localenv.process import Supervised

if TYPE_CHECKING:
    from infra.stack.model import StackFile

# The local stack's secrets are local test values; its config file is committed with this passphrase.
LOCAL_PASSPHRASE = "siphon-local"
LOCAL_STACK = "local"


ENV_FILE = "env.sh"
"""The file in the run folder that gives a second terminal what it needs (``source <run>/env.sh``)."""
LATEST_LINK = tools.REPO / ".run" / LOCAL_STACK
"""``.run/local``: the newest run folder of ``./dev local`` (so ``source .run/local/env.sh`` always works)."""


def stack_env(env: LocalEnv, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """What the Pulumi CLI and ``siphon-infra`` need for the ``local`` stack of this run: the services' endpoints,
    and the stack's backend (the run folder's ``state``), Pulumi home and passphrase."""
    assert env.endpoints is not None
    penv = engine.engine_env(env.run_dir / "state", LOCAL_PASSPHRASE, env.run_dir / "pulumi-home", extra_env)
    return {**env.endpoints.env(), **penv}


def local_stack(env: LocalEnv, extra_env: dict[str, str] | None = None) -> auto.Stack:
    """The ``local`` Pulumi stack of this repository, with its state in the run folder."""
    return engine.select_stack(tools.REPO, LOCAL_STACK, stack_env(env, extra_env))


def write_env_file(env: LocalEnv) -> Path:
    """Write ``<run>/env.sh``: the pinned tools and the project's virtualenv on ``PATH``, and ``stack_env``. Every
    command the README shows then works in a shell that sourced it (``tests/test_readme_commands.py``)."""
    tools_path = os.pathsep.join([*(str(p) for p in tools.bin_dirs()), str(engine.VENV / "bin")])
    lines = ["# Written by `./dev local` for a second terminal: source it, then run the README's commands.",
             f'export PATH="{tools_path}:$PATH"', "export UV_PYTHON_DOWNLOADS=never"]  # fmt: skip
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(stack_env(env).items())]
    path = env.run_dir / ENV_FILE
    path.touch(mode=0o600)  # it holds this run's (throwaway) LiveKit API secret: the user's eyes only
    path.write_text("\n".join(lines) + "\n")
    return path


def deploy(env: LocalEnv, on_output: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``pulumi up`` the local stack; return its outputs as plain values."""
    result = local_stack(env).up(on_output=on_output)
    return {k: v.value for k, v in result.outputs.items()}


def worker_name(agent_name: str, index: int) -> str:
    """The local process name of an agent's ``index``-th worker (0: ``worker-<agent>``, then ``-2``, ``-3``...)."""
    return f"worker-{agent_name}" + (f"-{index + 1}" if index else "")


def start_stack_workers(env: LocalEnv, stack: StackFile) -> list[Supervised]:
    """The stack's local workers, as ``./dev local`` runs them: ``local.processes`` per agent with ``local:``."""
    local = {k: a for k, a in stack.agents.items() if a.local}
    return start_workers(env, {k: a.worker_env(stack.environment) for k, a in local.items()},
                         {k: a.local.processes for k, a in local.items() if a.local})  # fmt: skip


def start_workers(
    env: LocalEnv, agent_env: dict[str, dict[str, str]], processes: dict[str, int] | None = None
) -> list[Supervised]:
    """Start ``processes[agent]`` (default 1) worker processes per agent (the image's entry command), restarted
    when they die, and wait until each is healthy and registered with LiveKit."""
    assert env.endpoints is not None
    workers = []
    for agent_name, settings in agent_env.items():
        for index in range((processes or {}).get(agent_name, 1)):
            port = free_tcp_port()
            proc_env = {
                **os.environ,
                **env.endpoints.env(),
                **settings,
                **worker_env(agent_name=agent_name, http_port=port),
            }
            svc = env.spawn(
                worker_name(agent_name, index),
                [sys.executable, "-m", "worker.main", "start"],
                functools.partial(http_ok, port),
                env=proc_env,
                cwd=tools.REPO,
                restartable=True,
            )
            workers.append(svc)
    for svc in workers:  # healthy (its HTTP server) comes before registered with LiveKit: wait for both
        svc.wait_healthy(60, check=functools.partial(_registered, svc))
    return workers


def _registered(svc: Supervised) -> bool:
    return bool(svc.health and svc.health()) and b'"registered worker"' in svc.log_path.read_bytes()
