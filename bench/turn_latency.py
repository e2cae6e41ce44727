"""Turn latency on real calls: from the end of the caller's speech to the first sound of the agent's answer at the
caller, for the packaged worker and for a stock livekit-agents agent (``bench/stock_agent.py``), on the prod trio.

Both agents run the same models: livekit-plugins-deepgram (``nova-3``), -openai (``gpt-4.1-mini``) and -cartesia
(``sonic-2``), each pointed (``base_url``) at its loopback stand-in (``tests/deepgram_standin.py``,
``tests/openai_standin.py``, ``tests/cartesia_standin.py``), each stand-in with a fixed latency: Deepgram's final
transcript held back ``--stt-delay`` s (on top of its endpointing: a final only once the audio has been quiet for
its ``min_silence_ms``), OpenAI's first token ``--llm-delay`` s after the request, Cartesia's first audio chunk
``--tts-delay`` s after a context's first message. Both use Silero VAD and VAD-driven turns with the packaged
worker's default settings (``contract.turns.SIPHON_DEFAULTS``). Ours is the packaged worker as deployed outside
``local`` (environment ``staging``: the three models as its defaults, the keys in its environment); the stock agent
is the framework's example written out.

One local environment (Redis, livekit-server, livekit-sip); each agent behind its own trunk number. sipp places the
calls, ``--calls`` per agent alternating (ours, stock, stock, ours, ...); in each the caller speaks ``--turns``
short sentences (espeak-ng), each followed by ``--gap`` s of silence, once the greeting is over. Both directions are
read off the wire (``tests/rtp_tap.py`` on sipp's and livekit-sip's RTP ports): for each turn, ``t_end`` is the last
loud packet of the caller's sentence (to livekit-sip) and ``t_answer`` the first loud packet the caller receives
after it; the turn latency is ``t_answer - t_end``. A turn whose answer started before the sentence ended (the
agent spoke over the caller) or that got no answer before the next sentence is counted, not timed.

Reports p50 / p95 / max per agent, the ratio ours / stock, and what each adds above the stand-ins' configured
latencies (the three delays plus Deepgram's endpointing).

    PATH=$(python3 -m localenv.tools path):$PATH .venv/bin/python -m bench.turn_latency [--calls 2] [--turns 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit import api

from bench.sip_calls import CAPACITY, WORKERS, _route, workers
from bench.worker_dispatch import pct
from contract.deployment import worker_env
from contract.metadata import AgentConfig, RouteMetadata
from infra import sipp
from localenv.manager import Endpoints, LocalEnv
from tests.caller_audio import spoken_ulaw
from tests.cartesia_standin import CartesiaStandIn
from tests.deepgram_standin import DeepgramStandIn
from tests.openai_standin import OpenAIStandIn
from tests.rtp_tap import SIPP_MEDIA_PORTS, RtpPacket, RtpTap

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = (
    "Hello, I would like to check my order.", "It was placed last Tuesday.", "The number is one two three four.",
    "Can you tell me when it ships?", "I also need a new address.", "It is twelve Main Street.",
    "Please send me an email.", "What is my current balance?", "I want to pay by card.", "Is there a discount?",
    "Can I speak to a manager?", "My phone number changed.", "Please update my account.", "How long is the wait?",
    "I would like a refund.", "The package was damaged.", "Can you send a new one?", "Thank you very much.",
    "Is the store open today?", "What time do you close?", "Do you deliver on weekends?", "That is all for now.",
    "One more question, please.", "Goodbye and have a nice day.",
)  # fmt: skip
REPLY = "Sure, let me check that for you."  # every reply (and the greeting): about 1.5 s, over before the next turn
GREETING_S = 6.0  # the caller starts speaking this long after the answer: the greeting is over
LOUD = 500.0  # RMS of 16-bit samples: speech is thousands, silence and comfort noise tens (tests/rtp_tap.py)
WORD_GAP = 1.0  # s: quieter stretches than this are inside a sentence
KEYS = {"DEEPGRAM_API_KEY": "dg-bench-key", "OPENAI_API_KEY": "sk-bench-key", "CARTESIA_API_KEY": "ct-bench-key"}
NUMBERS = {"ours": "+15550310001", "stock": "+15550310002"}
AGENTS = {"ours": "bench-turns-ours", "stock": "bench-turns-stock"}


@dataclass
class StandIns:
    """The three providers' stand-ins, each with its fixed latency."""

    deepgram: DeepgramStandIn
    openai: OpenAIStandIn
    cartesia: CartesiaStandIn

    def trio(self) -> dict[str, dict[str, Any]]:
        """The prod stack's three models as provider dicts at the stand-ins (tests/test_prod_trio_call.py's)."""
        return {
            "stt": {"provider": "deepgram", "model": "nova-3", "language": "en", "base_url": self.deepgram.base_url},
            "llm": {"provider": "openai", "model": "gpt-4.1-mini", "base_url": self.openai.base_url},
            "tts": {"provider": "cartesia", "model": "sonic-2", "base_url": self.cartesia.base_url},
        }


