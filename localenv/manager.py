"""The local environment: Redis, livekit-server, livekit-sip and a moto server on free loopback ports.

Use it as a context manager (``with LocalEnv.start(run_dir) as env: ...``) or through the
``siphon-local`` CLI. Each service logs to ``<run_dir>/<service>.log``; everything is stopped on exit,
on error and on Ctrl-C.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from contract.deployment import AGENT_NAME_ENV
from contract.wire import LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV, LIVEKIT_URL_ENV
from localenv import tools
from localenv.ports import LOOPBACK, free_port_range, free_tcp_port
from localenv.process import ServiceError, Supervised

API_KEY = "siphon-local"
AWS_REGION = "us-east-1"
PORT_RETRIES = 3
RTP_PORTS = 200  # RTP ports for livekit-sip: two per concurrent call (bursts of 40+ calls)
if TYPE_CHECKING:
    from localenv.deaths import DeathWatch

RESTART_SPACING = 2.0  # seconds between two starts of one worker (one that cannot start is not restarted in a loop)


def http_ok(port: int, path: str = "/") -> bool:
    """True when an HTTP GET on a loopback port answers below 500."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 500
    finally:
        conn.close()


def _redis_ok(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _yaml(data: dict[str, object]) -> str:
    # JSON is valid YAML; both servers read their config with a YAML parser.
    return json.dumps(data, indent=2)


@dataclass(frozen=True)
class Endpoints:
    """What a user or test needs to reach the local services."""

    livekit_url: str
    api_key: str
    api_secret: str
    redis_address: str
    aws_endpoint_url: str
    sip_address: str  # host:port of livekit-sip (UDP and TCP)
    run_dir: Path

    @property
    def livekit_http_url(self) -> str:
        """The Twirp (HTTP) URL of livekit-server."""
        return self.livekit_url.replace("ws://", "http://", 1)

    def env(self) -> dict[str, str]:
        """Environment variables for LiveKit and AWS clients (boto3, livekit-api, Pulumi providers)."""
        out = {
            LIVEKIT_URL_ENV: self.livekit_url,
            LIVEKIT_API_KEY_ENV: self.api_key,
            LIVEKIT_API_SECRET_ENV: self.api_secret,
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_REGION": AWS_REGION,
            "SIPHON_SIP_ADDRESS": self.sip_address,
        }
        return out


@dataclass
class LocalEnv:
    """A running set of local services; stop() tears all of them down."""

    run_dir: Path
    endpoints: Endpoints | None = None
    services: list[Supervised] = field(default_factory=list)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    say: Callable[[str], object] = print  # where the supervisor's reports go (a worker's death and its calls)
    _deaths: DeathWatch | None = field(default=None, init=False)

    @classmethod
    def start(cls, run_dir: Path, *, log_level: str = "info") -> LocalEnv:
        """Start every service and wait until each is healthy; on any failure stop what started and raise."""
        for attempt in range(PORT_RETRIES):
            env = cls(run_dir=run_dir / f"attempt-{attempt}" if attempt else run_dir)
            try:
                env._start_all(log_level=log_level)
                return env
            except ServiceError as e:
                env.stop()
                # Free ports are picked, then bound by the service: another process can take one in between.
                if "address already in use" not in str(e) or attempt == PORT_RETRIES - 1:
                    raise
            except BaseException:
                env.stop()
                raise
        raise AssertionError("unreachable")

    def __enter__(self) -> LocalEnv:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def spawn(
        self,
        name: str,
        argv: list[str],
        health: Callable[[], bool],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        *,
        restartable: bool = False,
    ) -> Supervised:
        """Start a supervised process that logs to ``<run_dir>/<name>.log`` and stops with the environment; a
        ``restartable`` one (a worker) is started again when it dies, the others' death stops the environment."""
        svc = Supervised(
            name, argv, self.run_dir / f"{name}.log", env=env, cwd=cwd or self.run_dir, health=health,
            restartable=restartable,
        )  # fmt: skip
        self.services.append(svc)
        svc.start()
        self._watch(svc)
        return svc

    def _watch(self, svc: Supervised) -> None:
        """A worker's death is reported for recovery of its calls (``localenv.deaths``), as ECS reports a task's."""
        agent = (svc.env or {}).get(AGENT_NAME_ENV)
        if not svc.restartable or agent is None or svc.proc is None or self.endpoints is None:
            return
        if self._deaths is None:
            from localenv.deaths import DeathWatch  # the LiveKit client: only once a worker runs

            ep = self.endpoints
            self._deaths = DeathWatch(ep.livekit_url, ep.api_key, ep.api_secret, say=self.say)
        self._deaths.watch(svc.proc, agent)

    def _start_all(self, *, log_level: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)  # 43 characters: PyJWT warns under 32
        livekit_server = tools.require_binary(tools.livekit_server_tool())
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise tools.ToolError("redis-server is not installed: run `./dev setup` (Debian package redis-server)")
        moto_server = Path(sys.executable).with_name("moto_server")
        if not moto_server.exists():
            raise tools.ToolError(f"moto_server not found next to {sys.executable}: run `./dev setup`")
        livekit_sip = tools.require_binary(tools.livekit_sip_tool())

        redis_port, moto_port, lk_port, lk_tcp = (free_tcp_port() for _ in range(4))
        lk_udp = free_port_range(1)

        redis = self.spawn(
            "redis",
            [redis_server, "--port", str(redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
             "--dir", str(self.run_dir)],
            lambda: _redis_ok(redis_port),
        )  # fmt: skip
        moto = self.spawn(
            "moto",
            [str(moto_server), "-H", LOOPBACK, "-p", str(moto_port)],
            lambda: http_ok(moto_port, "/moto-api/"),
            env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
        )
        self.startup_seconds["redis"] = redis.wait_healthy(15)

        lk_config = self.run_dir / "livekit-server.yaml"
        lk_config.write_text(
            _yaml({
                "port": lk_port,
                "bind_addresses": [LOOPBACK],
                "rtc": {"tcp_port": lk_tcp, "udp_port": lk_udp, "node_ip": LOOPBACK, "use_external_ip": False,
                        "enable_loopback_candidate": True},
                "redis": {"address": f"{LOOPBACK}:{redis_port}"},
                "keys": {API_KEY: secret},
                "logging": {"level": log_level},
            })
        )  # fmt: skip
        server = self.spawn(
            "livekit-server", [str(livekit_server), "--dev", "--config", str(lk_config)], lambda: http_ok(lk_port)
        )
        self.startup_seconds["livekit-server"] = server.wait_healthy(30)
        self.startup_seconds["moto"] = moto.wait_healthy(30)

        sip_port = free_port_range(1, tcp_too=True)
        rtp = free_port_range(RTP_PORTS)
        health = free_tcp_port()
        sip_config = self.run_dir / "livekit-sip.yaml"
        sip_config.write_text(
            _yaml({
                "api_key": API_KEY, "api_secret": secret, "ws_url": f"ws://{LOOPBACK}:{lk_port}",
                "redis": {"address": f"{LOOPBACK}:{redis_port}"},
                "sip_port": sip_port, "rtp_port": f"{rtp}-{rtp + RTP_PORTS - 1}",
                "nat_1_to_1_ip": LOOPBACK, "listen_ip": LOOPBACK, "health_port": health,
                # The bridge refuses calls ("cpu exhausted") above 90% host CPU by default; on a shared
                # 2-core box running the whole stack that is most of the time, so only a full CPU refuses.
                "max_cpu_utilization": 1.0,
                "logging": {"level": log_level},
            })
        )  # fmt: skip
        sip = self.spawn("livekit-sip", [str(livekit_sip), "--config", str(sip_config)], lambda: http_ok(health))
        self.startup_seconds["livekit-sip"] = sip.wait_healthy(30)
        sip_address = f"{LOOPBACK}:{sip_port}"

        self.endpoints = Endpoints(
            livekit_url=f"ws://{LOOPBACK}:{lk_port}",
            api_key=API_KEY,
            api_secret=secret,
            redis_address=f"{LOOPBACK}:{redis_port}",
            aws_endpoint_url=f"http://{LOOPBACK}:{moto_port}",
            sip_address=sip_address,
            run_dir=self.run_dir,
        )

    def check_alive(self) -> None:
        """Raise ServiceError naming any server (not a restartable worker) that has died since start-up."""
        dead = [s for s in self.services if not s.alive() and not s.restartable]
        if dead:
            raise ServiceError(", ".join(f"{s.name} died (log {s.log_path})" for s in dead))

    def revive(self) -> list[str]:
        """Start every restartable process (a worker) that has died again, as ECS replaces a stopped task; one line
        per restart, also appended to the process's own log."""
        lines = []
        for svc in self.services:
            spaced = time.monotonic() - svc.started_at >= RESTART_SPACING
            if svc.restartable and svc.proc is not None and not svc.alive() and spaced:
                code = svc.proc.returncode
                svc.stop(grace=0)  # whatever is left of its process group (job processes of a killed worker)
                svc.restarts += 1
                line = f"{svc.name} died (exit code {code}); restarted (restart {svc.restarts}, log {svc.log_path})"
                with svc.log_path.open("a") as log:
                    log.write(f"siphon-local: {line}\n")
                svc.start()
                self._watch(svc)
                lines.append(line)
        return lines

    def reset_aws(self) -> None:
        """Clear all moto state (POST /moto-api/reset)."""
        assert self.endpoints is not None
        port = int(self.endpoints.aws_endpoint_url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection(
            LOOPBACK, port, timeout=60
        )  # a loaded moto with queues and rules resets slowly
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()

    def release(self, svc: Supervised, grace: float = 10.0) -> bool:
        """Stop one process started with spawn() and forget it (a test's own worker; the rest keep running).

        True when it exited on SIGTERM within ``grace`` seconds (False: it had to be killed)."""
        clean = svc.stop(grace)
        if svc in self.services:
            self.services.remove(svc)
        return clean

    def service(self, name: str) -> Supervised:
        """The supervised process of one service (for tests that kill or restart it)."""
        return next(s for s in self.services if s.name == name)

    def restart(self, name: str, timeout: float = 30) -> None:
        """Start a stopped or killed service again with the same config and ports, and wait until healthy."""
        svc = self.service(name)
        svc.stop()
        svc.start()
        assert svc.health is not None
        svc.wait_healthy(timeout)

    def stop(self) -> None:
        """Stop every service, the last started first."""
        for svc in reversed(self.services):
            svc.stop()


def wait_forever(env: LocalEnv, poll: float = 0.5, say: Callable[[str], object] = print) -> None:
    """Block until Ctrl-C or until a server dies; a worker that dies is restarted (and ``say`` tells it)."""
    while True:
        env.check_alive()
        for line in env.revive():
            say(f"siphon-local: {line}")
        time.sleep(poll)
