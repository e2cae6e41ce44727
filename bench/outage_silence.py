"""The caller's silence after a provider fault, over repeated real calls: p50 and p95 per fault, each against calls
with no fault in the same run, and against the floor the worker's bounds set.

The worker and its stand-ins are those of ``tests/test_provider_outages.py``: the packaged worker deployed outside
``local`` (its ECS task definition on moto, keys as secrets), each model kind a fallback chain (the prod trio's
provider first, an OpenAI-compatible one second), each first entry on its loopback stand-in with its fault switches.
Every call is a real SIP call (sipp through livekit-sip); the caller speaks one sentence; both silences are read off
the wire (``tests/rtp_tap.py``): from the answer to the agent's first sound (the greeting) and from the end of the
caller's sentence to the agent's next sound (the reply). The faults run round-robin, ``--calls`` rounds.

The floor of a hang is the bound the worker waits it out for (``contract.settings``: ``tts_timeout`` for Cartesia's
handshake, ``llm_timeout`` for the first LLM, ``stt_timeout`` for a Deepgram stream gone quiet): no worker that waits
that long for a slow-but-healthy provider can speak sooner. Each p95 is reported as a ratio to (floor + the no-fault
p95).

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.outage_silence [--calls 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from bench.worker_dispatch import pct
from contract.settings import WorkerSettings
from localenv.manager import LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.cartesia_standin import CartesiaStandIn
from tests.deepgram_standin import DeepgramStandIn
from tests.openai_standin import OpenAIStandIn
from tests.test_openai_call import deployed_worker
from tests.test_provider_outages import (
    CALLER_SAYS,
    DEEPGRAM_HEARS,
    ENVIRONMENT,
    FAULTS,
    KEYS,
    OPENAI_HEARS,
    SPEAKS_AFTER_S,
    Fault,
    Heard,
    StandIns,
    chains,
    outage_call,
)


def _floor(setting: str | None) -> float:
    """Seconds a fault makes the caller wait: the worker's bound for it (its setting's default), else none."""
    return float(WorkerSettings.model_fields[setting].default) if setting else 0.0


def _row(what: str, fault: Fault | None, heard: list[Heard], base: list[Heard]) -> str:
    greet = [h.to_greeting for h in heard if h.to_greeting is not None]
    reply = [h.to_reply for h in heard if h.to_reply is not None]
    b_greet = pct([h.to_greeting for h in base if h.to_greeting is not None], 95)
    b_reply = pct([h.to_reply for h in base if h.to_reply is not None], 95)
    floor_greet = _floor(fault.delays_greeting_by if fault else None) + b_greet
    floor_reply = _floor(fault.delays_reply_by if fault else None) + b_reply
    silent = len(heard) - min(len(greet), len(reply))
    return (f"| {what} | {len(heard)} | {pct(greet, 50):.2f} / {pct(greet, 95):.2f} | x{pct(greet, 95) / b_greet:.2f} "
            f"| x{pct(greet, 95) / floor_greet:.2f} of {floor_greet:.2f} | {pct(reply, 50):.2f} / {pct(reply, 95):.2f} "
            f"| x{pct(reply, 95) / b_reply:.2f} | x{pct(reply, 95) / floor_reply:.2f} of {floor_reply:.2f} "
            f"| {silent} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5, help="calls per fault (round-robin)")
    args = parser.parse_args()
    runs: dict[str, Fault | None] = {"no fault": None, **FAULTS}
    heard: dict[str, list[Heard]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        env = stack.enter_context(LocalEnv.start(Path(tmp) / "env"))
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())  # the deployment's clients (moto, LiveKit), as the tests' session does
        s = StandIns(
            stack.enter_context(DeepgramStandIn(transcripts=(DEEPGRAM_HEARS,))),
            stack.enter_context(OpenAIStandIn()),
            stack.enter_context(CartesiaStandIn()),
            stack.enter_context(OpenAIStandIn(transcript=OPENAI_HEARS)),
        )
        keys = {name: f"{name.split('_')[0].lower()}-key-{secrets.token_hex(12)}" for name in KEYS}
        w, _, _ = stack.enter_context(deployed_worker(env, f"outage-bench-{uuid.uuid4().hex[:6]}", ENVIRONMENT,
                                                      chains(s), keys, Path(tmp) / "worker.log"))  # fmt: skip
        audio = spoken_ulaw(Path(tmp), CALLER_SAYS)
        n = 0
        for round_ in range(args.calls):
            for name, fault in runs.items():
                n += 1
                if fault:
                    fault.apply(s)
                try:
                    h = outage_call(env, w, f"+1555010{4100 + n:04d}", audio,
                                    speaks_after=fault.speaks_after if fault else SPEAKS_AFTER_S)  # fmt: skip
                finally:
                    s.clear()
                heard[name].append(h)
                print(f"round {round_ + 1} {name}: greeting {h.to_greeting} s, reply {h.to_reply} s", flush=True)
    base = heard["no fault"]
    print("\nSilence the caller hears (s), p50 / p95, and the p95's ratios to the no-fault calls' p95 of the same run "
          "and to the floor (the worker's bound for that fault plus the no-fault p95):")  # fmt: skip
    print("| fault | calls | to greeting p50 / p95 | vs no fault | vs floor | after the sentence p50 / p95 "
          "| vs no fault | vs floor | calls with a silence unanswered |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, fault in runs.items():
        print(_row(fault.what if fault else name, fault, heard[name], base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
