"""Turn-taking settings: the fields of a configuration layer, and what they resolve to when no layer sets them.

The fields carry SIPHON's worker keyword names as-is (``allow_interruptions``, ``min_silence_duration``,
``activation_threshold``, ``prefix_padding_duration``, ``min_endpointing_delay``, ``max_endpointing_delay``,
``min_interruption_duration``), so a SIPHON ``Agent(...)`` keyword moves over unchanged into an agent's
``defaults`` or a route's ``agent_config``. Unset fields inherit (the merge rule of ``contract.resolve``); what no
layer sets takes SIPHON 0.1.4's values (``SIPHON_DEFAULTS``), so a migrated agent keeps its behaviour.

The worker turns them into session options (Silero VAD, VAD-driven turns): ``worker.turn_taking``.
"""

from __future__ import annotations

from pydantic import Field

from contract.types import StrictModel

Seconds = float


class TurnTaking(StrictModel):
    """Turn-taking fields of a configuration layer (SIPHON's keyword names; ``None`` inherits)."""

    allow_interruptions: bool | None = Field(
        default=None, description="Whether the caller's speech (detected by VAD) interrupts the agent. SIPHON: true."
    )
    min_interruption_duration: Seconds | None = Field(
        default=None, ge=0.05, le=10, description="Speech (s) needed before it interrupts the agent. SIPHON: 0.3."
    )
    min_silence_duration: Seconds | None = Field(
        default=None, ge=0.05, le=10, description="VAD: silence (s) that ends a stretch of speech. SIPHON: 0.5."
    )
    activation_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="VAD: speech probability above which a frame is speech. SIPHON: 0.5."
    )
    prefix_padding_duration: Seconds | None = Field(
        default=None, ge=0, le=5, description="VAD: audio (s) kept before detected speech. SIPHON: 0.3."
    )
    min_endpointing_delay: Seconds | None = Field(
        default=None, ge=0, le=10, description="Least wait (s) after speech before the turn ends. SIPHON: 0.2."
    )
    max_endpointing_delay: Seconds | None = Field(
        default=None, ge=0, le=30, description="Most wait (s) after speech before the turn ends. SIPHON: 0.6."
    )


TURN_FIELDS: tuple[str, ...] = tuple(TurnTaking.model_fields)

SIPHON_DEFAULTS: dict[str, float | bool] = {
    "allow_interruptions": True,
    "min_interruption_duration": 0.3,
    "min_silence_duration": 0.5,
    "activation_threshold": 0.5,
    "prefix_padding_duration": 0.3,
    "min_endpointing_delay": 0.2,
    "max_endpointing_delay": 0.6,
}
"""What applies when no layer sets a field: SIPHON 0.1.4's worker code values (its docs list others)."""


def resolved(layer: TurnTaking) -> dict[str, float | bool]:
    """Every turn-taking field of a merged layer, unset ones filled from ``SIPHON_DEFAULTS``.

    A ``max_endpointing_delay`` below the ``min_endpointing_delay`` (each valid alone, set on different layers)
    is raised to it.
    """
    out = {name: v if (v := getattr(layer, name)) is not None else SIPHON_DEFAULTS[name] for name in TURN_FIELDS}
    out["max_endpointing_delay"] = max(out["max_endpointing_delay"], out["min_endpointing_delay"])
    return out


def attributes(layer: TurnTaking) -> dict[str, str]:
    """The resolved settings as ``siphon.*`` participant attribute values (without the prefix)."""
    return {name: str(v).lower() if isinstance(v, bool) else f"{v:g}" for name, v in resolved(layer).items()}
