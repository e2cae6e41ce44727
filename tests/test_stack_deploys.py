"""Accepted means deployed and started: a seeded sample of the generated stack files that validate accepts is
deployed to the session's LiveKit and moto, and each agent's worker starts as far as its settings and models.

The files come from the property test's generators (``tests/test_stack_properties.py``): valid files, and files with
one fault that validate accepts all the same; derandomized and sampled with a fixed seed, so every run deploys the
same files. Each is compiled as ``siphon-infra validate`` compiles it, and its placeholders are filled as the Pulumi
program (``infra.stack.program``, ``infra.stack.components``) fills them: dummy secrets, the default VPC's subnets (moto's),
the local LiveKit's URL. What a file says already exists in its own account stands in as this account's: the local
LiveKit for its ``livekit.url``, moto's default subnets for its ``aws.subnets``, its cluster (``create_cluster``
false) made beforehand. Every resource then goes through its real provider's ``check`` and ``create``, in the
program's order (trunks, the death queue, the ECS workers, then the dispatch rules with the created trunk ids), and
is deleted through its provider before the next file. The providers are called directly, as the engine calls them,
not through the Pulumi engine: ``tests/test_stack_engine.py`` already proves the engine path (program -> engine ->
providers) on whole stacks, and an engine run per file would cost the sample's breadth.

Each agent's worker is then started as its deployment starts it, as far as ``worker.main`` goes before registering:
``worker.main.start_up`` (key files, ``WorkerSettings.from_env()``, the default models; in ``local``, where the
worker falls back to the offline test models by design, as ``worker.server.prewarm`` builds them). An ECS worker's
environment is the one its registered task definition gives the container (plus each secret it injects, a dummy
value, and what the image and ECS set); a local worker's is the one ``./dev local`` starts it with
(``localenv.deploy``). Outside ``local`` nothing starts a ``local:`` worker, so an agent there needs an ECS one. The
workers start in one subprocess, each with exactly its environment and no network (an audit hook refuses and records
every connection and name lookup): importing livekit-agents and the plugins once costs seconds, per worker minutes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import boto3
import yaml
from hypothesis import Phase, given, settings

from contract.deployment import AGENT_URI_ENV, DEFAULT_HTTP_PORT, HTTP_PORT_ENV, worker_env
from contract.types import LOCAL_ENVIRONMENT
from infra.ecs.aws import resolve_region
from infra.ecs.death_queue import WorkerDeathQueueProvider
from infra.ecs.provider import AgentWorkerProvider
from infra.livekit.base import URL_INPUT, LiveKitProvider
from infra.livekit.dispatch_rule import DispatchRuleProvider
from infra.livekit.inbound_trunk import InboundTrunkProvider
from infra.livekit.outbound_trunk import OutboundTrunkProvider
from infra.stack.components import default_subnets
from infra.stack.load import StackConfig, parse
from infra.stack.plan import compile_stack
from infra.stack.types import Plan, Trunk
from localenv.manager import Endpoints, LocalEnv
from localenv.reset import wipe_sip
from tests.test_stack_properties import FILE, SETTINGS, _validate, faulty_stack_files, stack_files

VALID, FAULTY = 35, 15
"""Stack files deployed per run: valid ones, and ones with a fault validate accepts (seeded: the same every run)."""
DRAWN = 300  # examples drawn from each generator to sample from (drawing and validating them takes about 5 s)
SEED = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_ENV = {HTTP_PORT_ENV: str(DEFAULT_HTTP_PORT)}  # the image's own ENV (worker/Dockerfile)
ECS_ENV = {AGENT_URI_ENV: "http://169.254.170.2/api/0a1b2c3d4e5f"}  # what the ECS agent sets in every container
HOST_ENV = ("PATH", "HOME", "LANG", "TMPDIR")  # a shell's basics: the local tools (espeak-ng) are on PATH

# Run in the subprocess: each item's environment replaces the process's, then the worker's own start steps run.
STARTS = r"""
import json, os, sys

network = []
def no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        network.append(f"{event} {args[1:2] if event == 'socket.connect' else args[:2]}")
        raise OSError(f"no network in this test ({event})")
sys.addaudithook(no_network)

from contract.metadata import MODEL_KINDS
from worker.main import start_up
from worker.models import registry

out = {}
for item in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(item["env"])
    before = len(network)
    try:
        settings, _ = start_up()  # what worker.main does before registering: key files, settings, default models
        for kind in MODEL_KINDS if settings.offline_models else ():  # `local`: as prewarm builds them (a default
            registry.resolve(kind, getattr(settings.defaults, kind), None, offline=True, timeout=5)  # may fall back, by design)
        out[item["label"]] = None if len(network) == before else f"reached for the network: {network[before:]}"
    except BaseException as err:  # SettingsError is a SystemExit
        out[item["label"]] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
