"""The resources a Pulumi program declares: ``SipInboundTrunk``, ``SipOutboundTrunk``, ``SipDispatchRule``.

Arguments are the fields of ``InboundTrunkArgs``, ``OutboundTrunkArgs`` and ``DispatchRuleArgs``
(``infra.livekit.args``), given either as one of those models or as a mapping whose values may be
Pulumi inputs (for example a rule's ``trunk_ids`` taken from a trunk's ``sip_trunk_id``).
``auth_password`` is always made a secret.

Type tokens are ``pulumi-python:dynamic/livekit:<Class>``; renaming a class or its module changes the
token and the provider path in state, so both stay as they are.

Adopting objects that already exist in LiveKit: declare them with the same ``name`` they have in
LiveKit. ``pulumi up`` finds the object by name, takes it over (same id) and overwrites it with the
declaration, instead of creating a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import Resource
from pydantic import BaseModel, ValidationError

from contract.types import SECRET_FIELDS
from infra.dynamic import InvalidArguments
from infra.livekit.provider import DispatchRuleProvider, InboundTrunkProvider, LiveKitProvider, OutboundTrunkProvider
from infra.livekit.validation import describe_errors

SECRET_OUTPUTS = list(SECRET_FIELDS)


class InvalidDeclaration(pulumi.RunError, InvalidArguments):
    """Invalid arguments caught while the program runs; Pulumi shows the message without a traceback."""


def _set_fields(args: BaseModel) -> dict[str, Any]:
    """Only the fields that differ from their defaults: ``check()`` fills in the rest in the provider.

    Every key sent becomes an Output the SDK tracks until the program ends (and its wait loop is
    quadratic in them), so a trunk declared with two fields costs two keys, not sixteen.
    """
    return args.model_dump(exclude_defaults=True)


def _props(
    resource_name: str, provider: LiveKitProvider, args: BaseModel | Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    model = provider.KIND.args
    if isinstance(args, BaseModel):
        props: dict[str, Any] = _set_fields(args)
    else:
        props = dict(args)
        plain = not any(isinstance(v, pulumi.Output) for v in props.values())
        if plain:  # fail fast in the program, naming the resource and the field
            hidden = {k: v for k, v in props.items() if k.startswith("__")}  # provider inputs (URL, id to adopt)
            try:
                props = {**_set_fields(model.model_validate({k: v for k, v in props.items() if k not in hidden})),
                         **hidden}  # fmt: skip
            except ValidationError as e:
                lines = "\n".join(f"  {f}: {r}" for f, r in describe_errors(e))
                raise InvalidDeclaration(f"{provider.KIND.label} {resource_name!r} is invalid:\n{lines}") from None
    secrets = [k for k in SECRET_OUTPUTS if k in model.model_fields]
    for key in secrets:
        if props.get(key):
            props[key] = pulumi.Output.secret(props[key])
    props[provider.KIND.id_field] = None  # output-only: filled in by create
    return props, secrets


class _SipResource(Resource):
    """Shared constructor: the subclass names its provider and, through class keywords, its type token."""

    _provider_class: type[LiveKitProvider]

    def __init__(
        self,
        resource_name: str,
        args: BaseModel | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        provider = self._provider_class()
        props, secrets = _props(resource_name, provider, args)
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=secrets))
        super().__init__(provider, resource_name, props, opts)


class SipInboundTrunk(_SipResource, module="livekit", name="SipInboundTrunk"):
    """A LiveKit inbound SIP trunk; arguments: ``InboundTrunkArgs`` (as the model or a mapping of inputs)."""

    _provider_class = InboundTrunkProvider
    sip_trunk_id: pulumi.Output[str]
    name: pulumi.Output[str]
    numbers: pulumi.Output[list[str]]


class SipOutboundTrunk(_SipResource, module="livekit", name="SipOutboundTrunk"):
    """A LiveKit outbound SIP trunk; arguments: ``OutboundTrunkArgs`` (as the model or a mapping of inputs)."""

    _provider_class = OutboundTrunkProvider
    sip_trunk_id: pulumi.Output[str]
    name: pulumi.Output[str]
    numbers: pulumi.Output[list[str]]


class SipDispatchRule(_SipResource, module="livekit", name="SipDispatchRule"):
    """A LiveKit SIP dispatch rule; arguments: ``DispatchRuleArgs`` (as the model or a mapping of inputs)."""

    _provider_class = DispatchRuleProvider
    sip_dispatch_rule_id: pulumi.Output[str]
    name: pulumi.Output[str]