@contextmanager
def standins(stt_delay: float, llm_delay: float, tts_delay: float) -> Iterator[StandIns]:
    """The stand-ins, started with their fixed latencies."""
    with ExitStack() as stack:
        dg = stack.enter_context(DeepgramStandIn(transcripts=SENTENCES, final_delay_s=stt_delay))
        oa = stack.enter_context(OpenAIStandIn(reply=lambda body, n: REPLY, first_token_delay_s=llm_delay))
        ct = stack.enter_context(CartesiaStandIn())
        ct.first_chunk_delay = tts_delay
        yield StandIns(dg, oa, ct)


def caller_audio(work: Path, turns: int, gap: float) -> Path:
    """``turns`` sentences, each followed by ``gap`` s of silence, as the raw PCMU sipp plays."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "turns.ulaw"
    with out.open("wb") as f:
        for i in range(turns):
            part = work / f"s{i}"
            part.mkdir()
            f.write(spoken_ulaw(part, SENTENCES[i % len(SENTENCES)], silence_after_s=0).read_bytes())
            f.write(b"\xff" * int(gap * 8000))  # PCMU silence (mu-law of 0)
    return out


def register(s: StandIns) -> None:
    """Both agents as workers of ``bench.sip_calls.workers``: ours as deployed outside ``local`` (the trio as its
    defaults), the stock agent on the same trio; the same keys and image settings for both."""
    common = {**KEYS, "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0", "PYTHONUNBUFFERED": "1"}
    # a capacity for both (load = jobs / capacity): without one, livekit-agents' load is the host's CPU, and on a
    # busy host a worker above 0.7 takes no call
    trio = AgentConfig.model_validate(s.trio())
    ours = worker_env(agent_name=AGENTS["ours"], environment="staging", defaults=trio, max_calls=CAPACITY)
    WORKERS["turns-ours"] = ([sys.executable, "-m", "worker.main", "start"], {**common, **ours})
    urls = json.dumps({kind: spec["base_url"] for kind, spec in s.trio().items()})
    WORKERS["turns-stock"] = ([sys.executable, "-m", "bench.stock_agent", "start"],
                              {**common, "STOCK_AGENT_NAME": AGENTS["stock"], "STOCK_TRIO": urls,
                               "STOCK_MAX_JOBS": str(CAPACITY)})  # fmt: skip


def sip_rtp_ports(env: LocalEnv) -> range:
    """livekit-sip's RTP port range, from the configuration the local environment wrote."""
    low, high = json.loads((env.run_dir / "livekit-sip.yaml").read_text())["rtp_port"].split("-")
    return range(int(low), int(high) + 1)


@dataclass
class Turn:
    """One sentence of the caller and what came back: ``latency`` in s, or why there is none."""

    who: str
    call: int
    latency: float | None
    why: str = ""
    stages: tuple[float, float, float, float] | None = None  # see STAGES


STAGES = ("end -> LLM request", "LLM request -> TTS request", "TTS request -> first chunk", "first chunk -> caller")
"""Where a turn's time goes, from the stand-ins' own clocks (the bench's process): the caller's sentence ends, the
LLM is asked (Deepgram's endpointing and final delay, the agent's end of turn), the TTS is asked (the LLM's first
token, the agent's text handling), its first chunk leaves, the caller hears it (the agent's audio path, the room,
the bridge)."""


