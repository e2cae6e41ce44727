"""Real calls on the production model path: livekit-plugins-openai for the LLM, the STT and the TTS, pointed (their
``base_url`` parameter, set in the model specs) at a loopback stand-in of the OpenAI API (``tests/openai_standin.py``).

The worker runs as a deployment runs it: its ECS deployment is created on moto by the project's own provider (the
model specs as the worker's defaults, ``OPENAI_API_KEY`` as a provider key), and the worker process gets exactly the
container's environment of that task definition (plain variables, and each secret resolved from its ``valueFrom``
in moto's Secrets Manager), over the image's own ``ENV``; the LiveKit URL, key and secret given to the deployment are
the local environment's, so the injected values connect. Only the health server's address is the test's (a free
port on loopback). The environment is not ``local``, so no offline model may stand in for a provider.

The caller is sipp through the real livekit-sip; it speaks a sentence (espeak-ng, sox) after the greeting.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from contract.deployment import ENVIRONMENT_ENV
from contract.metadata import AgentConfig, RouteMetadata
from contract.resolve import text_sha
from infra import sipp
from infra.verify import Observation
from localenv.manager import Endpoints, LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.openai_standin import OpenAIStandIn, Recorded
from tests.test_ecs_helpers import container_env, create_deployment
from tests.test_worker_live import ROOT, WAIT, WorkerProc, answered_call, entry_command

ENVIRONMENT = "staging"  # not "local": the worker must build the providers' models, not the offline ones
DEFAULT_LLM, ROUTE_LLM = "gpt-4.1-mini", "gpt-4o-mini"
STT_MODEL, TTS_MODEL = "gpt-4o-mini-transcribe", "gpt-4o-mini-tts"
TRANSCRIPT = "I would like to know the balance of my account, please."
CALLER_SAYS = "Hello, I would like to know the balance of my account, please."
SPEAKS_AFTER_S = 5.0  # after the greeting (about 2 s of the stand-in's audio), so it interrupts nothing
UTTERANCE_MESSAGES = ("agent utterance finished", "agent speech interrupted by the caller")


def openai_specs(base_url: str, llm_model: str = DEFAULT_LLM) -> dict[str, dict[str, Any]]:
    """The three model specs, each the openai plugin pointed at ``base_url``."""
    return {
        "llm": {"provider": "openai", "model": llm_model, "base_url": base_url},
        # use_realtime false: the plain /audio/transcriptions endpoint (the plugin's default for this model too)
        "stt": {"provider": "openai", "model": STT_MODEL, "base_url": base_url, "use_realtime": False},
        # pcm: raw 24 kHz 16-bit samples (the plugin asks for mp3 by default, which the stand-in cannot encode)
        "tts": {"provider": "openai", "model": TTS_MODEL, "base_url": base_url, "response_format": "pcm"},
    }


@pytest.fixture(scope="module")
def standin() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(transcript=TRANSCRIPT) as s:
        yield s


@pytest.fixture(scope="module")
def caller_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller's sentence (then 60 s of silence) as the RTP payload sipp plays."""
    return spoken_ulaw(tmp_path_factory.mktemp("openai-caller"), CALLER_SAYS)


@dataclass
class Deployed:
    """The worker started from a deployment's task definition, and what the deployment injected."""

    worker: WorkerProc
    plain_env: dict[str, str]  # the container's environment (task definition)
    secret_env: dict[str, str]  # its secrets, resolved through Secrets Manager
    openai_key: str  # the provider key given to the deployment


def task_environment(task_definition_arn: str) -> tuple[dict[str, str], dict[str, str]]:
    """The worker container's plain environment and its secrets, each resolved from its ``valueFrom``."""
    td = boto3.client("ecs").describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]
    sm = boto3.client("secretsmanager")
    secret_env = {
        s["name"]: sm.get_secret_value(SecretId=s["valueFrom"])["SecretString"]
        for s in td["containerDefinitions"][0].get("secrets", [])
    }
    return container_env(task_definition_arn), secret_env


