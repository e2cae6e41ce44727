"""Deploy the ``local`` stack onto a running local environment and start its local worker processes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from pulumi import automation as auto

from localenv import engine, tools
from localenv.manager import LocalEnv, http_ok
from localenv.ports import free_tcp_port
from localenv.process import Supervised

# The local stack's secrets are local test values; its config file is committed with this passphrase.
LOCAL_PASSPHRASE = "siphon-local"
LOCAL_STACK = "local"


def local_stack(env: LocalEnv, extra_env: dict[str, str] | None = None) -> auto.Stack:
    """The ``local`` Pulumi stack of this repository, with its state in the run folder."""
    assert env.endpoints is not None
    penv = engine.engine_env(env.run_dir / "state", LOCAL_PASSPHRASE, env.run_dir / "pulumi-home", extra_env)
    return engine.select_stack(tools.REPO, LOCAL_STACK, {**env.endpoints.env(), **penv})


def deploy(env: LocalEnv, on_output: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``pulumi up`` the local stack; return its outputs as plain values."""
    result = local_stack(env).up(on_output=on_output)
    return {k: v.value for k, v in result.outputs.items()}


def worker_name(agent_name: str, index: int) -> str:
    """The local process name of an agent's ``index``-th worker (0: ``worker-<agent>``, then ``-2``, ``-3``...)."""
    return f"worker-{agent_name}" + (f"-{index + 1}" if index else "")


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
                "SIPHON_AGENT_NAME": agent_name,
                "SIPHON_HTTP_PORT": str(port),
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


def start_guard(env: LocalEnv) -> Supervised:
    """The roster guard (``python -m worker.roster``): ends the calls of a worker that died when no worker of its
    agent is alive to take them over."""
    assert env.endpoints is not None
    return env.spawn(
        "roster-guard", [sys.executable, "-m", "worker.roster"], lambda: True,
        env={**os.environ, **env.endpoints.env()}, cwd=tools.REPO, restartable=True,
    )  # fmt: skip