"""


@dataclass
class Deployment:
    """One stack file's deployment: what was created (to delete), the workers to start, what failed."""

    number: int
    text: str
    created: list[tuple[Any, str, dict[str, Any]]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    """ECS clusters the file says exist (``create_cluster`` false), made for it in the account beforehand."""
    failures: list[str] = field(default_factory=list)

    def create(self, provider: Any, label: str, props: dict[str, Any]) -> dict[str, Any] | None:
        """``check`` then ``create`` (the engine's order, create given check's inputs); None when either fails."""
        try:
            checked = provider.check({}, props)
            if checked.failures:
                self.failures.append(f"check {label}: {[(f.property, f.reason) for f in checked.failures]}")
                return None
            created = provider.create(checked.inputs)
        except Exception as err:  # every failure is reported, with its file
            self.failures.append(f"create {label}: {type(err).__name__}: {str(err)[:600]}")
            return None
        self.created.append((provider, created.id, created.outs))
        return dict(created.outs)

    def delete_all(self) -> None:
        """Delete what was created, last first (as ``pulumi destroy``)."""
        for provider, object_id, outs in reversed(self.created):
            try:
                provider.delete(object_id, outs)
            except Exception as err:
                self.failures.append(f"delete {type(provider).__name__} {object_id}: {type(err).__name__}: {err}")
        self.created.clear()
        for cluster in self.clusters:
            boto3.client("ecs").delete_cluster(cluster=cluster)


def _sample() -> list[str]:
    """``VALID`` valid stack files and ``FAULTY`` with one fault, of those validate accepts, drawn with a fixed seed
    from the generators' first (derandomized) examples: the same files every run, as YAML text."""
    valid: dict[str, None] = {}
    accepted: dict[str, None] = {}

    @settings(SETTINGS, max_examples=DRAWN, phases=[Phase.generate])
    @given(stack_files())
    def draw_valid(doc: dict[str, Any]) -> None:
        text = yaml.safe_dump(doc, sort_keys=False)
        if isinstance(_validate(text), Plan):  # all, unless validate changed (the properties test says so)
            valid[text] = None

    @settings(SETTINGS, max_examples=DRAWN, phases=[Phase.generate])
    @given(faulty_stack_files())
    def draw_faulty(text: str) -> None:
        if isinstance(_validate(text), Plan):
            accepted[text] = None

    draw_valid()
    draw_faulty()
    seeded = random.Random(SEED)
    return seeded.sample(sorted(valid), VALID) + seeded.sample(sorted(accepted), FAULTY)


def _trunk_props(plan: Plan, trunk: Trunk, local_url: str) -> dict[str, Any]:
    """As ``infra.stack.components.trunk_props``: a dummy password from config; the file's LiveKit URL is the local
    server here."""
    props: dict[str, Any] = trunk.args.model_dump(exclude_defaults=True)
    if trunk.password_secret:
        props["auth_password"] = "dummy-trunk-password"
    if plan.livekit_url:
        props[URL_INPUT] = local_url
    return props


def _deploy(d: Deployment, plan: Plan, endpoints: Endpoints) -> None:
    """Create every resource of ``plan`` as the program declares it; note each ECS worker's container environment."""
    url = endpoints.livekit_url
    trunk_ids: dict[str, str] = {}
    kinds: list[tuple[str, LiveKitProvider, dict[str, Trunk[Any]]]] = [
        ("inbound trunk", InboundTrunkProvider(), plan.inbound_trunks),
        ("outbound trunk", OutboundTrunkProvider(), plan.outbound_trunks),
    ]
    for label, provider, trunks in kinds:
        for key, trunk in trunks.items():
            outs = d.create(provider, f"{label} {key}", _trunk_props(plan, trunk, url))
            if outs is not None and label == "inbound trunk":
                trunk_ids[key] = outs["sip_trunk_id"]
    queue: dict[str, Any] = {}
    if plan.workers:
        assert plan.death_queue is not None, "a plan with ECS workers has a death queue"
        props = {**plan.death_queue.model_dump(), "stack": plan.environment}
        queue = d.create(WorkerDeathQueueProvider(), "death queue", props) or {}
    for key, worker in plan.workers.items():  # infra.stack.components.agent_deployment
        props = worker.args.public_fields()
        if queue:
            props.update(death_queue_url=queue["queue_url"], death_queue_arn=queue["queue_arn"])
        if worker.default_subnets:
            props["subnets"] = default_subnets(worker.region)
        else:  # the file names subnets of its own account: this account's default ones stand in for them
            props["subnets"] = default_subnets(resolve_region(None))[: len(props["subnets"])]
        if not props["create_cluster"] and props["cluster_name"] not in d.clusters:  # the file's existing cluster
            boto3.client("ecs").create_cluster(clusterName=props["cluster_name"])
            d.clusters.append(props["cluster_name"])
        if worker.livekit_url_from_config:
            props["livekit_url"] = url
        props.update(stack=plan.environment, livekit_api_key="dummy-key", livekit_api_secret="dummy-secret",
                     provider_keys=dict.fromkeys(worker.provider_key_secrets, "dummy-provider-key"))  # fmt: skip
        outs = d.create(AgentWorkerProvider(), f"ECS worker {key}", props)
        if outs is not None:
            d.workers.append({"label": f"agent {key} on ECS", "env": _container_env(outs["task_definition_arn"])})
    for key, route in plan.inbound_routes.items():  # infra.stack.components.InboundRouteComponent
        if any(t not in trunk_ids for t in route.trunks):
            continue  # its trunk failed (reported)
        props = route.rule.model_dump(exclude_defaults=True)
        props["trunk_ids"] = [trunk_ids[t] for t in route.trunks]
        if plan.livekit_url:
            props[URL_INPUT] = url
        d.create(DispatchRuleProvider(), f"dispatch rule {key}", props)


def _container_env(task_definition_arn: str) -> dict[str, str]:
    """What the worker container of this task definition starts with: the image's ENV, what ECS sets, the task
    definition's environment, and each secret it injects (a dummy value)."""
    td = boto3.client("ecs").describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]
    (container,) = td["containerDefinitions"]
    env = {**_host_env(), **IMAGE_ENV, **ECS_ENV}
    env.update({e["name"]: e["value"] for e in container.get("environment", [])})
    env.update({s["name"]: f"dummy-{s['name'].lower()}" for s in container.get("secrets", [])})
    return env


