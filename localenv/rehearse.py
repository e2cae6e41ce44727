"""``./dev rehearse <env>``: deploy an environment's stack file to a throwaway local LiveKit and SIP bridge and call
every number and route through it, before the change is merged.

1. The real file is validated with its real environment (``plan_file``, as ``validate`` does; its secret
   references are not checked, the rehearsal needs none of its secrets) and every declared model is checked to
   be buildable by the worker's code (its plugin importable; credential variables are ``validate``'s check).
2. A copy is rehearsed in which only these change, each printed in the report: the environment (``local``, so the
   worker runs the offline stand-in models), every model spec (its offline stand-in), ``protect`` (off), each ECS
   agent (a local worker process of the same code), the LiveKit URL (the throwaway server's), the inbound trunks'
   ``allowed_addresses`` (the rehearsal caller's loopback address), every password (generated, in a generated
   Pulumi config with the passphrase provider) and every outbound trunk's address (a sipp UAS on loopback).
3. The copy is deployed with the real engine to a fresh environment (``LocalEnv.start`` in a temporary run
   folder); every inbound number is called once through the bridge and every published ``siphon.*`` attribute is
   compared with the plan's prediction (``infra.verify``); each header override value is called with its header;
   each number restricted to an address list is called from a loopback address outside it and must be refused;
   one call is placed through every outbound route to the sipp UAS, which checks the number and caller ID it
   receives, and the agent's attributes are compared with the prediction.
4. Everything is torn down (workers, services, sipp, the engine, the run folder) on success, failure or Ctrl-C.

Exit status: 0 when every check passed, 1 when any failed (the report names route, number and difference).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from contract.deployment import worker_env
from contract.metadata import MODEL_KINDS
from contract.models import PROVIDERS, SpecError, parse_spec
from contract.types import LOCAL_ENVIRONMENT
from contract.wire import CALL_STATUS_ATTRIBUTE, LIVEKIT_CREDENTIAL_ENV, SIPHON_ATTRIBUTE_PREFIX, siphon_attribute
from infra import sipp
from infra.stack.errors import StackFileError
from infra.stack.load import stack_path
from infra.stack.plan import plan_file
from infra.stack.types import Plan
from infra.verify import Expectation, agent_attributes, expectations, published_attributes, verify_one
from localenv import engine, tools
from localenv.carrier import Carrier
from localenv.manager import LocalEnv
from localenv.ports import free_port_range
from localenv.process import ServiceError, Supervised

STAND_INS = {"llm": "local/scripted", "stt": "local/silent", "tts": "local/espeak-ng"}
"""The offline stand-in of every model kind (the worker runs them in the ``local`` environment only)."""
CALLER_ADDRESS = LOCAL_ALLOWED = "127.0.0.1"  # the rehearsal caller's source address, the only one allowed
OUTSIDER_ADDRESS = "127.0.0.2"  # a loopback address outside the allow-list
OUTBOUND_CALLEE = "+15005550010"  # the number each outbound route dials (the sipp UAS answers any)
PIN_REFUSAL_WAIT = 8.0  # seconds a call without the PIN is watched for an agent
ANSWER_TIMEOUT = 30.0  # seconds for an agent to answer (a failure bound, not a performance target)
PROJECT = "siphon"
IMAGE_TAG = "rehearse"  # the tag `--image` builds (not `./dev image`'s)


@dataclass(frozen=True)
class Substitution:
    """One value of the rehearsed copy that differs from the stack file."""

    where: str
    declared: str
    rehearsed: str


@dataclass
class Check:
    """One call of the rehearsal and its verdict."""

    kind: str  # inbound, header, refusal, outbound
    route: str
    number: str
    call: str  # what was placed (caller, header, source address)
    expected: str
    observed: str
    ok: bool
    seconds: float | None = None


@dataclass
class Rehearsal:
    """Everything the report shows."""

    environment: str
    file: Path
    substitutions: list[Substitution] = field(default_factory=list)
    models: list[tuple[str, str, str]] = field(default_factory=list)  # (where, spec, problem or "buildable")
    problems: list[str] = field(default_factory=list)  # failures before any call (validation, models, deploy)
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed, before or during the calls."""
        return not self.problems and all(c.ok for c in self.checks)


# ------------------------------------------------------------------------------------------------ the copy


