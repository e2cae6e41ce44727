"""The worker image, built here and run: it answers a real SIP call, runs as non-root, answers its health check,
drains a running call on SIGTERM, holds no secrets and no test code, builds every registered model provider
without the network, and at start writes a credential given as a key file's text to a private file its plugins load.

The image is built with ``localenv.image.build`` (what ``./dev image`` runs: docker if its engine runs, else
podman on the base ``./dev setup`` made from Debian packages; layer-cached, so a warm build only checks its
layers). Each container runs on the host network against the session's livekit-server, as the worker of one
route: a trunk and dispatch rule made for it, called by sipp through the real livekit-sip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.metadata import AgentConfig, RouteMetadata
from contract.resolve import text_sha
from localenv import image as worker_image
from localenv import tools
from localenv.manager import Endpoints, LocalEnv
from localenv.ports import free_tcp_port
from tests.test_worker_live import WAIT, LogWatch, answered_call

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|API_KEY|CREDENTIAL)", re.IGNORECASE)
FIGURES: dict[str, str] = {}

# Run inside the image (``python -c``, no network): build every non-offline provider of the image's own registry, once
# per credential variable the registry accepts for it (that one variable alone, a dummy value; Google's service-account
# file is written here with a fresh key), and record, through an audit hook installed before anything is imported,
# every connection and name lookup the process makes. A last lookup is the canary: the hook sees it and it fails.
PROVIDER_BUILDS = r"""
import sys

NET = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
       "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"}
net = []
sys.addaudithook(lambda event, args: net.append(f"{event} {args!r}"[:200]) if event in NET else None)

import json, os, signal, socket, tempfile, time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from contract.models import PROVIDERS, parse_spec
from worker.models.registry import build

key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
service_account = os.path.join(tempfile.mkdtemp(), "service-account.json")
with open(service_account, "w") as f:
    json.dump({"type": "service_account", "project_id": "siphon-dummy", "private_key_id": "0" * 40,
               "private_key": key, "client_email": "dummy@siphon-dummy.iam.gserviceaccount.com", "client_id": "1",
               "token_uri": "https://oauth2.googleapis.com/token"}, f)
CREDENTIALS = {var for kinds in PROVIDERS.values() for entry in kinds.values() for var in entry.env}


def too_slow(*_):
    raise TimeoutError("no component after 60 s")


signal.signal(signal.SIGALRM, too_slow)
rows = []
for kind, providers in PROVIDERS.items():
    for name, entry in providers.items():
        if entry.offline:
            continue
        for var in entry.env or (None,):
            for other in CREDENTIALS:
                os.environ.pop(other, None)
            if var:
                os.environ[var] = service_account if var == "GOOGLE_APPLICATION_CREDENTIALS" else f"dummy-{var.lower()}"
            first, started, component, error = len(net), time.monotonic(), None, None
            signal.alarm(60)
            try:
                built = build(parse_spec(kind, name))
                component = f"{type(built).__module__}.{type(built).__qualname__}"
            except Exception as err:
                error = f"{type(err).__name__}: {err}"[:300]
            finally:
                signal.alarm(0)
            rows.append({"kind": kind, "provider": name, "credential": var, "component": component, "error": error,
                         "network": net[first:], "seconds": time.monotonic() - started})
network = list(net)
try:
    socket.getaddrinfo("siphon-canary.invalid", 443)
    canary = "resolved"
except OSError as err:
    canary = type(err).__name__
