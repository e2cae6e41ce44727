"""Voice activity detection and turn-taking at run time: the session options and what turn-taking did in a call.

The settings are the fields of a configuration layer (``contract.turns.TurnTaking``). VAD is Silero
(``livekit-plugins-silero``): its ONNX model ships inside the wheel, so it runs offline. Turn detection and
interruptions are VAD-driven (no turn-detector model, no network). livekit-agents is imported lazily.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from contract.resolve import text_sha
from contract.turns import TurnTaking, resolved
from contract.wire import (
    CALLER_SPEECH_ATTRIBUTE,
    INTERRUPTED_ATTRIBUTE,
    SIPHON_ATTRIBUTE_PREFIX,
    UTTERANCES_ATTRIBUTE,
)

if TYPE_CHECKING:
    from livekit import rtc
    from livekit.agents import AgentSession, ConversationItemAddedEvent, UserStateChangedEvent
    from livekit.agents import vad as lk_vad

logger = logging.getLogger("siphon.worker")


@functools.lru_cache(maxsize=8)
def load_vad(min_silence_duration: float, activation_threshold: float, prefix_padding_duration: float) -> lk_vad.VAD:
    """Silero VAD with these settings, loaded once per process and settings (the model is in the wheel)."""
    from livekit.plugins import silero

    return silero.VAD.load(
        min_silence_duration=min_silence_duration,
        activation_threshold=activation_threshold,
        prefix_padding_duration=prefix_padding_duration,
    )


def session_options(layer: TurnTaking) -> dict[str, Any]:
    """``AgentSession`` keyword arguments for a merged layer: Silero VAD and VAD-driven turns and interruptions."""
    s = resolved(layer)
    vad = load_vad(
        float(s["min_silence_duration"]), float(s["activation_threshold"]), float(s["prefix_padding_duration"])
    )
    return {
        "vad": vad,
        "turn_handling": {
            "turn_detection": "vad",
            "endpointing": {"min_delay": s["min_endpointing_delay"], "max_delay": s["max_endpointing_delay"]},
            "interruption": {
                "enabled": bool(s["allow_interruptions"]),
                "mode": "vad",  # "adaptive" needs LiveKit's inference service: not offline
                "min_duration": s["min_interruption_duration"],
            },
        },
    }


def report(session: AgentSession, participant: rtc.LocalParticipant, *, room: str) -> None:
    """Log and publish (``siphon.caller_speech``, ``siphon.interrupted``, ``siphon.agent_utterances`` attributes)
    what turn-taking did: caller speech detected by VAD, agent utterances, those the caller cut short. An utterance's
    log record carries ``text_sha`` (``contract.resolve.text_sha`` of the text the session recorded), never the text."""
    counts = {CALLER_SPEECH_ATTRIBUTE: 0, INTERRUPTED_ATTRIBUTE: 0, UTTERANCES_ATTRIBUTE: 0}
    pending: set[asyncio.Task[None]] = set()

    def bump(*attrs: str, message: str, **facts: str | None) -> None:
        for attr in attrs:
            counts[attr] += 1
        extra = {"room": room, **{a.removeprefix(SIPHON_ATTRIBUTE_PREFIX): counts[a] for a in attrs}, **facts}
        logger.info(message, extra=extra)
        task = asyncio.create_task(_publish(participant, {k: str(v) for k, v in counts.items()}))
        pending.add(task)
        task.add_done_callback(pending.discard)

    @session.on("user_state_changed")
    def _user(ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            bump(CALLER_SPEECH_ATTRIBUTE, message="caller speech detected (VAD)")

    @session.on("conversation_item_added")
    def _item(ev: ConversationItemAddedEvent) -> None:
        from livekit.agents.llm import ChatMessage

        if isinstance(ev.item, ChatMessage) and ev.item.role == "assistant":
            sha = text_sha(ev.item.text_content)  # what the session recorded, as a hash: logs hold no call content
            if ev.item.interrupted:
                bump(
                    UTTERANCES_ATTRIBUTE,
                    INTERRUPTED_ATTRIBUTE,
                    message="agent speech interrupted by the caller",
                    text_sha=sha,
                )
            else:
                bump(UTTERANCES_ATTRIBUTE, message="agent utterance finished", text_sha=sha)


async def _publish(participant: rtc.LocalParticipant, attrs: dict[str, str]) -> None:
    try:
        await participant.set_attributes(attrs)
    except Exception as err:  # the room may be gone at the end of a call
        logger.debug("could not publish turn-taking attributes", extra={"error": type(err).__name__})