def _layers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every configuration layer of a stack document that may name models: (field path, the layer)."""
    for key, agent in (doc.get("agents") or {}).items():
        yield f"agents.{key}.defaults", agent.setdefault("defaults", {}) if isinstance(agent, dict) else {}
    for key, route in (doc.get("inbound_routes") or {}).items():
        if isinstance(route.get("agent_config"), dict):
            yield f"inbound_routes.{key}.agent_config", route["agent_config"]
        for i, override in enumerate(route.get("header_overrides") or []):
            for value, layer in (override.get("values") or {}).items():
                if isinstance(layer, dict):
                    yield f"inbound_routes.{key}.header_overrides.{i}.values.{value}", layer
    for key, route in (doc.get("outbound_routes") or {}).items():
        if isinstance(route.get("agent_config"), dict):
            yield f"outbound_routes.{key}.agent_config", route["agent_config"]


def model_problems(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each declared model spec and whether the worker's code can build it here: its provider known and its plugin
    importable (the credential variable is ``validate``'s check, through ``provider_key_secrets``)."""
    out = []
    for where, layer in _layers(doc):
        for kind in MODEL_KINDS:
            if layer.get(kind) is None:
                continue
            spec = layer[kind]
            shown = spec if isinstance(spec, str) else repr(spec)
            try:
                norm = parse_spec(kind, spec)
            except SpecError as e:
                out.append((f"{where}.{kind}", shown, str(e)))
                continue
            entry = PROVIDERS[kind][norm.provider]
            problem = "buildable"
            if not entry.offline:
                import importlib.util

                try:
                    found = importlib.util.find_spec(entry.module) is not None
                except (ImportError, ValueError):
                    found = False
                if not found:
                    problem = f"plugin {entry.module} not installed (the image needs {entry.package})"
            out.append((f"{where}.{kind}", shown, problem))
    return out


def rehearsal_copy(
    doc: dict[str, Any], plan: Plan, uas_address: str, image: str = ""
) -> tuple[dict[str, Any], list[Substitution], dict[str, str]]:
    """The document to rehearse, what was substituted, and the generated passwords (config key -> value)."""
    out = copy.deepcopy(doc)
    subs: list[Substitution] = []
    passwords: dict[str, str] = {}

    def sub(where: str, declared: object, rehearsed: object) -> None:
        subs.append(Substitution(where, str(declared), str(rehearsed)))

    if out.get("environment") != LOCAL_ENVIRONMENT:
        sub("environment", out.get("environment"), f"{LOCAL_ENVIRONMENT} (the worker runs the offline stand-ins)")
        out["environment"] = LOCAL_ENVIRONMENT
    if out.pop("protect", False):
        sub("protect", True, "false (a throwaway server)")
    livekit = out.pop("livekit", None) or {}
    if livekit.get("url"):
        sub("livekit.url", livekit["url"], "the throwaway livekit-server (LIVEKIT_URL, key and secret generated)")
    if out.get("aws") and any(a.get("ecs") for a in (out.get("agents") or {}).values()):
        sub("aws", "cluster " + str(out["aws"].get("cluster") or "(default)"), "none: agents run as local processes")
    out.pop("aws", None)
    for where, layer in _layers(out):
        for kind in MODEL_KINDS:
            if layer.get(kind) is not None and layer[kind] != STAND_INS[kind]:
                sub(f"{where}.{kind}", layer[kind], STAND_INS[kind])
                layer[kind] = STAND_INS[kind]
    for key, agent in (out.get("agents") or {}).items():
        if agent.get("ecs") is not None:
            ecs = agent.pop("ecs")
            if not agent.get("max_calls"):  # the capacity the ECS size gives, as declared
                agent["max_calls"] = plan.stack.agents[key].calls_per_worker
            sub(f"agents.{key}.ecs", f"image {str(ecs.get('image', '?')).rsplit('/', 1)[-1][:40]}",
                f"{image or 'local worker process'} of this checkout (max_calls {agent['max_calls']})")  # fmt: skip
            agent["local"] = agent.get("local") or {}
        elif agent.get("local") is None:
            agent["local"] = {}
    for section in ("inbound_trunks", "outbound_trunks"):
        for key, trunk in (out.get(section) or {}).items():
            if section == "inbound_trunks" and trunk.get("allowed_addresses"):
                sub(f"{section}.{key}.allowed_addresses", trunk["allowed_addresses"], [f"{LOCAL_ALLOWED}/32"])
                trunk["allowed_addresses"] = [f"{LOCAL_ALLOWED}/32"]
            if section == "outbound_trunks":
                declared = f"{trunk.get('address')} ({trunk.get('transport') or 'auto'})"
                trunk["address"], trunk["transport"] = uas_address, "udp"
                sub(f"{section}.{key}.address", declared, f"{uas_address} (udp): a sipp UAS")
            if trunk.get("auth_password_secret"):
                secret = trunk["auth_password_secret"]
                passwords.setdefault(secret, secrets.token_urlsafe(18))
                sub(f"{section}.{key}.auth_password_secret", f"config {secret}", "a generated password (digest kept)")
            media = trunk.get("media") or {}
            if media.get("encryption") == "require":
                sub(f"{section}.{key}.media.encryption", "require", "allow (the rehearsal caller speaks plain RTP)")
                media["encryption"] = "allow"
    return out, subs, passwords