def stages(s: StandIns, end: float, answer: float) -> tuple[float, float, float, float] | None:
    """The four stages of one turn (``STAGES``), from the first chat request and TTS context between ``end`` and
    ``answer``; None when either is missing."""
    chat = next((r.at for r in s.openai.requests("/chat/completions") if end < r.at < answer), None)
    tts = next((c for c in s.cartesia.contexts() if end < c.first_message_at < answer and c.first_chunk_at), None)
    if chat is None or tts is None or tts.first_chunk_at is None:
        return None
    return (chat - end, tts.first_message_at - chat, tts.first_chunk_at - tts.first_message_at,
            answer - tts.first_chunk_at)  # fmt: skip


def turns_of(s: StandIns, who: str, call: int, packets: list[RtpPacket], expected: int) -> list[Turn]:
    """The turns of one call, read off the wire: each sentence the caller sent, and the first loud packet it
    received after the sentence's last loud packet (before the next sentence starts)."""
    said = [p for p in packets if p.dst_port not in SIPP_MEDIA_PORTS and p.rms > LOUD]
    heard = [p for p in packets if p.dst_port in SIPP_MEDIA_PORTS and p.rms > LOUD]
    sentences: list[tuple[float, float]] = []  # (first, last loud packet) of each sentence
    for p in said:
        if sentences and p.at - sentences[-1][1] < WORD_GAP:
            sentences[-1] = (sentences[-1][0], p.at)
        else:
            sentences.append((p.at, p.at))
    if len(sentences) != expected:
        print(f"  {who} call {call}: {len(sentences)} sentences on the wire, {expected} played", flush=True)
    out = []
    for i, (start, end) in enumerate(sentences):
        until = sentences[i + 1][0] if i + 1 < len(sentences) else end + 30
        if any(start <= p.at <= end for p in heard):
            out.append(Turn(who, call, None, "agent spoke during the sentence"))
            continue
        answer = next((p for p in heard if end < p.at < until), None)
        if answer is None:
            out.append(Turn(who, call, None, "no answer"))
        else:
            out.append(Turn(who, call, answer.at - end, stages=stages(s, end, answer.at)))
    return out


def one_call(ep: Endpoints, tap: RtpTap, s: StandIns, who: str, call: int, audio: Path, turns: int) -> list[Turn]:
    """One call to ``who`` in which the caller speaks ``audio``; its turns."""
    seconds = audio.stat().st_size / 8000
    started = time.monotonic()
    placed = sipp.place(ep.sip_address, NUMBERS[who], caller="+15005550006", hold_s=GREETING_S + seconds + 1,
                        answer_timeout_s=30, audio=sipp.CallerAudio(audio, after_s=GREETING_S))  # fmt: skip
    end = placed.wait(GREETING_S + seconds + 60)
    if end.answered_after is None:
        print(f"  {who} call {call}: not answered: {end.reason[:200]}", flush=True)
        return [Turn(who, call, None, "call not answered")] * turns
    result = turns_of(s, who, call, tap.packets(since=started), turns)
    timed = [t.latency for t in result if t.latency is not None]
    print(f"  {who} call {call}: {len(timed)}/{len(result)} turns timed, p50 {pct(timed, 50):.3f} s, "
          f"p95 {pct(timed, 95):.3f} s", flush=True)  # fmt: skip
    return result


