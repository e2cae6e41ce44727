"""One call, from the job's start to its end: read the metadata, find or dial the caller, merge the layers, build
the models and run the agent session (``entrypoint``); a job that cannot reach its caller ends saying why.

``worker.server`` registers ``entrypoint`` for the worker's agent name; ``worker.main`` starts the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable

from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc
from livekit.agents import (
    Agent,
    AgentSession,
    CloseReason,
    JobContext,
    room_io,
)
from pydantic_core import to_jsonable_python

from contract import metrics
from contract.metadata import MODEL_KINDS, AgentConfig, CallMetadata, MetadataWarning, ModelKind, parse_metadata
from contract.models import CHAIN_SEPARATOR
from contract.resolve import ResolvedCall, SipFacts, call_layers, caller_drops, is_caller_drop, resolve_call
from contract.settings import WorkerSettings
from contract.wire import CALL_STATUS_ATTRIBUTE, CONFIG_HASH_ATTRIBUTE, ROUTE_ATTRIBUTE, SERVING_ATTRIBUTE
from worker import call_metric, end_call, turn_taking
from worker.dead_job import hang_up, take_over
from worker.models import bounds, hearing, registry

logger = logging.getLogger("siphon.worker")


def _sip_participant(room: rtc.Room) -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP or SipFacts.looks_like_sip(p.attributes):
            return p
    return None


async def _wait_sip(ctx: JobContext, timeout: float, identity: str | None = None) -> rtc.RemoteParticipant | None:
    """The SIP participant that joins (or the participant ``identity``), waited for through the framework; ``None``
    after ``timeout`` s, or when the room is gone."""
    if not ctx.room.isconnected():
        return None  # (the framework's wait would connect again)
    sip = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    joined = ctx.wait_for_participant(identity=identity) if identity else ctx.wait_for_participant(kind=sip)
    try:
        return await asyncio.wait_for(joined, timeout)
    except (TimeoutError, RuntimeError):  # RuntimeError: the room disconnected while waiting
        return None


async def _dial(ctx: JobContext, meta: CallMetadata, settings: WorkerSettings) -> rtc.RemoteParticipant | str:
    """Place the outbound call the metadata asks for; the answered participant, or why there is none."""
    if not (meta.outbound_trunk_id and meta.called_number):
        return "not dialled: outbound metadata needs outbound_trunk_id and called_number"
    ring = meta.ring_timeout or settings.ring_timeout
    identity = meta.participant_identity or f"sip-{ctx.room.name}"[:128]
    request = api.CreateSIPParticipantRequest(
        room_name=ctx.room.name,
        sip_trunk_id=meta.outbound_trunk_id,
        sip_number=meta.caller_number or "",
        sip_call_to=meta.called_number,
        participant_identity=identity,
        participant_name=f"Phone {meta.called_number}",
        ringing_timeout=Duration(seconds=int(ring)),
        wait_until_answered=True,
    )
    try:
        await ctx.api.sip.create_sip_participant(request, timeout=ring + 10)
    except api.TwirpError as err:
        return f"dial failed: {err.code}: {err.message[:200]}"
    except TimeoutError:
        return "dial timed out"
    except Exception as err:  # connection errors and the like: end the job, keep the worker
        return f"dial failed: {type(err).__name__}"
    p = await _wait_sip(ctx, ring, identity=identity)
    return p if p is not None else "answered, but the SIP participant never joined"


Built = dict[tuple[ModelKind, str], registry.Resolved]
"""Components built for this job process, by kind and spec (the defaults are built in prewarm)."""


def spec_key(spec: object) -> str:
    """A model spec as a key of ``Built`` (its JSON, keys sorted)."""
    return json.dumps(to_jsonable_python(spec), sort_keys=True)


def _resolve_models(config: AgentConfig, settings: WorkerSettings, built: Built) -> dict[ModelKind, registry.Resolved]:
    """The components for a call's configuration: the requested spec (a chain: its entries that can be built, behind
    the kind's ``FallbackAdapter``), else the agent's default (and, in ``local`` only, the offline test model);
    raises ``SpecUnavailable`` when a kind has nothing that can be built."""
    out: dict[ModelKind, registry.Resolved] = {}
    for kind in MODEL_KINDS:
        spec = getattr(config, kind)
        key = (kind, spec_key(spec))
        if key not in built:
            default = getattr(settings.defaults, kind)
            # streams a non-streaming STT of a chain (cached per settings)
            vad = turn_taking.session_options(config)["vad"]
            built[key] = registry.resolve(kind, spec, default, offline=settings.offline_models, vad=vad,
                                          timeout=bounds.attempt_timeout(settings, kind))  # fmt: skip
        out[kind] = built[key]
    return out


def _publish_serving(ctx: JobContext, models: dict[ModelKind, registry.Resolved]) -> None:
    """For each kind served by a fallback chain: when the entry that serves changes, say so in the log and in the
    agent's ``siphon.<kind>_serving`` attribute (absent: the chain's first entry serves); stops at the job's end."""
    tasks: set[asyncio.Task[None]] = set()
    for kind, resolved in models.items():
        if len(resolved.entries) < 2:
            continue  # one component: nothing switches

        def report(label: str, kind: ModelKind = kind) -> None:
            logger.warning("fallback chain switched", extra={"kind": kind, "serving": label})
            task = asyncio.create_task(_set_attributes(ctx, {SERVING_ATTRIBUTE.format(kind=kind): label}))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        stop = registry.watch_serving(resolved, report)

        async def _stop(_reason: str, stop: Callable[[], None] = stop) -> None:
            stop()

        ctx.add_shutdown_callback(_stop)