def _host_env() -> dict[str, str]:
    """The few variables of this shell every worker process has (``HOST_ENV``): no credential, no endpoint."""
    return {k: os.environ[k] for k in HOST_ENV if k in os.environ}


def _local_workers(d: Deployment, plan: Plan, endpoints: Endpoints) -> None:
    """The workers ``./dev local`` starts (``localenv.deploy.start_stack_workers``): only the `local` stack's; an
    agent with no worker in its environment is a failure (nothing would answer its calls)."""
    for key, agent in plan.stack.agents.items():
        if agent.local is not None and plan.environment == LOCAL_ENVIRONMENT:
            env = {**_host_env(), **endpoints.env(), **agent.worker_env(plan.environment),
                   **worker_env(agent_name=key, http_port=0)}  # fmt: skip
            d.workers.append({"label": f"agent {key} local worker", "env": env})
        elif key not in plan.workers:
            d.failures.append(f"start agent {key}: no worker runs it in environment {plan.environment!r} "
                              f"(its workers: {plan.agents[key]}; only the local stack starts local workers)")  # fmt: skip


def _start(deployments: list[Deployment]) -> None:
    """Start every noted worker environment in one subprocess with no network; add each failure to its file."""
    items = [{**w, "label": f"{d.number}: {w['label']}"} for d in deployments for w in d.workers]
    run = subprocess.run([sys.executable, "-c", STARTS], input=json.dumps(items), capture_output=True, text=True,
                         cwd=REPO, env=_host_env(), timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results: dict[str, str | None] = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(i["label"] for i in items)
    by_number = {d.number: d for d in deployments}
    for label, error in results.items():
        if error is not None:
            number, what = label.split(": ", 1)
            by_number[int(number)].failures.append(f"start {what}: {error}")


def test_a_seeded_sample_of_accepted_stack_files_deploys_to_livekit_and_moto_and_every_worker_starts(
    local_env: LocalEnv, endpoints: Endpoints
) -> None:
    deployments = []
    try:
        for number, text in enumerate(_sample()):
            stack, lines = parse(text, FILE)
            d = Deployment(number, text)
            plan = compile_stack(stack, FILE, lines, StackConfig())  # as validate: the sample is of accepted files
            try:
                _deploy(d, plan, endpoints)
            finally:
                d.delete_all()
                wipe_sip()
                if d.failures:  # a failed create may leave objects that a later file would adopt
                    local_env.reset_aws()
            _local_workers(d, plan, endpoints)
            deployments.append(d)
    finally:
        local_env.reset_aws()  # the shared moto as the next test expects it: deleted services stay listed (INACTIVE)
    _start(deployments)
    assert len(deployments) >= 50
    failed = [d for d in deployments if d.failures]
    report = "\n\n".join(f"file {d.number}:\n  " + "\n  ".join(d.failures) + "\n" + d.text for d in failed)
    assert not failed, f"{len(failed)} of {len(deployments)} accepted stack files fail to deploy or start:\n{report}"
