"""The packaged agent worker: one ``AgentServer`` whose ``rtc_session`` serves every route ("micro-agent").

Run (locally and in the image, the same command)::

    python -m worker.main start      # production mode: SIGTERM drains running calls
    python -m worker.main dev        # development mode

Environment: ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``, ``SIPHON_AGENT_NAME`` (or
``LIVEKIT_AGENT_NAME``), the ``SIPHON_*`` settings documented on ``contract.settings.WorkerSettings``, and the
model providers' credentials (``contract.models.PROVIDERS``; a ``FILE_CREDENTIALS`` one as the key file's text).
"""

from __future__ import annotations

import atexit
import os
import shutil
import warnings

from livekit.agents import cli

from contract.models import CredentialError, write_file_credentials
from contract.settings import SettingsError, WorkerSettings
from worker.server import build_server, check_default_models


def deliver_file_credentials() -> None:
    """Write each credential the plugins read as a file, given as the file's text (as ECS injects a secret), to a
    private file and point its variable at it (``contract.models.write_file_credentials``); the files go when the
    worker exits. Done in this process before any model is built and before the job processes start: they fork
    from a forkserver started later from this environment, so they read the same path. A value that is neither a
    file nor a key file's text stops the worker (``SettingsError``), naming the variable, never its value."""
    try:
        written = write_file_credentials(os.environ)
    except CredentialError as err:
        raise SettingsError(
            "invalid worker settings:" + "".join(f"\n  {line}" for line in str(err).splitlines())
        ) from None
    for directory in sorted({os.path.dirname(path) for path in written.values()}):
        atexit.register(shutil.rmtree, directory, ignore_errors=True)


def start_up() -> tuple[WorkerSettings, list[str]]:
    """Everything the worker does before its server: file credentials delivered, settings read and, outside
    ``local``, the default models built (stops here, before registering, if they cannot run). Returns the settings
    and the plugin modules of the default models (preloaded for the job processes)."""
    deliver_file_credentials()
    settings = WorkerSettings.from_env()
    return settings, check_default_models(settings)


def main() -> None:
    """CLI entry: ``start`` / ``dev`` / ``console``, as livekit-agents' CLI."""
    warnings.filterwarnings("ignore", message="the built-in Python CLI is deprecated", category=DeprecationWarning)
    settings, plugins = start_up()
    cli.run_app(build_server(settings, preload=plugins))  # built here, not at import: job processes import us again


if __name__ == "__main__":
    main()