def _count(settings: WorkerSettings, metric: str, count: int = 1) -> None:
    """Events in the call metric (an ECS deployment's log group turns the line into a CloudWatch count)."""
    line = call_metric.event_line(settings.metric_cluster, settings.metric_service, metric, count=count)
    if line:  # one write: the worker's other processes write to the same stdout
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def _hang_up(ctx: JobContext, reason: str) -> None:
    """End the job and its call: the room is closed, so livekit-sip refuses a still-ringing INVITE with 486 (on which
    a carrier fails over) or hangs up an answered call; never a caller left in silence."""
    ctx.shutdown(reason=reason)  # first, so that the job ends for this reason, not for the room it closes
    await hang_up(ctx.api, ctx.room.name)  # the job waits for its entrypoint to return before it leaves the room


async def _refuse(ctx: JobContext, settings: WorkerSettings, reason: str, *, hang_up: bool) -> None:
    """End a call no model can serve as declared: it is never answered by other models. With ``hang_up`` (a caller
    is in the room, not yet answered: livekit-sip answers once the agent's audio is up), the room is closed, and
    the bridge refuses the INVITE with 486, on which a carrier fails over."""
    logger.error("refusing the call: its models cannot be built", extra={"reason": reason})
    _count(settings, metrics.REFUSALS)
    if hang_up:
        await _hang_up(ctx, f"refused: {reason}")
    else:
        ctx.shutdown(reason=f"refused: {reason}")


async def _set_attributes(ctx: JobContext, attrs: dict[str, str]) -> None:
    try:
        await ctx.room.local_participant.set_attributes(attrs)
    except Exception as err:
        logger.warning("could not publish agent attributes", extra={"error": type(err).__name__})


async def _end_job(ctx: JobContext, meta: CallMetadata, status: str, reason: str) -> None:
    """End a job that has no call to serve, saying why; its slot is free again."""
    logger.warning("ending the job without a call", extra={"reason": reason})
    await _set_attributes(ctx, {CALL_STATUS_ATTRIBUTE: status, ROUTE_ATTRIBUTE: meta.route or ""})
    ctx.shutdown(reason=reason)


async def entrypoint(ctx: JobContext) -> None:
    """One call; whatever fails in it ends the job and the call (a job that raised would otherwise hold its slot,
    and its caller would stay in a room with no agent). Every log record of the job carries its ``room``."""
    ctx.log_context_fields = {"room": ctx.job.room.name}
    try:
        await _call(ctx)
    except Exception as err:
        logger.exception("the call failed; ending the job and the call")
        await _hang_up(ctx, f"failed: {type(err).__name__}: {str(err)[:200]}")
        raise


def _taken_over(room: rtc.Room) -> bool:
    """Whether another agent already served this call (it published its configuration here): a job LiveKit
    re-dispatched after losing that agent's worker (LiveKit Cloud does), to be answered as a resumption."""
    return any(
        p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and p.attributes.get(CONFIG_HASH_ATTRIBUTE)
        for p in room.remote_participants.values()
    )


