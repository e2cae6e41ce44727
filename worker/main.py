"""The packaged agent worker: one ``AgentServer`` whose ``rtc_session`` serves every route ("micro-agent").

Run (locally and in the image, the same command)::

    python -m worker.main start      # production mode: SIGTERM drains running calls
    python -m worker.main dev        # development mode

Environment: ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``, ``SIPHON_AGENT_NAME`` (or
``LIVEKIT_AGENT_NAME``), and the ``SIPHON_*`` settings documented on ``contract.settings.WorkerSettings``.
"""

from __future__ import annotations

import warnings

from livekit.agents import cli

from contract.settings import WorkerSettings
from worker.server import build_server, check_default_models


def main() -> None:
    """CLI entry: ``start`` / ``dev`` / ``console``, as livekit-agents' CLI."""
    warnings.filterwarnings("ignore", message="the built-in Python CLI is deprecated", category=DeprecationWarning)
    settings = WorkerSettings.from_env()
    plugins = check_default_models(settings)  # outside `local`: stops here, before registering, if they cannot run
    cli.run_app(build_server(settings, preload=plugins))  # built here, not at import: job processes import us again


if __name__ == "__main__":
    main()