# ------------------------------------------------------------------------------------------------ the run


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: tear down and exit 130."""


def _interrupted(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # later Ctrl-Cs must not abort the teardown
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("\nrehearse: interrupted, tearing down...", file=sys.stderr, flush=True)
    raise Interrupted


def _own_processes(marker: str) -> list[int]:
    """Processes whose environment names this rehearsal's run folder (the engine and its plugins)."""
    pids = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
    return pids


def _kill_own(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _own_processes(marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline and _own_processes(marker):
            time.sleep(0.1)


def _project(work: Path, doc: dict[str, Any]) -> Path:
    """A copy of the project's Pulumi program with the rehearsed stack file (``stacks/local.yaml``)."""
    (work / "stacks").mkdir(parents=True)
    shutil.copy(tools.REPO / "stacks" / "__main__.py", work / "stacks" / "__main__.py")
    engine.write_project(work, PROJECT, "siphon-infra rehearsal")
    with (work / "Pulumi.yaml").open("a") as f:
        f.write("main: stacks/\nstackConfigDir: stacks\n")
    path = work / "stacks" / f"{LOCAL_ENVIRONMENT}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _header_expectations(plan: Plan, base: list[Expectation]) -> list[Expectation]:
    """One expectation per declared header override value: the call carries the header, the agent shows its layer."""
    out = []
    for exp in base:
        route = plan.stack.inbound_routes[exp.route]
        for override in route.header_overrides:
            attribute = plan.stack.header_attributes[exp.route][override.header]
            for value in override.values:
                trunk_id = exp.attributes.get(siphon_attribute("trunk_id"))
                attrs = published_attributes(plan, exp.route, exp.number, sipp.from_user(exp.caller), trunk_id,
                                             {attribute: value})  # fmt: skip
                out.append(dataclasses.replace(exp, attributes=attrs, headers={override.header: value}))
    return out


def _rule_ids() -> dict[str, str]:
    """Dispatch rule name -> id on the throwaway server (the stack's routing table keeps one route per number)."""
    from livekit import api

    async def run() -> dict[str, str]:
        lk = api.LiveKitAPI()
        try:
            rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
            return {r.name: r.sip_dispatch_rule_id for r in rules}
        finally:
            await lk.aclose()

    return asyncio.run(run())


def route_expectations(plan: Plan, outputs: dict[str, Any], passwords: dict[str, str]) -> list[Expectation]:
    """One expectation per (route, number) of the plan, a PIN route's call keying in its PIN: every route, also
    one that shares its number with another (the stack's ``routing_table`` output keeps only one of them)."""
    rule_ids = _rule_ids()
    out = []
    for key, route in plan.inbound_routes.items():
        rows = {n: {"route": key, "rule_id": rule_ids.get(route.rule.name, "?")} for n in route.rule.numbers}
        pin = plan.stack.inbound_routes[key].pin_code
        for exp in expectations(plan, {**outputs, "routing_table": rows}, passwords=passwords):
            out.append(dataclasses.replace(exp, dtmf=pin + "#") if pin else exp)
    return out


def _inbound_check(kind: str, exp: Expectation, sip_address: str) -> Check:
    outcome = verify_one(exp, sip_address, ANSWER_TIMEOUT)
    call = f"from {exp.caller}" + "".join(f", {k}: {v}" for k, v in (exp.headers or {}).items())
    call += f", keys in {exp.dtmf}" if exp.dtmf else ""
    expected = f"agent {exp.agent_name}, rule {exp.rule_id}, {len(exp.attributes)} siphon.* attributes as planned"
    return Check(kind, exp.route, exp.number, call, expected, outcome.detail, outcome.ok, outcome.seconds)


def _refusal_check(plan: Plan, exp: Expectation, sip_address: str) -> Check:
    """A call from outside the trunk's allowed addresses must be refused (production: the carrier's range only)."""
    call = sipp.place(sip_address, exp.number, caller=exp.caller, auth=exp.auth, source_ip=OUTSIDER_ADDRESS,
                      hold_s=3, answer_timeout_s=4)  # fmt: skip
    end = call.wait(30)
    ok = not end.completed
    observed = f"refused ({end.reason})" if ok else "answered: a caller outside the allow-list reached the agent"
    return Check("refusal", exp.route, exp.number, f"from {OUTSIDER_ADDRESS}", "refused: not an allowed address",
                 observed, ok)  # fmt: skip


def _pin_refusal_check(exp: Expectation, sip_address: str) -> Check:
    """A call to a PIN route that keys in no PIN (only #) must reach no agent."""
    from livekit import api

    from infra.verify import observe

    async def run() -> tuple[bool, str]:
        lk = api.LiveKitAPI()
        try:
            known = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
            call = sipp.place(sip_address, exp.number, caller=exp.caller, auth=exp.auth, source_ip=LOCAL_ALLOWED,
                              dtmf="#", hold_s=PIN_REFUSAL_WAIT + 5, answer_timeout_s=8)  # fmt: skip
            seen = await observe(lk, call, known, PIN_REFUSAL_WAIT)
            if seen.room:
                with contextlib.suppress(api.TwirpError):
                    await lk.room.delete_room(api.DeleteRoomRequest(room=seen.room))
            end = await asyncio.to_thread(call.wait, PIN_REFUSAL_WAIT + 15)
        finally:
            await lk.aclose()
        if seen.attributes:
            return (
                False,
                f"agent {seen.attributes.get(siphon_attribute('agent_name'))} answered a call that keyed in no PIN",
            )
        return True, f"no agent answered ({end.reason or 'the bridge hung up after the PIN prompt'})"

    ok, observed = asyncio.run(run())
    return Check("pin", exp.route, exp.number, f"from {exp.caller}, keys in # (no PIN)", "no agent answers",
                 observed, ok)  # fmt: skip


def _outbound_expected(plan: Plan, key: str, trunk_id: str) -> dict[str, str]:
    """The ``siphon.*`` attributes the agent of an outbound call publishes, computed as the worker computes them."""
    from contract.metadata import parse_metadata
    from contract.resolve import SipFacts, resolve_call, worker_defaults
    from infra.calls import CallRequest, call_metadata
    from infra.stack.types import OutboundCall

    route = OutboundCall.model_validate({**plan.outbound_routes[key].model_dump(), "trunk_id": trunk_id})
    meta = parse_metadata(call_metadata(route, CallRequest(route=key, to=OUTBOUND_CALLEE)).to_json()).metadata
    defaults = worker_defaults(plan.stack.agents[route.agent_name].defaults, offline=plan.stack.is_local)
    callee = SipFacts("", phone_number=OUTBOUND_CALLEE, trunk_phone_number=route.caller_ids[0], trunk_id=trunk_id)
    return resolve_call(meta, callee.as_attributes(), defaults, agent_name=route.agent_name, dialled=True).attributes()


def _outbound_check(plan: Plan, key: str, outputs: dict[str, Any], passwords: dict[str, str], uas_port: int) -> Check:
    from livekit import api

    from infra.calls import place_call

    route = plan.outbound_routes[key]
    trunk = plan.outbound_trunks[route.trunk]
    auth = (trunk.args.auth_username, passwords[trunk.password_secret]) if trunk.password_secret else None
    expected_caller = route.caller_ids[0]
    trunk_id = outputs["outbound_routes"][key]["trunk_id"]
    expected_attrs = _outbound_expected(plan, key, trunk_id)
    expected = f"UAS gets {OUTBOUND_CALLEE} from {expected_caller}; agent {route.agent_name} as planned"
    carrier = Carrier(uas_port, auth).start()
    started = time.monotonic()
    problems: list[str] = []
    seconds = None
    try:
        placed = place_call(outputs["outbound_routes"], key, OUTBOUND_CALLEE)

        async def hang_up() -> None:
            lk = api.LiveKitAPI()
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=placed.room))
            finally:
                await lk.aclose()

        attrs = asyncio.run(agent_attributes(placed.room, ANSWER_TIMEOUT))
        seconds = time.monotonic() - started
        messages = carrier.messages()
        invite = re.search(r"(?ms)^INVITE sip:([^@;> ]+)@.*?^From:[^\n]*?sip:([^@;> ]+)@", messages)
        if not invite:
            problems.append("the sipp UAS received no INVITE")
        else:
            called, caller = invite.groups()
            if called.lstrip("+") != OUTBOUND_CALLEE.lstrip("+"):
                problems.append(f"the UAS was called at {called}, dialled {OUTBOUND_CALLEE}")
            if caller.lstrip("+") != expected_caller.lstrip("+"):
                problems.append(f"the UAS saw caller ID {caller}, declared {expected_caller}")
        if attrs.get(CALL_STATUS_ATTRIBUTE) != "active":
            problems.append(f"the agent's call is {attrs.get(CALL_STATUS_ATTRIBUTE) or 'not answered'}, not active")
        problems += [
            f"{k.removeprefix(SIPHON_ATTRIBUTE_PREFIX)} is {attrs.get(k)!r}, declared {v!r}"
            for k, v in expected_attrs.items()
            if attrs and attrs.get(k, "") != v
        ]
        asyncio.run(hang_up())
        if carrier.wait(15) != 0 and not problems:
            problems.append("the call did not end with BYE at the UAS")
    except Exception as e:  # place_call's CallError or a LiveKit error: that route fails, the others still run
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        carrier.close()
    observed = "; ".join(problems) or f"UAS got {OUTBOUND_CALLEE} from {expected_caller}; attributes as planned"
    return Check("outbound", key, expected_caller, f"to {OUTBOUND_CALLEE}", expected, observed, not problems, seconds)


