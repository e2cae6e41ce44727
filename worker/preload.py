"""Work done once in the forkserver that every job process forks from (Linux), so that no call pays for it.

``worker.server`` lists this module in ``AgentServer(preload_modules=...)``. Job processes inherit, copy-on-
write, what it loads: the worker's modules and the end-call tool's (a job process would otherwise import
them again), the Silero VAD of the worker's default turn-taking (an ONNX session with one intra-op thread,
as livekit-agents' own preload builds its VAD) and the TLS context every job's HTTP session uses (it parses
the CA bundle: ~70 ms of CPU per job otherwise). Under the ``spawn`` start method (macOS) livekit-agents
preloads nothing: each job process imports the worker's modules again and ``worker.server.prewarm`` loads the
default VAD.
"""

from __future__ import annotations

import contextlib

from livekit.agents.beta import tools as _end_call_tools  # noqa: F401  (imported by worker.end_call per call)
from livekit.agents.utils import http_context

import worker.server  # noqa: F401  (the server and the job's code, worker.call, with every module they import)
from contract.settings import WorkerSettings
from worker import turn_taking

turn_taking.session_options(WorkerSettings.from_env().defaults)  # lru-cached per process: inherited by every job
with contextlib.suppress(AttributeError):  # a private helper of livekit-agents: skip if it moves
    http_context._create_ssl_context()