def table(done: list[Turn], configured: float, delays: str, stage_config: tuple[float, ...]) -> str:
    """p50 / p95 / max per agent, ours / stock, and what each adds above the configured latencies; then the p50 of
    each stage (``STAGES``) per agent, against its configured part."""
    rows = ["| agent | turns timed / spoken | p50 (s) | p95 (s) | max (s) | p50 above configured | "
            "p95 above configured |", "|" + "---|" * 7]  # fmt: skip
    figures = {}
    for who in ("ours", "stock"):
        mine = [t for t in done if t.who == who]
        timed = [t.latency for t in mine if t.latency is not None]
        p50, p95 = pct(timed, 50), pct(timed, 95)
        figures[who] = (p50, p95)
        rows.append(f"| {who} | {len(timed)} / {len(mine)} | {p50:.3f} | {p95:.3f} | {max(timed, default=0):.3f} | "
                    f"{p50 - configured:+.3f} | {p95 - configured:+.3f} |")  # fmt: skip
        missed = sorted({t.why for t in mine if t.latency is None})
        if missed:
            rows.append(f"| {who}: untimed | {', '.join(missed)} | | | | | |")
    (o50, o95), (s50, s95) = figures["ours"], figures["stock"]
    rows.append(f"| ours / stock | | x{o50 / s50:.3f} | x{o95 / s95:.3f} | | {o50 - s50:+.3f} s | {o95 - s95:+.3f} s |")
    rows += ["", "| stage (p50, s) | configured | ours | stock |", "|" + "---|" * 4]
    for i, name in enumerate(STAGES):
        cells = [pct([t.stages[i] for t in done if t.who == who and t.stages], 50) for who in ("ours", "stock")]
        rows.append(f"| {name} | {stage_config[i]:.3f} | {cells[0]:.3f} | {cells[1]:.3f} |")
    return "\n".join(rows) + f"\nconfigured latencies: {delays} = {configured:.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2, help="calls per agent (alternating)")
    parser.add_argument("--turns", type=int, default=12, help="sentences the caller speaks in each call")
    parser.add_argument("--gap", type=float, default=6.0, help="s of silence after each sentence")
    parser.add_argument("--stt-delay", type=float, default=0.25, help="Deepgram stand-in: final transcript delay (s)")
    parser.add_argument("--llm-delay", type=float, default=0.35, help="OpenAI stand-in: time to first token (s)")
    parser.add_argument("--tts-delay", type=float, default=0.2, help="Cartesia stand-in: first chunk delay (s)")
    args = parser.parse_args()
    assert 0 < args.turns <= len(SENTENCES) * 4
    os.environ.update(KEYS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        standins(args.stt_delay, args.llm_delay, args.tts_delay) as s,
        LocalEnv.start(Path(tmp)) as env,
    ):
        ep = env.endpoints
        assert ep is not None
        os.environ.update(ep.env())
        endpointing = s.deepgram.min_silence_ms / 1000
        configured = args.stt_delay + args.llm_delay + args.tts_delay + endpointing
        delays = (f"Deepgram endpointing {endpointing:g} + final delay {args.stt_delay:g}, OpenAI first token "
                  f"{args.llm_delay:g}, Cartesia first chunk {args.tts_delay:g}")  # fmt: skip
        rtp = sip_rtp_ports(env)
        assert not set(rtp) & set(SIPP_MEDIA_PORTS), "livekit-sip's RTP ports overlap sipp's: the tap cannot tell"
        audio = caller_audio(Path(tmp) / "caller", args.turns, args.gap)
        warm = caller_audio(Path(tmp) / "warm", 1, 4.0)
        route = RouteMetadata(route="turns", direction="inbound",
                              agent_config=AgentConfig(greeting_instructions="Greet the caller."))  # fmt: skip

        async def setup() -> None:
            lk = api.LiveKitAPI()
            try:
                await _route(lk, "turns-ours", NUMBERS["ours"], AGENTS["ours"], route.to_json())
                await _route(lk, "turns-stock", NUMBERS["stock"], AGENTS["stock"], "")
            finally:
                await lk.aclose()

        asyncio.run(setup())
        register(s)
        done: list[Turn] = []
        with workers(env, ["turns-ours", "turns-stock"]), RtpTap(set(SIPP_MEDIA_PORTS) | set(rtp)) as tap:
            for who in ("ours", "stock"):  # one short call each first: the first job of a fresh worker pays extra
                one_call(ep, tap, s, who, 0, warm, 1)
            for i in range(args.calls):
                for who in ("ours", "stock") if i % 2 == 0 else ("stock", "ours"):
                    done += one_call(ep, tap, s, who, i + 1, audio, args.turns)
        kept = ROOT / ".run" / "bench-turn-latency"  # the run's logs (workers, servers, bridge) outlive it
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(env.run_dir, kept, ignore=shutil.ignore_patterns("*.sock", "dump.rdb"))
        print(f"logs: {kept}")
    stage_config = (endpointing + args.stt_delay, args.llm_delay, args.tts_delay, 0.0)
    print("\n" + table(done, configured, delays, stage_config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