def rehearse(environment: str, *, file: Path | None = None, run_dir: Path | None = None, keep: bool = False,
             image: bool = False, on_progress: Any = None) -> Rehearsal:  # fmt: skip
    """Validate, deploy and call ``environment``'s stack file (``file`` overrides its path) on a throwaway
    environment; always tears down. Raises ``Interrupted`` after teardown when interrupted."""
    say = on_progress or (lambda text: print(f"rehearse: {text}", file=sys.stderr, flush=True))
    path = file or stack_path(environment)
    result = Rehearsal(environment, path)
    t0 = time.monotonic()
    # 1. the real file, with its real environment
    try:
        real_plan = plan_file(path, secrets=False)
    except StackFileError as e:
        result.problems += [f"validate: {p}" for p in e.problems]
        return result
    doc = yaml.safe_load(path.read_text())
    result.models = model_problems(doc)
    result.problems += [f"model {where}: {spec}: {why}" for where, spec, why in result.models if why != "buildable"]
    if result.problems:
        return result
    # 2. the copy
    run = run_dir or Path(tempfile.mkdtemp(prefix="siphon-rehearse-"))
    run.mkdir(parents=True, exist_ok=True)
    uas_port = free_port_range(1)
    built = None
    if image:  # the packaged worker, built from this checkout (layer-cached) under a tag of its own
        from localenv import image as worker_image

        say("building the worker image")
        t = time.monotonic()
        try:
            built = worker_image.build(IMAGE_TAG)
        except subprocess.CalledProcessError as e:  # the engine's own output says what failed
            result.problems.append(f"the worker image did not build: {((e.stderr or '') + (e.stdout or ''))[-1500:]}")
            return result
        except tools.ToolError as e:
            result.problems.append(f"no container engine to build the worker image: {e}")
            return result
        result.timings["image build"] = time.monotonic() - t
    shown = f"the image {built.ref} ({built.digest[:19]}, {Path(built.engine).name}, host network)" if built else ""
    rehearsed, result.substitutions, passwords = rehearsal_copy(doc, real_plan, f"{LOCAL_ALLOWED}:{uas_port}", shown)
    env: LocalEnv | None = None
    saved_environ = dict(os.environ)
    try:
        stack_file = _project(run / "project", rehearsed)
        say(f"run folder {run}")
        t = time.monotonic()
        env = LocalEnv.start(run / "services")
        result.timings["start-up"] = time.monotonic() - t
        assert env.endpoints is not None
        os.environ.update(env.endpoints.env())  # the LiveKit clients of the calls read it
        say(f"services up in {result.timings['start-up']:.1f}s; deploying")
        t = time.monotonic()
        penv = engine.engine_env(run / "state", secrets.token_urlsafe(16), run / "pulumi-home",
                                 {**env.endpoints.env(), "SIPHON_STACKS_DIR": str(stack_file.parent)})  # fmt: skip
        os.environ["SIPHON_STACKS_DIR"] = str(stack_file.parent)
        from pulumi import automation as auto

        stack = engine.select_stack(run / "project", LOCAL_ENVIRONMENT, penv)
        for key, value in passwords.items():
            stack.set_config(f"{PROJECT}:{key}", auto.ConfigValue(value, secret=True))
        try:
            plan = plan_file(stack_file)
        except StackFileError as e:
            result.problems += [f"the rehearsed copy does not compile: {p}" for p in e.problems]
            return result
        with (run / "pulumi-up.log").open("w") as log:
            try:
                up = stack.up(on_output=lambda line: log.write(line + "\n"))
            except auto.CommandError as e:
                result.problems.append(f"deploy: pulumi up failed: {str(e)[-1500:]}")
                return result
        outputs = {k: v.value for k, v in up.outputs.items()}
        from localenv.deploy import start_workers

        agent_env = {k: a.worker_env(LOCAL_ENVIRONMENT) for k, a in plan.stack.agents.items() if a.local}
        workers: list[Supervised] = (
            start_containers(env, built, agent_env, run.name) if built else start_workers(env, agent_env)
        )
        result.timings["deploy"] = time.monotonic() - t
        say(f"deployed and {len(workers)} worker(s) up in {result.timings['deploy']:.1f}s; calling")
        # 3. the calls
        t = time.monotonic()
        sip_address = env.endpoints.sip_address
        inbound = route_expectations(plan, outputs, passwords)
        for key, route in plan.inbound_routes.items():
            if not route.rule.numbers and route.agent:
                result.checks.append(Check("inbound", key, "(any)", "-", "a call to one of its numbers",
                                           "not rehearsed: the route declares no numbers to call", False))  # fmt: skip
        for exp in inbound:
            result.checks.append(_inbound_check("inbound", exp, sip_address))
            say(f"inbound {exp.route} {exp.number}: {result.checks[-1].observed}")
        for exp in _header_expectations(plan, inbound):
            result.checks.append(_inbound_check("header", exp, sip_address))
            say(f"header {exp.route} {exp.headers}: {result.checks[-1].observed}")
        for exp in inbound:
            trunks = [plan.inbound_trunks[k] for k in plan.inbound_routes[exp.route].trunks]
            if trunks and all(t.args.allowed_addresses for t in trunks):
                result.checks.append(_refusal_check(plan, exp, sip_address))
                say(f"refusal {exp.route} {exp.number}: {result.checks[-1].observed}")
        for exp in inbound:
            if exp.dtmf:
                result.checks.append(_pin_refusal_check(exp, sip_address))
                say(f"pin {exp.route} {exp.number} without the PIN: {result.checks[-1].observed}")
        for key in plan.outbound_routes:
            result.checks.append(_outbound_check(plan, key, outputs, passwords, uas_port))
            say(f"outbound {key}: {result.checks[-1].observed}")
        result.timings["calls"] = time.monotonic() - t
        return result
    except (ServiceError, tools.ToolError) as e:
        result.problems.append(f"the throwaway environment failed: {e}")
        return result
    finally:
        t = time.monotonic()
        if env is not None:
            env.stop()
        if built is not None:
            remove_containers(built.engine, run.name)
        _kill_own(str(run))
        os.environ.clear()
        os.environ.update(saved_environ)
        if not keep:
            shutil.rmtree(run, ignore_errors=True)
        result.timings["teardown"] = time.monotonic() - t
        result.timings["total"] = time.monotonic() - t0


