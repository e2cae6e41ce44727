"""A local stand-in for the ECS container agent's task scale-in protection endpoint and its task metadata (``/task``:
the task's ARN) (AWS is the one stand-in).

It answers ``PUT/GET /task-protection/v1/state`` as the agent documents it: ``{"protection": {...}}`` on success,
or, when told to refuse, an HTTP 400 with ``{"error": {"Code", "Message"}}``. Every PUT body is recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.task_protection import STATE_PATH

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/voice/0123456789abcdef0123456789abcdef"


class AgentEndpoint:
    """The recorded PUT bodies, the protection state, and whether to refuse (as ECS does without permission)."""

    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []
        self.protected = False
        self.refuse = False
        self.uri = ""

    def answer(self, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if body is not None:
            self.puts.append(body)
        if self.refuse:
            return 400, {"error": {"Arn": TASK_ARN, "Code": "AccessDeniedException",
                                   "Message": "not authorized to perform: ecs:UpdateTaskProtection"}}  # fmt: skip
        if body is not None:
            self.protected = bool(body["ProtectionEnabled"])
        expires = datetime.now(UTC) + timedelta(minutes=(body or {}).get("ExpiresInMinutes", 120))
        return 200, {"protection": {"ProtectionEnabled": self.protected, "TaskArn": TASK_ARN,
                                    "ExpirationDate": expires.isoformat() if self.protected else None}}  # fmt: skip

    def enabled(self) -> list[bool]:
        """The ProtectionEnabled value of every PUT, in order."""
        return [bool(p["ProtectionEnabled"]) for p in self.puts]


@contextmanager
def agent_endpoint() -> Iterator[AgentEndpoint]:
    """Serve an ``AgentEndpoint`` on a free local port (``.uri`` is what ECS puts in ``ECS_AGENT_URI``)."""
    state = AgentEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict[str, Any] | None) -> None:
            if not self.path.endswith(STATE_PATH):
                self.send_error(404)
                return
            status, answer = state.answer(body)
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_PUT(self) -> None:
            self._reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def do_GET(self) -> None:
            if self.path.endswith("/task"):  # the task metadata endpoint (ECS_CONTAINER_METADATA_URI_V4)
                raw = json.dumps({"Cluster": "voice", "TaskARN": TASK_ARN}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            self._reply(None)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.uri = f"http://127.0.0.1:{server.server_address[1]}/api/{TASK_ARN.rsplit('/', 1)[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
