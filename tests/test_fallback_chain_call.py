"""A real SIP call (sipp through livekit-sip) whose route's LLM is a fallback chain (#31): two openai plugins, the first
pointed at a loopback port nobody listens on (its connection refused), the second at the OpenAI stand-in. The caller
hears the second provider's words, the agent publishes the chain and, once it switched, the entry that serves.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import api

from contract.metadata import AgentConfig, RouteMetadata
from contract.resolve import text_sha
from localenv.manager import Endpoints, LocalEnv
from tests.openai_standin import OpenAIStandIn
from tests.test_openai_call import utterances, wait_utterances
from tests.test_worker_live import WorkerProc, answered_call, start_worker

REFUSED = "http://127.0.0.1:9/v1"  # the first entry's endpoint: nothing listens, every connection is refused
SECOND_SAYS = "Hello, the second provider in the chain is answering your call."
NUMBER = "+15550100311"


@pytest.fixture(scope="module")
def worker(local_env: LocalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    ep = local_env.endpoints
    assert ep is not None
    log = tmp_path_factory.mktemp("chain") / "worker.log"
    w = start_worker(ep, log, f"siphon-chain-{uuid.uuid4().hex[:6]}", OPENAI_API_KEY="sk-" + secrets.token_hex(8))
    yield w
    assert w.stop() == 0, w.text()[-3000:]


def _records(w: WorkerProc, room: str, message: str) -> list[dict[str, Any]]:
    out = []
    for line in w.text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("room") == room and rec.get("message") == message:
            out.append(rec)
    return out


def _agent_attributes(ep: Endpoints, room: str) -> dict[str, str]:
    """The agent participant's attributes in ``room``, as LiveKit holds them."""

    async def read() -> dict[str, str]:
        lk = api.LiveKitAPI(ep.livekit_url, ep.api_key, ep.api_secret)
        try:
            people = (await lk.room.list_participants(api.ListParticipantsRequest(room=room))).participants
        finally:
            await lk.aclose()
        return next((dict(p.attributes) for p in people if p.kind == api.ParticipantInfo.Kind.AGENT), {})

    return asyncio.run(read())


def test_a_refused_first_llm_entry_is_answered_by_the_second_on_a_real_call(
    local_env: LocalEnv, worker: WorkerProc
) -> None:
    ep = local_env.endpoints
    assert ep is not None
    with OpenAIStandIn(reply=lambda body, n: SECOND_SAYS) as standin:
        chain = [{"provider": "openai", "model": "gpt-4.1-mini", "base_url": REFUSED},
                 {"provider": "openai", "model": "gpt-4o", "base_url": standin.base_url}]  # fmt: skip
        route = RouteMetadata(route="chain", called_number=NUMBER,
                              agent_config=AgentConfig.model_validate({"llm": chain, "end_call": False}))  # fmt: skip
        published: dict[str, str] = {}

        def during(room: str) -> None:
            wait_utterances(worker, room, 1)
            published.update(_agent_attributes(ep, room))

        seen, end, _ = answered_call(ep, worker.agent_name, NUMBER, route, during)
        chats = standin.requests("/chat/completions")
    assert seen.room and seen.attributes, worker.text()[-3000:]
    assert seen.attributes["siphon.llm"] == "openai/gpt-4.1-mini > openai/gpt-4o", seen.attributes
    said = utterances(worker, seen.room)
    assert said and said[0]["text_sha"] == text_sha(SECOND_SAYS), (said, worker.text()[-3000:])
    assert [r.body["model"] for r in chats if r.body] == ["gpt-4o"], chats
    switched = _records(worker, seen.room, "fallback chain switched")
    assert [(r["kind"], r["serving"]) for r in switched] == [("llm", "openai/gpt-4o")], switched
    assert published.get("siphon.llm_serving") == "openai/gpt-4o", published
    assert end.completed, end