def _container_name(run_name: str, agent: str) -> str:
    return f"siphon-rehearse-{run_name}-{agent}"[:120]


def start_containers(
    env: LocalEnv, built: Any, agent_env: dict[str, dict[str, str]], run_name: str
) -> list[Supervised]:
    """One container of the built image per agent (host network), in the foreground of a supervised ``run``
    process; LiveKit credentials are passed by name only (their values come from the engine's environment)."""
    import functools

    from localenv import image as worker_image
    from localenv.ports import free_tcp_port

    assert env.endpoints is not None
    started = []
    for agent, settings in agent_env.items():
        port = free_tcp_port()
        values = {**settings, **worker_env(agent_name=agent, http_port=port, http_host=LOCAL_ALLOWED)}
        argv = [built.engine, "run", "--rm", "--name", _container_name(run_name, agent), "--network", "host",
                "--stop-timeout", "20", *(a for k in LIVEKIT_CREDENTIAL_ENV
                                          for a in ("-e", k)),
                *(a for k, v in values.items() for a in ("-e", f"{k}={v}")), built.ref]  # fmt: skip
        log = env.run_dir / f"container-{agent}.log"
        # Healthy once its health server answers and it has registered with LiveKit (the container's health server
        # comes up a few seconds before the registration; a call placed in between finds no worker).
        health = functools.partial(_registered, log, port)
        svc = env.spawn(f"container-{agent}", argv, health,
                        env={**os.environ, **worker_image.engine_env(), **env.endpoints.env()})  # fmt: skip
        started.append(svc)
    for svc in started:
        svc.wait_healthy(120)
    return started