@dataclasses.dataclass
class _Clock:
    """The moments of a call's set-up, for its "resolved call configuration" and "agent ready" records."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    parse_ms: float = 0.0  # the metadata read
    connect_ms: float = 0.0  # the room joined
    caller_at: float = 0.0  # the caller known (found, waited for or dialled)
    resolve_ms: float = 0.0  # caller known -> configuration resolved

    def ms(self, since: float | None = None) -> float:
        """Milliseconds from ``since`` (default: the job's start) to now."""
        return (time.perf_counter() - (self.started if since is None else since)) * 1000


async def _call(ctx: JobContext) -> None:
    """One call in named steps: connect, find or dial the caller, resolve its configuration and build its models,
    start the session, answer (the caller hears the agent), greet."""
    settings: WorkerSettings = ctx.proc.userdata.get("settings") or WorkerSettings.from_env()
    built: Built = dict(ctx.proc.userdata.get("models", {}))
    ctx.add_shutdown_callback(_log_end)
    clock = _Clock()
    parsed = parse_metadata(ctx.job.metadata)
    meta, clock.parse_ms = parsed.metadata, clock.ms()
    if not await _connect(ctx, settings):
        return
    clock.connect_ms = clock.ms()
    found = await _find_caller(ctx, meta, settings, built)
    if found is None:
        return
    caller, dialled = found
    clock.caller_at = time.perf_counter()
    configured = await _configure(ctx, meta, caller, dialled, parsed.warnings, settings, built)
    if configured is None:
        return
    resolved, models = configured
    clock.resolve_ms = clock.ms(clock.caller_at)
    _log_configuration(ctx, settings, meta, resolved, models, clock)
    # Published while the session starts: the caller is answered when the agent's audio track is up.
    published = asyncio.create_task(_set_attributes(ctx, {**resolved.attributes(), CALL_STATUS_ATTRIBUTE: "active"}))
    cfg = resolved.merged.config
    session = _session(ctx, settings, cfg, models)
    if await _answer(ctx, settings, session, cfg, caller, published, clock):
        _greet(session, cfg, resumed=resolved.resumed)


async def _connect(ctx: JobContext, settings: WorkerSettings) -> bool:
    """Join the room within ``connect_timeout``: a loaded host or server can stall the join; the job then ends and
    frees its slot, never holds it."""
    try:
        await asyncio.wait_for(ctx.connect(), settings.connect_timeout)
    except TimeoutError:
        reason = f"the room connection was not established within {settings.connect_timeout:g} s"
        logger.error("ending the job: " + reason)
        ctx.shutdown(reason=reason)
        return False
    return True


async def _find_caller(
    ctx: JobContext, meta: CallMetadata, settings: WorkerSettings, built: Built
) -> tuple[rtc.RemoteParticipant, bool] | None:
    """The call's SIP participant, and whether this job dialled it: the one in the room; else an inbound caller who
    joins within ``participant_wait``; else an outbound call's, dialled here or (SIPHON's ``standalone_call``)
    waited for. ``None``: the job ended without a caller, saying why."""
    caller = _sip_participant(ctx.room)
    if caller is not None:
        return caller, False
    if meta.direction != "outbound":
        caller = await _wait_sip(ctx, settings.participant_wait)
        if caller is None:  # the caller hung up while it rang, or a dispatch without a call
            await _end_job(ctx, meta, "no_caller", f"no caller joined within {settings.participant_wait:g}s")
            return None
        return caller, False
    try:  # the models first: nobody is rung for a call that no model could serve
        _resolve_models(call_layers(settings.defaults, meta, None)[0].config, settings, built)
    except registry.SpecUnavailable as err:
        await _refuse(ctx, settings, str(err), hang_up=bool(meta.standalone_call))
        return None
    if meta.standalone_call:  # SIPHON's Call dials itself right after dispatching: wait, never dial twice
        caller = await _wait_sip(ctx, meta.ring_timeout or settings.ring_timeout)
        outcome: rtc.RemoteParticipant | str = caller or "the dispatcher's call never joined"
    else:
        outcome = await _dial(ctx, meta, settings)
    if isinstance(outcome, str):
        await _end_job(ctx, meta, "unanswered", f"outbound call not connected: {outcome}")
        return None
    return outcome, not meta.standalone_call


async def _configure(
    ctx: JobContext,
    meta: CallMetadata,
    caller: rtc.RemoteParticipant,
    dialled: bool,
    warnings: Iterable[MetadataWarning],
    settings: WorkerSettings,
    built: Built,
) -> tuple[ResolvedCall, dict[ModelKind, registry.Resolved]] | None:
    """The call's configuration (``resolve_call`` of the layers and the caller's attributes) and its models;
    ``None``: no model can serve it as declared, and the call was refused."""
    resolved = resolve_call(meta, caller.attributes, settings.defaults, agent_name=settings.agent_name,
                            identity=caller.identity, dialled=dialled)  # fmt: skip
    try:
        models = _resolve_models(resolved.merged.config, settings, built)
    except registry.SpecUnavailable as err:
        await _refuse(ctx, settings, str(err), hang_up=True)
        return None
    configured = dataclasses.replace(
        resolved,
        models={k: r.label for k, r in models.items()},
        fallbacks={k: r.fallback_reason for k, r in models.items() if r.fallback_reason},
        warnings=(*warnings, *resolved.warnings),
        # a take-over of a call whose agent died: ours (worker.dead_job) or LiveKit's own re-dispatch
        resumed=resolved.resumed or _taken_over(ctx.room),
    )
    return configured, models


def _log_configuration(
    ctx: JobContext,
    settings: WorkerSettings,
    meta: CallMetadata,
    resolved: ResolvedCall,
    models: dict[ModelKind, registry.Resolved],
    clock: _Clock,
) -> None:
    """Log (and count in the call metric) what was dropped or fell back, watch the chains' hand-overs, and log the
    resolved configuration with the set-up's timings."""
    for w in resolved.warnings:
        message = "caller override dropped" if is_caller_drop(w) else "metadata problem (ignored, falling back)"
        logger.warning(message, extra=w.as_dict())
    if dropped := caller_drops(resolved.warnings):  # the caller's layer named a host, a credential or a choice
        _count(settings, metrics.CALLER_DROPS, dropped)  # not allowed
    for kind, r in models.items():
        if r.fallback_reason:
            detail = f"{kind}: {r.requested} -> {r.label}: {r.fallback_reason}"
            asked = (r.requested or "").split(CHAIN_SEPARATOR)
            in_chain = set(r.label.split(CHAIN_SEPARATOR)) <= set(asked)  # a chain's later entries serve
            message = "a fallback chain entry is unavailable, skipped" if in_chain else (
                "model spec unavailable, using the agent's default")  # fmt: skip
            logger.warning(message, extra={"detail": detail})
            _count(settings, metrics.FALLBACKS)
    _publish_serving(ctx, models)
    logger.info(
        "resolved call configuration",
        extra={
            "config": json.dumps(resolved.describe(), sort_keys=True),
            "config_hash": resolved.hash,
            "metadata_parse_ms": round(clock.parse_ms, 3),
            "connect_ms": round(clock.connect_ms, 1),
            "resolve_ms": round(clock.resolve_ms, 3),
            "resumed": resolved.resumed,
            **({"resume_count": meta.resume.count, "resumed_job": meta.resume.job_id} if meta.resume else {}),
        },
    )


def _session(
    ctx: JobContext, settings: WorkerSettings, cfg: AgentConfig, models: dict[ModelKind, registry.Resolved]
) -> AgentSession:
    """The call's agent session on its models, with its turn-taking reported (``worker.turn_taking``); a model that
    gives up during the call hands the call to a new agent."""
    session: AgentSession = AgentSession(
        llm=models["llm"].component,
        stt=models["stt"].component,
        tts=models["tts"].component,
        **turn_taking.session_options(cfg),  # Silero VAD (model inside the wheel) and the layers' turn-taking settings
        conn_options=bounds.session_connect_options(settings),  # how long a provider may stall the call
    )
    turn_taking.report(session, ctx.room.local_participant, room=ctx.room.name)

    def ask_again(label: str) -> None:  # the STT went quiet while the caller spoke: their words were lost
        logger.warning("the STT heard nothing; asking the caller to repeat", extra={"stt": label})
        _count(settings, metrics.FALLBACKS)
        session.generate_reply(instructions=hearing.ASK_AGAIN)

    hearing.watch(session, [c for _, c in models["stt"].entries], ask_again)
    handed_over: list[asyncio.Task[None]] = []

    def hand_over(error: object) -> None:  # once per job: a new agent takes the call (worker.dead_job.take_over)
        if not handed_over:
            handed_over.append(asyncio.create_task(_hand_over(ctx, settings.agent_name, str(error)[:200])))

    @session.on("error")
    def _on_error(ev: object) -> None:  # a model plugin raised and gave up: the caller would hear nothing
        error = getattr(ev, "error", None)
        if getattr(error, "type", "") in ("stt_error", "llm_error", "tts_error") and not getattr(
            error, "recoverable", True
        ):
            hand_over(getattr(error, "error", error))

    @session.on("close")
    def _on_close(ev: object) -> None:  # the caller hung up (close_on_disconnect), or the session failed
        reason = getattr(ev, "reason", "unknown")
        if reason == CloseReason.ERROR:  # a plugin raised: another agent takes the call
            hand_over(getattr(ev, "error", reason))
            return
        if not handed_over:  # (a job that hung up itself said why first: the first reason is the job's)
            ctx.shutdown(reason=f"session closed: {reason}")

    return session


async def _answer(
    ctx: JobContext,
    settings: WorkerSettings,
    session: AgentSession,
    cfg: AgentConfig,
    caller: rtc.RemoteParticipant,
    published: asyncio.Task[None],
    clock: _Clock,
) -> bool:
    """Start the session on the caller and wait until the caller hears the agent (livekit-sip answers once the
    agent's audio is up) and its attributes are set; False: the audio never reached the caller, who was hung up on.
    """
    # A phone line carries audio only: no chat input, no transcript stream (nobody in the room reads it).
    room_options = room_io.RoomOptions(text_input=False, text_output=False, participant_identity=caller.identity)
    heard = asyncio.Event()  # the caller (livekit-sip) subscribed to the agent's audio: answered, and hears it
    ctx.room.on("local_track_subscribed", lambda *_: heard.set())
    starting = time.perf_counter()
    agent = Agent(instructions=cfg.system_instructions or "", tools=end_call.tools(cfg))
    await session.start(agent=agent, room=ctx.room, room_options=room_options, record=False)
    session_ms = clock.ms(starting)
    try:  # the track is published in the background: a publication that stalls or fails ends here
        await asyncio.wait_for(heard.wait(), settings.audio_timeout)
    except TimeoutError:
        reason = f"the caller did not receive the agent's audio within {settings.audio_timeout:g} s"
        logger.error("hanging up: " + reason)
        await _hang_up(ctx, reason)
        return False
    heard_ms = clock.ms(starting) - session_ms
    await published
    logger.info(
        "agent ready",  # the caller hears the agent's audio (the bridge answered), attributes set
        extra={"ready_ms": round(clock.ms(), 1), "from_caller_ms": round(clock.ms(clock.caller_at), 1),
               "before_session_ms": round((starting - clock.caller_at) * 1000, 1), "session_ms": round(session_ms, 1),
               "heard_ms": round(heard_ms, 1),
               "cpu_ms": round(time.process_time() * 1000, 1)},
    )  # fmt: skip
    return True


def _greet(session: AgentSession, cfg: AgentConfig, *, resumed: bool) -> None:
    """The agent speaks first: on a resumed call (the caller is mid-call) no fresh greeting, the resume message
    word for word; else the greeting, unless the configuration says not to send one."""
    if resumed:
        session.say(cfg.resume_message or "", allow_interruptions=True)
    elif cfg.send_greeting is not False:
        session.generate_reply(instructions=cfg.greeting_instructions or "")


async def _hand_over(ctx: JobContext, agent_name: str, error: str) -> None:
    """A model plugin raised and gave up (or the session failed) with the caller still there: hand the call to a
    new agent as if this process had died (``worker.dead_job.take_over``: the same metadata plus the resume marker),
    then end the job."""
    logger.error("a model failed during a call; handing the call over", extra={"error": error})
    outcome = await take_over(  # never raises: a take-over that fails ends the call with a BYE
        ctx.api, agent_name=agent_name, room=ctx.room.name, metadata=ctx.job.metadata, job_id=ctx.job.id,
        dead_identity=ctx.room.local_participant.identity, remove_dead=False,
    )  # fmt: skip
    logger.info("call take-over", extra={"job_id": ctx.job.id, "outcome": outcome})
    ctx.shutdown(reason=f"session failed; {outcome}")


async def _log_end(reason: str) -> None:
    # cpu_ms: the job process's CPU time, from its start to the call's end (capacity planning)
    logger.info("job ended", extra={"reason": reason or "unknown", "cpu_ms": round(time.process_time() * 1000, 1)})
