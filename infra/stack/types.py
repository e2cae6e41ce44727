"""The plan's types: everything a compiled stack declares, as its resources will receive it.

``infra.stack.plan`` builds a ``Plan`` from a stack file; the Pulumi program, ``siphon-infra`` and the rehearsal
read it (the program reads nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from contract.types import Model
from infra.ecs.args import AgentWorkerArgs
from infra.livekit.dispatch_rule import AgentDispatch, DispatchRuleArgs
from infra.livekit.inbound_trunk import InboundTrunkArgs
from infra.livekit.outbound_trunk import OutboundTrunkArgs
from infra.stack.model import StackFile

if TYPE_CHECKING:
    from infra.ecs.death_queue import DeathQueueArgs


TrunkArgs = TypeVar("TrunkArgs", InboundTrunkArgs, OutboundTrunkArgs)


@dataclass(frozen=True)
class Trunk(Generic[TrunkArgs]):
    """A trunk's arguments and the config key of its password (the plan holds a placeholder)."""

    args: TrunkArgs
    password_secret: str = ""
    adopt_id: str = ""


@dataclass(frozen=True)
class Route:
    """An inbound route's dispatch rule (``trunk_ids`` are the route's trunk keys here), its trunks, and the agent
    it dispatches with where that agent's workers run (both empty for a direct rule)."""

    rule: DispatchRuleArgs
    trunks: list[str]
    adopt_id: str = ""
    agent: str = ""
    worker: str = ""

    @property
    def dispatch(self) -> AgentDispatch:
        """The agent the rule dispatches, with the metadata the worker receives (the route layer)."""
        assert self.rule.room_config is not None  # the plan always builds one
        return self.rule.room_config.agents[0]


class OutboundCall(Model):
    """What a call placed through an outbound route needs: the stack output ``outbound_routes.<route>``
    (``trunk_id`` is filled in by the deployment) that ``place_call`` reads."""

    trunk: str
    caller_ids: list[str]
    agent_name: str
    ring_timeout: float
    metadata: str
    trunk_id: str = ""


@dataclass(frozen=True)
class Worker:
    """An agent's ECS deployment arguments and where its secrets, subnets and LiveKit URL come from."""

    args: AgentWorkerArgs
    provider_key_secrets: dict[str, str]
    default_subnets: bool
    livekit_url_from_config: bool
    region: str = ""


@dataclass(frozen=True)
class RoutingRow:
    """One number's routing: the one table ``routes``, ``summary`` and the ``routing_table`` output are made of."""

    direction: str
    number: str
    """The called number inbound ("" for a route that answers every number); the caller ids outbound."""
    route: str
    trunks: list[str]
    agent: str
    """"" for a direct rule (it dispatches no agent)."""
    worker: str
    """Where the agent's workers run ("ecs", "local", "ecs+local"); "" for a direct rule."""
    rule_name: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything a stack declares, as the resources will receive it (the program reads nothing else)."""

    stack: StackFile
    environment: str = ""
    protect: bool = False
    livekit_url: str = ""
    """The stack file's ``livekit.url`` ("": the provider reads config or LIVEKIT_URL)."""
    agents: dict[str, str] = field(default_factory=dict)
    """Each agent -> where its workers run."""
    inbound_trunks: dict[str, Trunk[InboundTrunkArgs]] = field(default_factory=dict)
    outbound_trunks: dict[str, Trunk[OutboundTrunkArgs]] = field(default_factory=dict)
    inbound_routes: dict[str, Route] = field(default_factory=dict)
    outbound_routes: dict[str, OutboundCall] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    death_queue: DeathQueueArgs | None = None
    """The stack's death queue (``infra.ecs.death_queue``), when it has ECS workers."""

    def routing(self) -> list[RoutingRow]:
        """One row per inbound route and number it answers, then one per outbound route."""
        rows = [RoutingRow("inbound", number, key, route.trunks, route.agent, route.worker, route.rule.name)
                for key, route in self.inbound_routes.items() for number in route.rule.numbers or [""]]  # fmt: skip
        rows += [RoutingRow("outbound", ", ".join(out.caller_ids), key, [out.trunk], out.agent_name,
                            self.agents[out.agent_name]) for key, out in self.outbound_routes.items()]  # fmt: skip
        return rows

    def routing_rows(self) -> list[dict[str, str]]:
        """The routing table as text: direction, number, route, trunks, agent and where its worker runs."""
        return [{"direction": row.direction, "number": row.number or "(any)", "route": row.route,
                 "trunks": ", ".join(row.trunks) or "(any)", "agent": row.agent or "(none: direct)",
                 "worker": row.worker or "-"} for row in self.routing()]  # fmt: skip