def image_env() -> dict[str, str]:
    """The image's ``ENV`` (worker/Dockerfile) with this checkout's paths; the health server on a free local port."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
        "SIPHON_HTTP_PORT": "0",  # the image's 8081, on the test machine any free port
        "SIPHON_HTTP_HOST": "127.0.0.1",
    }


@contextmanager
def deployed_worker(
    local_env: LocalEnv, agent_name: str, environment: str, worker: dict[str, Any], keys: dict[str, str], log: Path
) -> Iterator[tuple[WorkerProc, dict[str, str], dict[str, str]]]:
    """A worker started from the ECS deployment of ``worker`` (its default layer) with ``keys`` as provider keys,
    created on moto by the project's provider: the process gets exactly its task definition's environment (plain
    variables, and each secret resolved from Secrets Manager) over the image's ``ENV``. Yields the worker, the plain
    environment and the injected secrets; on exit, stops it (exit 0) and checks no key reached its log."""
    ep = local_env.endpoints
    assert ep is not None
    provider, created = create_deployment(
        agent_name=agent_name, environment=environment, worker=worker, livekit_url=ep.livekit_url,
        livekit_api_key=ep.api_key, livekit_api_secret=ep.api_secret, provider_keys=keys,
    )  # fmt: skip
    try:
        plain, injected = task_environment(created.outs["task_definition_arn"])
        assert plain.get(ENVIRONMENT_ENV) == environment, "the deployment names the worker's environment"
        env = {**image_env(), **plain, **injected}
        out = log.open("wb")
        proc = subprocess.Popen(entry_command(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        w = WorkerProc(proc, log, env["SIPHON_AGENT_NAME"], out)
        try:
            w.wait_for_log('"registered worker"', timeout=60)
            yield w, plain, injected
        finally:
            rc = w.stop()
        assert rc == 0, w.text()[-3000:]
        assert not [k for k in keys.values() if k in w.text()], "a provider key must never be logged"
    finally:
        provider.delete(created.id, created.outs)
        local_env.reset_aws()


@pytest.fixture(scope="module")
def deployed(
    local_env: LocalEnv, standin: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    key = "sk-test-" + secrets.token_hex(16)
    log = tmp_path_factory.mktemp("openai-worker") / "worker.log"
    with deployed_worker(local_env, f"openai-{uuid.uuid4().hex[:6]}", ENVIRONMENT, openai_specs(standin.base_url),
                         {"OPENAI_API_KEY": key}, log) as (w, plain, injected):  # fmt: skip
        yield Deployed(w, plain, injected, key)
        assert w.errors() == []


def utterances(w: WorkerProc, room: str) -> list[dict[str, Any]]:
    """The worker's log records of the agent's utterances in ``room`` (finished or interrupted), in order."""
    out = []
    for line in w.text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("message") in UTTERANCE_MESSAGES and rec.get("room") == room:
            out.append(rec)
    return out


def wait_utterances(w: WorkerProc, room: str, n: int, timeout: float = 2 * WAIT) -> None:
    deadline = time.monotonic() + timeout
    while len(utterances(w, room)) < n and time.monotonic() < deadline:
        assert w.proc.poll() is None, w.text()[-3000:]
        time.sleep(0.2)


@dataclass
class Call:
    """One answered call and what the stand-in was asked during it."""

    seen: Observation
    end: sipp.CallEnd
    said: list[dict[str, Any]]  # the agent's utterance records (text_sha of what the session recorded)
    requests: list[Recorded]


def place_call(
    ep: Endpoints, d: Deployed, standin: OpenAIStandIn, number: str, route: RouteMetadata, n: int,
    audio: Path | None = None,
) -> Call:  # fmt: skip
    """A real call on ``route``, held until the agent has finished ``n`` utterances."""
    before = len(standin.requests())

    def during(room: str) -> None:
        wait_utterances(d.worker, room, n)

    seen, end, _ = answered_call(
        ep, d.worker.agent_name, number, route, during,
        audio=sipp.CallerAudio(audio, after_s=SPEAKS_AFTER_S) if audio else None,
    )  # fmt: skip
    assert seen.room and seen.attributes, d.worker.text()[-3000:]
    return Call(seen, end, utterances(d.worker, seen.room), standin.requests()[before:])


def chat_requests(call: Call, marker: str) -> list[Recorded]:
    """The chat completion requests of ``call`` whose messages carry ``marker`` (its route's instructions)."""
    return [r for r in call.requests if r.path == "/v1/chat/completions" and marker in json.dumps(r.body)]


def user_texts(r: Recorded) -> list[str]:
    """The user messages of a chat completion request."""
    assert r.body is not None
    out = []
    for m in r.body["messages"]:
        if m.get("role") == "user":
            content = m["content"]
            out.append(content if isinstance(content, str) else " ".join(p.get("text", "") for p in content))
    return out


ROUTE_A = "You answer route A of the stand-in test."
ROUTE_B = "You answer route B of the stand-in test."


@pytest.fixture(scope="module")
def spoken_call(local_env: LocalEnv, deployed: Deployed, standin: OpenAIStandIn, caller_audio: Path) -> Call:
    """A call on the worker's default models: the agent greets, the caller speaks, the agent replies."""
    assert local_env.endpoints is not None
    route = RouteMetadata(route="openai-default", called_number="+15550100301",
                          agent_config=AgentConfig(system_instructions=ROUTE_A, end_call=False))  # fmt: skip
    return place_call(local_env.endpoints, deployed, standin, "+15550100301", route, 2, audio=caller_audio)


def test_a_call_on_the_openai_plugin_speaks_what_the_endpoint_streamed(spoken_call: Call, deployed: Deployed) -> None:
    """The session's record of each agent utterance (greeting, then the reply to the caller's words) is the text the
    endpoint streamed for it; the caller's words reached the endpoint as a WAV and came back as the user's turn."""
    attrs = spoken_call.seen.attributes or {}
    assert (attrs["siphon.llm"], attrs["siphon.stt"], attrs["siphon.tts"]) == (
        f"openai/{DEFAULT_LLM}", f"openai/{STT_MODEL}", f"openai/{TTS_MODEL}",
    ), attrs  # fmt: skip
    assert attrs.get("siphon.fallbacks", "") == "", attrs  # LiveKit drops an attribute set to ""
    chats = chat_requests(spoken_call, ROUTE_A)
    assert chats, f"no chat request from the call: {spoken_call.requests}"
    assert {r.body["model"] for r in chats if r.body} == {DEFAULT_LLM}, "the worker's default model"
    said = [u["text_sha"] for u in spoken_call.said]
    assert len(said) >= 2, f"greeting and reply expected: {spoken_call.said}\n{deployed.worker.text()[-3000:]}"
    streamed = {text_sha(r.reply): r for r in chats if r.status == 200}
    assert said[0] == text_sha(chats[0].reply), "the greeting is the first request's streamed text"
    assert all(s in streamed for s in said), (said, [r.reply for r in chats])
    reply = streamed[said[1]]
    assert TRANSCRIPT in user_texts(reply), "the reply answers the caller's transcribed words"
    assert all(u["message"] == "agent utterance finished" for u in spoken_call.said[:2]), spoken_call.said

    (stt,) = [r for r in spoken_call.requests if r.path == "/v1/audio/transcriptions"]
    assert stt.body is not None and stt.upload is not None
    assert stt.body["model"] == STT_MODEL and stt.upload["seconds"] > 1.0, (stt.body, stt.upload)
    speech = [r for r in spoken_call.requests if r.path == "/v1/audio/speech"]
    assert speech and all(r.body and r.body["model"] == TTS_MODEL for r in speech), speech
    spoken = " ".join(r.body["input"].strip() for r in speech if r.body)
    assert all(str(streamed[s].reply) in spoken for s in said[:2]), (spoken, said)
    assert spoken_call.end.completed, spoken_call.end
    assert deployed.worker.errors() == []


def test_the_key_the_deployment_injects_is_the_bearer_the_endpoint_receives(
    spoken_call: Call, deployed: Deployed
) -> None:
    """The key reaches the container only as a secret (``valueFrom``), and every request the plugin made carries it."""
    assert set(deployed.secret_env) == {"OPENAI_API_KEY", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}
    assert not set(deployed.secret_env) & set(deployed.plain_env)
    assert deployed.secret_env["OPENAI_API_KEY"] == deployed.openai_key
    paths = {r.path for r in spoken_call.requests}
    assert {"/v1/chat/completions", "/v1/audio/speech", "/v1/audio/transcriptions"} <= paths, paths
    bearers = {r.headers.get("authorization") for r in spoken_call.requests}
    assert bearers == {f"Bearer {deployed.openai_key}"}, bearers


def test_a_routes_model_override_reaches_the_endpoints_request_body(
    local_env: LocalEnv, deployed: Deployed, standin: OpenAIStandIn
) -> None:
    """A route's LLM spec (whole: it repeats base_url) replaces the worker's default model for that call only."""
    assert local_env.endpoints is not None
    route = RouteMetadata(route="openai-route-model", called_number="+15550100302", agent_config=AgentConfig(
        system_instructions=ROUTE_B, end_call=False, llm=openai_specs(standin.base_url, ROUTE_LLM)["llm"]))  # fmt: skip
    call = place_call(local_env.endpoints, deployed, standin, "+15550100302", route, 1)
    attrs = call.seen.attributes or {}
    assert attrs["siphon.llm"] == f"openai/{ROUTE_LLM}", attrs
    assert "llm=route" in attrs["siphon.sources"]
    chats = chat_requests(call, ROUTE_B)
    assert chats and {r.body["model"] for r in chats if r.body} == {ROUTE_LLM}, chats
    assert call.said and call.said[0]["text_sha"] == text_sha(chats[0].reply)
    assert call.end.completed, call.end