print(json.dumps({"rows": rows, "network": network, "canary": canary, "canary_seen": net[len(network):]}))
"""


@pytest.fixture(scope="module")
def built() -> Iterator[worker_image.BuiltImage]:
    try:
        img = worker_image.build()
    except tools.ToolError as e:
        pytest.fail(f"cannot build the worker image: {e}")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"the worker image did not build:\n{(e.stdout or '')[-3000:]}\n{(e.stderr or '')[-3000:]}")
    FIGURES["build"] = img.summary()
    yield img
    print("\nworker image: " + "; ".join(f"{k}: {v}" for k, v in FIGURES.items()))


@dataclass
class Container(LogWatch):
    """A worker container running in the foreground of a ``<engine> run`` process."""

    engine: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    agent_name: str
    http_port: int

    def cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.engine, *args], env=worker_image.engine_env(), capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.cmd("stop", "-t", "30", self.name)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.cmd("rm", "-f", self.name)
                self.proc.wait(timeout=20)
        return self.proc.returncode


def run_container(img: worker_image.BuiltImage, ep: Endpoints, log: Path, **env: str) -> Container:
    """Start the image as the worker of a fresh agent name; LiveKit credentials are passed by name only (their
    values come from the engine's environment, never its command line)."""
    name = f"siphon-worker-{uuid.uuid4().hex[:8]}"
    agent_name = f"siphon-image-{uuid.uuid4().hex[:6]}"
    port = free_tcp_port()
    # SIPHON_ENVIRONMENT=local: the worker runs the offline test models (its defaults here) in `local` only.
    settings = {"SIPHON_AGENT_NAME": agent_name, "SIPHON_HTTP_PORT": str(port), "SIPHON_HTTP_HOST": "127.0.0.1",
                "SIPHON_MAX_JOBS": "20", "SIPHON_DRAIN_TIMEOUT": "60", "SIPHON_ENVIRONMENT": "local", **env}  # fmt: skip
    argv = [img.engine, "run", "--rm", "--name", name, "--network", "host", "--stop-timeout", "60",
            *(a for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") for a in ("-e", k)),
            *(a for k, v in settings.items() for a in ("-e", f"{k}={v}")), img.ref]  # fmt: skip
    out = log.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(argv, env={**worker_image.engine_env(), **ep.env()}, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    c = Container(img.engine, name, proc, log, agent_name, port)
    try:
        c.wait_for_log('"registered worker"', timeout=90)
    except BaseException:
        c.stop()
        raise
    FIGURES.setdefault("container start to worker registered", f"{time.monotonic() - started:.1f}s")
    return c


@pytest.fixture(scope="module")
def container(
    built: worker_image.BuiltImage, local_env: LocalEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    ep = local_env.endpoints
    assert ep is not None
    c = run_container(built, ep, tmp_path_factory.mktemp("image") / "container.log")
    yield c
    assert c.stop() == 0, c.text()[-3000:]


def test_the_worker_in_the_image_answers_a_real_call_with_its_routes_configuration(
    endpoints: Endpoints, container: Container
) -> None:
    number = "+15550199"
    greeting = "Hello from the worker image."
    route = RouteMetadata(route="image-route", called_number=number,
                          agent_config=AgentConfig(tts="local/espeak-ng:en-gb", greeting_instructions=greeting))  # fmt: skip
    seen, end, trunk_id = answered_call(endpoints, container.agent_name, number, route)
    assert seen.attributes, container.text()[-3000:]
    attrs = seen.attributes
    assert attrs["siphon.agent_name"] == container.agent_name  # only the container registered this name
    assert attrs["siphon.route"] == "image-route"
    assert attrs["siphon.direction"] == "inbound"
    assert attrs["siphon.called_number"] == number
    assert attrs["siphon.trunk_id"] == trunk_id
    assert attrs["siphon.tts"] == "local/espeak-ng:en-gb"
    assert attrs["siphon.greeting_instructions_sha"] == text_sha(greeting)
    assert attrs.get("siphon.fallbacks", "") == ""  # LiveKit drops empty attributes
    assert end.completed, end
    FIGURES["INVITE to answered (image worker)"] = f"{seen.answered_after:.2f}s"


def test_the_image_runs_as_a_non_root_user_and_answers_its_health_checks(container: Container) -> None:
    status = container.cmd("exec", container.name, "cat", "/proc/1/status")
    assert status.returncode == 0, status.stderr
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status.stdout, re.M)
    assert uids and uids.groups() == ("10001", "10001"), status.stdout  # the worker process (PID 1) itself
    with urllib.request.urlopen(f"http://127.0.0.1:{container.http_port}/", timeout=5) as r:
        assert r.status == 200
    health = container.cmd("healthcheck", "run", container.name)  # the image's own HEALTHCHECK command
    assert health.returncode == 0, health.stdout + health.stderr


def test_sigterm_drains_a_running_call_then_the_container_exits_0(
    built: worker_image.BuiltImage, endpoints: Endpoints, tmp_path: Path
) -> None:
    c = run_container(built, endpoints, tmp_path / "drain.log")
    observed: dict[str, bool] = {}

    def sigterm_mid_call(room: str) -> None:
        assert c.cmd("kill", "--signal", "TERM", c.name).returncode == 0
        c.wait_for_log('"draining worker"')
        observed["running while the call lasts"] = c.proc.poll() is None

    try:
        number = "+15550198"
        seen, end, _ = answered_call(endpoints, c.agent_name, number, RouteMetadata(route="drain"), sigterm_mid_call)
        assert seen.attributes, c.text()[-3000:]
        assert observed == {"running while the call lasts": True}, c.text()[-3000:]
        assert end.completed, end
        c.proc.wait(timeout=WAIT)
        assert c.proc.returncode == 0, c.text()[-3000:]
    finally:
        c.stop()


def test_the_image_holds_no_secrets_and_no_test_code(built: worker_image.BuiltImage) -> None:
    inspect = subprocess.run([built.engine, "image", "inspect", built.ref], env=worker_image.engine_env(),
                             capture_output=True, text=True, check=True)  # fmt: skip
    config = json.loads(inspect.stdout)[0]["Config"]
    names = [e.split("=", 1)[0] for e in config.get("Env") or []]
    assert not [n for n in names if SECRET_NAME.search(n)], names
    assert config.get("User") == "10001:10001"
    script = (
        "import os, json\n"
        "hits = []\n"
        "for top in ('/app', '/root', '/home', '/src', '/tmp'):\n"
        "    for d, dirs, files in os.walk(top):\n"
        "        if '/site-packages' in d: continue\n"
        "        for f in files:\n"
        "            if f.startswith(('test_', '.env', 'Pulumi.', 'conftest')) or f.endswith(('.pem', '.key')):\n"
        "                hits.append(os.path.join(d, f))\n"
        "print(json.dumps({'app': sorted(os.listdir('/app')), 'worker': sorted(os.listdir('/app/worker')),"
        " 'hits': hits}))\n"
    )
    run = subprocess.run([built.engine, "run", "--rm", "--network", "none", "--entrypoint", "python", built.ref,
                          "-c", script], env=worker_image.engine_env(), capture_output=True, text=True, timeout=120,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["app"] == [".venv", "contract", "worker"], seen
    assert not {"tests", "localenv", "bench", "infra", "Dockerfile"} & set(seen["worker"]), seen
    assert seen["hits"] == [], seen
    for line in subprocess.run([built.engine, "history", "--no-trunc", "--format", "{{.CreatedBy}}", built.ref],
                               env=worker_image.engine_env(), capture_output=True, text=True,
                               check=True).stdout.splitlines():  # fmt: skip
        assert "LIVEKIT_API_SECRET=" not in line and os.environ.get("LIVEKIT_API_SECRET", "\0") not in line, line


def test_the_image_builds_every_registered_model_provider_from_each_credential_without_the_network(
    built: worker_image.BuiltImage,
) -> None:
    """What `validate` accepts, the image can build: every provider of the registry (but the offline test models),
    built in a container of the image with no network, from each credential variable the registry accepts for it
    alone (a dummy value), yields its component; no build connects or looks a name up."""
    from contract.models import PROVIDERS

    expected = {(kind, name, var) for kind, providers in PROVIDERS.items() for name, entry in providers.items()
                if not entry.offline for var in entry.env or (None,)}  # fmt: skip
    name = f"siphon-providers-{uuid.uuid4().hex[:8]}"
    argv = [built.engine, "run", "--rm", "--name", name, "--network", "none", "--entrypoint", "python", built.ref,
            "-c", PROVIDER_BUILDS]  # fmt: skip
    started = time.monotonic()
    try:
        run = subprocess.run(argv, env=worker_image.engine_env(), capture_output=True, text=True, timeout=300,
                             check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        subprocess.run([built.engine, "rm", "-f", name], env=worker_image.engine_env(), capture_output=True,
                       timeout=60, check=False)  # fmt: skip
        pytest.fail("building the model providers in the image took over 300 s (a network call hanging?)")
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    rows = report["rows"]
    label = {id(r): f"{r['kind']}/{r['provider']} with {r['credential'] or 'no credential'}" for r in rows}
    assert {(r["kind"], r["provider"], r["credential"]) for r in rows} == expected  # the image holds this registry
    assert [f"{label[id(r)]}: {r['error']}" for r in rows if r["error"]] == []
    assert {label[id(r)]: r["network"] for r in rows if r["network"]} == {}
    assert report["network"] == []  # nor while importing, nor from a thread a build left behind
    assert report["canary"] != "resolved" and report["canary_seen"], report  # the hook sees lookups; none can succeed
    providers = {(r["kind"], r["provider"]) for r in rows}
    FIGURES["model providers built in the image"] = (
        f"{len(providers)} providers from {len(rows)} credentials, {sum(r['seconds'] for r in rows):.1f}s building, "
        f"{took:.1f}s container run"
    )


# Run inside the image (``python -c``, no network), as the worker starts on ECS: GOOGLE_APPLICATION_CREDENTIALS holds a
# service account key's text (as ECS injects a secret) and Google STT and TTS are the default models. The worker's own
# start-up (worker.main.start_up) writes the file and builds the defaults; then the plugins make their clients, which
# load their credential from the variable (no credential passed: google.auth's default), and google.auth.default
# itself. The audit hook records every connection and name lookup (a credential that did not load from the file
# would send google.auth to the metadata server).
FILE_CREDENTIAL_START = r"""
import sys

NET = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
       "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"}
net = []
sys.addaudithook(lambda event, args: net.append(f"{event} {args!r}"[:200]) if event in NET else None)

import asyncio, json, os, stat

VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
given = os.environ[VARIABLE]

from worker.main import start_up

settings, plugins = start_up()
path = os.environ[VARIABLE]
with open(path) as f:
    same = f.read() == given
file, folder = os.stat(path), os.stat(os.path.dirname(path))

import google.auth
from contract.models import parse_spec
from worker.models.registry import build

stt, tts = build(parse_spec("stt", settings.defaults.stt)), build(parse_spec("tts", settings.defaults.tts))


async def clients():
    return {"stt": await stt._create_client(timeout=5), "tts": tts._ensure_client()}


loaded = {kind: getattr(client.transport._credentials, "service_account_email", None)
          for kind, client in asyncio.run(clients()).items()}
adc, project = google.auth.default()
loaded["google.auth.default"] = adc.service_account_email
print(json.dumps({"plugins": plugins, "components": [type(stt).__module__, type(tts).__module__],
                  "path": path, "same_text": same, "mode": stat.S_IMODE(file.st_mode), "uid": file.st_uid,
                  "folder_mode": stat.S_IMODE(folder.st_mode), "loaded": loaded, "project": project, "network": net}))
"""


def test_the_image_writes_a_file_credential_given_as_text_to_a_private_file_google_stt_and_tts_load_it_offline(
    built: worker_image.BuiltImage,
) -> None:
    """ECS injects a secret as the variable's text; Google's plugins read GOOGLE_APPLICATION_CREDENTIALS as a path.
    The worker's start-up in the image, with no network, points the variable at a 0600 file (in a 0700 directory,
    owned by the worker's user) holding exactly the text given, builds Google STT and TTS as its default models, and
    the plugins' clients load the service account from that file without a connection or a name lookup."""
    from tests.test_file_credentials import EMAIL, service_account_text

    text = service_account_text()
    settings = {"SIPHON_ENVIRONMENT": "prod", "SIPHON_DEFAULT_LLM": "openai/gpt-4.1-mini",
                "SIPHON_DEFAULT_STT": "google", "SIPHON_DEFAULT_TTS": "google", "OPENAI_API_KEY": "sk-dummy"}  # fmt: skip
    argv = [built.engine, "run", "--rm", "--network", "none", "-e", "GOOGLE_APPLICATION_CREDENTIALS",
            *(a for k, v in settings.items() for a in ("-e", f"{k}={v}")), "--entrypoint", "python", built.ref,
            "-c", FILE_CREDENTIAL_START]  # fmt: skip
    run = subprocess.run(argv, env={**worker_image.engine_env(), "GOOGLE_APPLICATION_CREDENTIALS": text},
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert text not in run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["plugins"] == ["livekit.plugins.google", "livekit.plugins.openai"], report
    assert report["components"] == ["livekit.plugins.google.stt", "livekit.plugins.google.tts"], report
    assert report["path"].startswith("/tmp/siphon-credentials-") and report["same_text"] is True, report
    assert (report["mode"], report["folder_mode"], report["uid"]) == (0o600, 0o700, 10001), report
    assert report["loaded"] == {"stt": EMAIL, "tts": EMAIL, "google.auth.default": EMAIL}, report
    assert report["project"] == "siphon-dummy" and report["network"] == [], report


# Inside the image: build each (kind, spec) with exactly the credential variables its agent's ECS deployment
# injects (``provider_key_secrets``, dummy values), no network. Prints {label: error or null}.
DECLARED_BUILDS = r"""
import json, os, sys
from contract.models import parse_spec
from worker.models.registry import build

out = {}
for item in json.loads(sys.argv[1]):
    for name in [n for n in os.environ if n.endswith(("_API_KEY", "_CREDENTIALS"))]:
        os.environ.pop(name)
    os.environ.update({variable: f"dummy-{variable.lower()}" for variable in item["keys"]})
    try:
        out[item["label"]] = type(build(parse_spec(item["kind"], item["spec"]))).__module__
    except Exception as err:
        out[item["label"]] = f"ERROR {type(err).__name__}: {err}"[:300]
print(json.dumps(out))
"""


def test_the_image_builds_every_model_the_committed_stacks_name_with_the_keys_their_deployments_inject(
    built: worker_image.BuiltImage,
) -> None:
    """The production path as the README leads to it: every model spec stacks/dev.yaml and stacks/prod.yaml name
    (agent defaults, routes, header layers, outbound routes) builds in the image from only the variables that
    agent's ECS deployment injects, so a production caller reaches the declared provider, not a test model."""
    from pydantic_core import to_jsonable_python

    from contract.metadata import MODEL_KINDS
    from infra.stack.checks import _layers
    from infra.stack.load import load, stack_path

    items = []
    for environment in ("dev", "prod"):
        stack, _ = load(stack_path(environment))
        for where, agent, layer in _layers(stack):
            ecs = stack.agents[agent].ecs
            for kind in MODEL_KINDS:
                if (spec := getattr(layer, kind)) is not None:
                    items.append({"label": f"{environment}: {where}.{kind}", "kind": kind,
                                  "spec": to_jsonable_python(spec), "keys": sorted(ecs.provider_key_secrets)})  # fmt: skip
    assert len(items) >= 18, items  # three kinds for each of the six agents' defaults at least
    argv = [built.engine, "run", "--rm", "--network", "none", "--entrypoint", "python", built.ref, "-c",
            DECLARED_BUILDS, json.dumps(items)]  # fmt: skip
    run = subprocess.run(argv, env=worker_image.engine_env(), capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in results.items() if v.startswith("ERROR")} == {}
    assert not any(v.startswith("worker.models.offline") for v in results.values()), results
    FIGURES["models the committed stacks name, built in the image"] = str(len(results))
