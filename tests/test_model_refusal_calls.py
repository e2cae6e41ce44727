"""Real calls through the bridge to a worker that cannot build the models a call asks for: outside `local` the call
is refused (inbound: a SIP status the carrier fails over on; outbound: nobody is dialled), never answered by the
offline test models; in `local` the same call still falls back to them.

How the default becomes unbuildable after the worker started (its start check builds the defaults): the default STT
is Google's, whose credential is a file (``GOOGLE_APPLICATION_CREDENTIALS``); the test removes the file once the
worker has registered, as an unmounted or rotated secret would. The call's route asks for AssemblyAI, whose key the
worker is not given. Job processes start on demand (no idle process), so each call builds its models afresh.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from livekit import api

from contract import metrics
from contract.metadata import AgentConfig, CallMetadata, RouteMetadata
from localenv.carrier import Carrier
from localenv.manager import Endpoints
from localenv.ports import free_port_range
from tests.test_worker_live import WorkerProc, _delete_trunk, _outbound_trunk, answered_call, start_worker

DEFAULTS = {
    "SIPHON_DEFAULT_LLM": json.dumps(
        {"provider": "openai", "model": "gpt-4.1-mini", "base_url": "http://127.0.0.1:9/v1"}
    ),
    "SIPHON_DEFAULT_STT": "google",
    "SIPHON_DEFAULT_TTS": "cartesia/sonic-2",
    "OPENAI_API_KEY": "sk-test-not-used",
    "CARTESIA_API_KEY": "test-not-used",
    "SIPHON_NUM_IDLE_PROCESSES": "0",
    "SIPHON_METRIC_CLUSTER": "voice",
    "SIPHON_METRIC_SERVICE": "siphon-test-support",
}
UNBUILDABLE = AgentConfig(stt="assemblyai/best")  # no ASSEMBLYAI_API_KEY anywhere


def _worker(ep: Endpoints, tmp_path: Path, environment: str, monkeypatch: pytest.MonkeyPatch) -> WorkerProc:
    monkeypatch.delenv("ASSEMBLYAI_API_KEY", raising=False)
    credentials = tmp_path / "google.json"  # an authorized-user credential: parsed offline, never used here
    credentials.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s",
                                       "refresh_token": "r"}))  # fmt: skip
    w = start_worker(ep, tmp_path / f"{environment}.log", f"siphon-refuse-{uuid.uuid4().hex[:6]}",
                     SIPHON_ENVIRONMENT=environment, GOOGLE_APPLICATION_CREDENTIALS=str(credentials),
                     **DEFAULTS)  # fmt: skip
    credentials.unlink()  # the default STT cannot be built from now on
    return w


def _events(w: WorkerProc, metric: str) -> list[dict[str, object]]:
    return [r for line in w.text().splitlines() if line.startswith('{"_aws"') and metric in (r := json.loads(line))]


def test_outside_local_an_inbound_call_no_model_can_serve_is_refused_with_486_never_answered(
    endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _worker(endpoints, tmp_path, "prod", monkeypatch)
    try:
        route = RouteMetadata(route="refused", direction="inbound", agent_config=UNBUILDABLE)
        seen, end, _ = answered_call(endpoints, w.agent_name, "+15550100193", route, hold_s=30)
        assert seen.attributes is None, "answered: a caller heard models the route did not ask for"
        assert seen.room, "the call reached its room and its agent before it was refused"
        assert not end.completed and "486" in end.reason, end
        log = w.wait_for_log("refusing the call")
        refusal = next(json.loads(x) for x in log.splitlines() if "refusing the call" in x)
        assert "ASSEMBLYAI_API_KEY" in refusal["reason"] and "google" in refusal["reason"], refusal
        assert "local/silent" not in log, "outside local the test STT is never built"
        (event,) = _events(w, metrics.REFUSALS)
        assert event["ServiceName"] == "siphon-test-support" and event[metrics.REFUSALS] == 1
    finally:
        assert w.stop() == 0, w.text()[-3000:]


def test_outside_local_an_outbound_call_no_model_can_serve_ends_without_dialling(
    endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _worker(endpoints, tmp_path, "prod", monkeypatch)
    carrier = Carrier(free_port_range(1)).start()
    trunk_id = asyncio.run(_outbound_trunk(endpoints, f"127.0.0.1:{carrier.port}", "+15550100"))
    try:
        meta = CallMetadata(route="refused-out", direction="outbound", outbound_trunk_id=trunk_id,
                            caller_number="+15550100", called_number="+15550125", ring_timeout=10,
                            agent_config=UNBUILDABLE)  # fmt: skip

        async def dispatch() -> None:
            lk = api.LiveKitAPI(endpoints.livekit_url, endpoints.api_key, endpoints.api_secret)
            try:
                await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name=w.agent_name, room=f"refused-{uuid.uuid4().hex[:8]}", metadata=meta.to_json()))  # fmt: skip
            finally:
                await lk.aclose()

        asyncio.run(dispatch())
        log = w.wait_for_log('"reason": "refused: no stt can be built')
        assert "ASSEMBLYAI_API_KEY" in log
        assert carrier.invites() == [], "a callee was rung for a call no model could serve"
        assert len(_events(w, metrics.REFUSALS)) == 1
    finally:
        carrier.close()
        asyncio.run(_delete_trunk(endpoints, trunk_id))
        assert w.stop() == 0, w.text()[-3000:]


def test_in_local_the_same_call_falls_back_to_the_test_model_and_is_answered(
    endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _worker(endpoints, tmp_path, "local", monkeypatch)
    try:
        route = RouteMetadata(route="fallback", direction="inbound", agent_config=UNBUILDABLE)
        seen, end, _ = answered_call(endpoints, w.agent_name, "+15550100194", route)
        assert seen.attributes, w.text()[-3000:]
        assert seen.attributes["siphon.stt"] == "local/silent"
        assert seen.attributes["siphon.fallbacks"] == "stt"
        assert end.completed, end
        assert "model spec unavailable, using the agent's default" in w.text()
        assert len(_events(w, metrics.FALLBACKS)) == 1
    finally:
        assert w.stop() == 0, w.text()[-3000:]