def _registered(log: Path, port: int) -> bool:
    from localenv.manager import http_ok

    return http_ok(port) and '"registered worker"' in log.read_text(errors="replace")


def remove_containers(engine: str, run_name: str) -> None:
    """Remove this rehearsal's containers, whatever state they are in."""
    from localenv import image as worker_image

    listed = subprocess.run([engine, "ps", "-a", "--format", "{{.Names}}"], env=worker_image.engine_env(),
                            capture_output=True, text=True, timeout=60, check=False).stdout.split()  # fmt: skip
    mine = [n for n in listed if n.startswith(_container_name(run_name, ""))]
    if mine:
        subprocess.run([engine, "rm", "-f", "-t", "5", *mine], env=worker_image.engine_env(), capture_output=True,
                       timeout=120, check=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the report


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report(r: Rehearsal) -> str:
    """The rehearsal as Markdown."""
    verdict = "PASS" if r.ok else "FAIL"
    lines = [f"# Rehearsal of `{r.environment}` ({r.file.name}): {verdict}", ""]
    if r.problems:
        lines += ["## Failures before any call", ""] + [f"- {_cell(p)}" for p in r.problems] + [""]
    if r.models:
        lines += ["## Declared models (buildable by the worker's code; replaced by offline stand-ins for the calls)",
                  "", "| where | spec | check |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {_cell(w)} | {_cell(s)} | {_cell(p)} |" for w, s, p in r.models] + [""]
    if r.substitutions:
        lines += ["## Substitutions", "", "| where | declared | rehearsed |", "|---|---|---|"]
        lines += [f"| {_cell(s.where)} | {_cell(s.declared)} | {_cell(s.rehearsed)} |" for s in r.substitutions]
        lines.append("")
    if r.checks:
        lines += ["## Calls", "", "| kind | route | number | call | expected | observed | answered in | result |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for c in r.checks:
            took = f"{c.seconds:.2f}s" if c.seconds is not None else "-"
            lines.append(f"| {c.kind} | {_cell(c.route)} | {_cell(c.number)} | {_cell(c.call)} | {_cell(c.expected)} "
                         f"| {_cell(c.observed)} | {took} | {'ok' if c.ok else 'FAIL'} |")  # fmt: skip
        lines.append("")
    failed = [c for c in r.checks if not c.ok]
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- {c.kind} route `{c.route}`, number {c.number} ({c.call}): {_cell(c.observed)}" for c in failed]
        lines.append("")
    if r.timings:
        lines += ["## Timings", ""]
        lines += [f"- {k}: {v:.1f}s" for k, v in r.timings.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``./dev rehearse``."""
    parser = argparse.ArgumentParser(prog="./dev rehearse", description=__doc__.split("\n\n")[0])
    parser.add_argument("environment", help="the environment whose stacks/<environment>.yaml is rehearsed")
    parser.add_argument("--file", type=Path, default=None, help="rehearse this stack file instead")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument(
        "--image",
        action="store_true",
        help="run each agent as the worker image built from this "
        "checkout (docker or podman) instead of a local worker process",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder (configs, logs) afterwards")
    parser.add_argument("--report", type=Path, default=None, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = rehearse(args.environment, file=args.file, run_dir=args.run_dir, keep=args.keep, image=args.image)
    except Interrupted:
        print("rehearse: interrupted; everything was torn down", file=sys.stderr)
        return 130
    text = report(result)
    print(text, flush=True)
    if args.report:
        args.report.write_text(text)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
