"""Model specs: their parsing, and the provider table with each provider's credential variables.

A spec is a LiveKit model string (``provider[/model][:variant]``: ``openai/gpt-4.1-mini``,
``deepgram/nova-3:en``, ``cartesia/sonic-2:<voice>``) or a SIPHON provider dict
(``{"provider": "openai", "model": "gpt-4.1-mini", ...params}``). Both normalise to ``NormalizedSpec``.

Plugin providers are the LiveKit plugin packages (``livekit-plugins-<name>``) of the ``worker`` extra, which the
image installs: every provider here can be built in the image, given its credential. The ``local`` provider is
pure code and always available offline (``local/scripted`` LLM, ``local/espeak-ng[:voice]`` TTS, ``local/silent``
STT): the test models, run only in the ``local`` environment (``contract.types.LOCAL_ENVIRONMENT``).

Stack validation checks specs here (``check_spec``, ``run_problems``); the worker builds them with
``worker.models.registry``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contract.metadata import MODEL_KINDS, AgentConfig, ModelKind, ModelSpec, ProviderSpec, chain_entries, entry_fields
from contract.types import LOCAL_ENVIRONMENT

_SPEC: TypeAdapter[ModelSpec] = TypeAdapter(ModelSpec)

VARIANT_PARAM: dict[ModelKind, str | None] = {"llm": None, "stt": "language", "tts": "voice"}
"""What the ``:variant`` suffix of a model string sets, per kind."""


class SpecError(ValueError):
    """A spec that cannot be parsed or names no known provider."""


@dataclass(frozen=True)
class NormalizedSpec:
    """A parsed model spec."""

    kind: ModelKind
    provider: str
    model: str | None = None
    variant: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Non-secret display form: ``provider/model[:variant]`` (parameters left out)."""
        out = self.provider + (f"/{self.model}" if self.model else "")
        return out + (f":{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Provider:
    """How to build one provider's component for one kind."""

    module: str
    factory: str  # attribute path inside module, e.g. "LLM" or "LLM.with_cerebras"
    env: tuple[str, ...] = ()  # credentials that must be set (any one of them)
    package: str = ""  # the distribution that provides ``module`` (in the ``worker`` extra)
    models: tuple[str, ...] = ()  # non-empty: only these models (local providers)
    default_model: str | None = None
    offline: bool = False
    model_param: str = "model"  # the constructor parameter the ``/model`` part sets
    variant_param: str | None = None  # the one the ``:variant`` part sets (None: the kind's; "": none)

    def variant_for(self, kind: ModelKind) -> str | None:
        """The constructor parameter a ``:variant`` suffix sets for this provider, or None if it takes none."""
        return (VARIANT_PARAM[kind] if self.variant_param is None else self.variant_param) or None


def _plugin(
    name: str, factory: str, *env: str, module: str | None = None, variant: str | None = None, model: str = "model"
) -> Provider:
    mod = module or name
    return Provider(f"livekit.plugins.{mod}", factory, env, f"livekit-plugins-{mod}", model_param=model,
                    variant_param=variant)  # fmt: skip


_LOCAL = "worker.models.offline"
PROVIDERS: dict[ModelKind, dict[str, Provider]] = {
    "llm": {
        "local": Provider(_LOCAL, "ScriptedLLM", models=("scripted",), default_model="scripted", offline=True),
        "openai": _plugin("openai", "LLM", "OPENAI_API_KEY"),
        "anthropic": _plugin("anthropic", "LLM", "ANTHROPIC_API_KEY"),
        "gemini": _plugin("google", "LLM", "GOOGLE_API_KEY", module="google"),
        "google": _plugin("google", "LLM", "GOOGLE_API_KEY"),
        "groq": _plugin("groq", "LLM", "GROQ_API_KEY"),
        "mistralai": _plugin("mistralai", "LLM", "MISTRAL_API_KEY"),
        "openrouter": _plugin("openai", "LLM.with_openrouter", "OPENROUTER_API_KEY", module="openai"),
        "xai": _plugin("openai", "LLM.with_x_ai", "XAI_API_KEY", module="openai"),
        "deepseek": _plugin("openai", "LLM.with_deepseek", "DEEPSEEK_API_KEY", module="openai"),
        "ollama": _plugin("openai", "LLM.with_ollama", module="openai"),
        "perplexity": _plugin("openai", "LLM.with_perplexity", "PERPLEXITY_API_KEY", module="openai"),
        "together": _plugin("openai", "LLM.with_together", "TOGETHER_API_KEY", module="openai"),
        "cerebras": _plugin("openai", "LLM.with_cerebras", "CEREBRAS_API_KEY", module="openai"),
    },
    "stt": {
        "local": Provider(_LOCAL, "SilentSTT", models=("silent",), default_model="silent", offline=True),
        "deepgram": _plugin("deepgram", "STT", "DEEPGRAM_API_KEY"),
        "assemblyai": _plugin("assemblyai", "STT", "ASSEMBLYAI_API_KEY", variant="language_codes"),
        "openai": _plugin("openai", "STT", "OPENAI_API_KEY"),
        "groq": _plugin("groq", "STT", "GROQ_API_KEY"),
        "cartesia": _plugin("cartesia", "STT", "CARTESIA_API_KEY"),
        "sarvam": _plugin("sarvam", "STT", "SARVAM_API_KEY"),
        "mistralai": _plugin("mistralai", "STT", "MISTRAL_API_KEY"),
        "google": _plugin("google", "STT", "GOOGLE_APPLICATION_CREDENTIALS", variant="languages"),
    },
    "tts": {
        "local": Provider(_LOCAL, "EspeakTTS", models=("espeak-ng",), default_model="espeak-ng", offline=True),
        "cartesia": _plugin("cartesia", "TTS", "CARTESIA_API_KEY"),
        "elevenlabs": _plugin("elevenlabs", "TTS", "ELEVEN_API_KEY", variant="voice_id"),
        "deepgram": _plugin("deepgram", "TTS", "DEEPGRAM_API_KEY", variant=""),  # the voice is the model
        "openai": _plugin("openai", "TTS", "OPENAI_API_KEY"),
        "groq": _plugin("groq", "TTS", "GROQ_API_KEY"),
        "rime": _plugin("rime", "TTS", "RIME_API_KEY", variant="speaker"),
        "sarvam": _plugin("sarvam", "TTS", "SARVAM_API_KEY", variant="speaker"),
        "google": _plugin("google", "TTS", "GOOGLE_APPLICATION_CREDENTIALS", variant="voice_name", model="model_name"),
        "gemini": _plugin("google", "beta.GeminiTTS", "GOOGLE_API_KEY", module="google", variant="voice_name"),
    },
}
"""Every provider the worker knows, per kind. Adding a provider = one line here."""

FILE_CREDENTIALS: frozenset[str] = frozenset({"GOOGLE_APPLICATION_CREDENTIALS"})
"""The credential variables of ``PROVIDERS`` that their plugin reads as the path of a file (Google's Application
Default Credentials: a service account's key file). A deployment gives each one as the file's text (ECS injects a
secret as the variable's text, and ``provider_key_secrets`` names a config secret set from the file); the worker
writes that text to a private file at start and points the variable at it (``write_file_credentials``)."""

FILE_CREDENTIAL_HOW = (
    'give the key file\'s JSON text (a deployment: `pulumi config set --secret googleCredentials "$(cat key.json)"`, '
    "that key named under provider_key_secrets) or the path of a key file the worker can read"
)
"""What to give a ``FILE_CREDENTIALS`` variable (in the worker's start-up message)."""


ROUTING_PARAMS: frozenset[str] = frozenset({
    "api_key", "credentials", "credentials_info", "credentials_file", "voice_cloning_key",  # which credential
    "base_url", "websocket_url", "ws_url", "allow_custom_endpoint", "http_options",  # which host
    "client", "http_session", "extra_headers", "extra_query",  # a client (its host, its headers) the plugin uses
    "vertexai", "project", "location",  # which Google endpoint and project (billed, and given the credential)
})  # fmt: skip
"""Every constructor parameter of a provider above that decides where its traffic or its credential goes. Only a layer
from the stack file or from code may set one: a caller-sourced layer that names one loses it (``contract.resolve``),
and validate holds a stack-declared URL among them to https outside ``local`` (``URL_PARAMS``).
``tests/test_caller_overrides.py`` reads every plugin constructor's signature: a parameter whose name looks like
one (``ROUTING_NAME``) is here or in ``NOT_ROUTING_PARAMS``, so a plugin upgrade that adds one fails until it is
placed."""

URL_PARAMS: frozenset[str] = frozenset({"base_url", "websocket_url", "ws_url"})
"""The ``ROUTING_PARAMS`` whose value is an endpoint URL."""

ROUTING_NAME = (
    r"url|uri|host|endpoint|base|key|token|secret|credential|password|auth|path|file|region|location|"
    r"project|vertex|client|session|http|socket|domain|account|org|extra"
)
"""What the name of a parameter that may decide where traffic or a credential goes looks like (a regex search)."""

NOT_ROUTING_PARAMS: frozenset[str] = frozenset({
    "keywords", "keyterm", "keyterms", "keyterms_prompt", "prompt_cache_key",  # recognition hints, a cache key
    "max_tokens", "max_completion_tokens", "max_output_tokens", "tokenizer", "word_tokenizer",  # lengths, splitting
    "endpointing_ms", "endpointing_sensitivity",  # end-of-speech detection
    "site_url",  # OpenRouter's attribution header: the request still goes to base_url
    "api_version", "websocket_protocol", "use_websocket",  # the protocol with the same host
    "domain",  # AssemblyAI's speech domain (medical, ...)
    "effects_profile_id",  # Google TTS audio effects (telephony, headphones)
    "extra_body",  # body fields: the request still goes to base_url with the deployment's key
})  # fmt: skip
"""Parameters whose name matches ``ROUTING_NAME`` but that decide no host and no credential (checked by hand)."""

EXAMPLE_SPECS: dict[ModelKind, str] = {
    "llm": "openai/gpt-4.1-mini",
    "stt": "deepgram/nova-3:en",
    "tts": "cartesia/sonic-2",
}
"""What to write for a default model kind that is missing (in error messages)."""

LOCAL_DEFAULTS: dict[ModelKind, str] = {"llm": "local/scripted", "stt": "local/silent", "tts": "local/espeak-ng"}
"""The offline last resort when even the worker's configured default cannot be built."""


def constructor(entry: Provider) -> Callable[..., Any]:
    """The provider's constructor: ``entry.factory`` in ``entry.module``, imported (``ImportError`` when its plugin
    is not installed here). The worker builds models with it and validate reads its signature."""
    target: Any = importlib.import_module(entry.module)
    for part in entry.factory.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


@cache
def constructor_params(kind: ModelKind, provider: str) -> frozenset[str] | None:
    """The keyword parameters the provider's constructor takes; None when it takes any (``**kwargs``) or its plugin
    is not installed in this environment (the image installs every one: see ``tests/test_packaging.py``)."""
    try:
        signature = inspect.signature(constructor(PROVIDERS[kind][provider]))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return frozenset(name for name, p in signature.parameters.items() if p.kind in kinds and name != "self")


def parameter_problems(norm: NormalizedSpec) -> Iterator[tuple[str, str]]:
    """``(param, why)`` for each parameter of a provider dict that its plugin's constructor does not take (the worker
    would fail to build it, and fall back or refuse the call); nothing when the constructor's parameters cannot be
    read here (``constructor_params``)."""
    taken = constructor_params(norm.kind, norm.provider)
    if taken is None:
        return
    entry = PROVIDERS[norm.kind][norm.provider]
    for param in sorted(set(norm.params) - taken):
        close = get_close_matches(param, sorted(taken), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        yield param, (f"{entry.module}.{entry.factory} takes no parameter {param!r}: {hint}it takes "
                      f"{', '.join(sorted(taken))}")  # fmt: skip


def known_providers(kind: ModelKind) -> list[str]:
    """Provider names accepted for ``kind``."""
    return sorted(PROVIDERS[kind])


def parse_spec(kind: ModelKind, spec: object) -> NormalizedSpec:
    """Normalise a string or provider dict; raises ``SpecError`` (unparseable or unknown provider)."""
    if kind not in MODEL_KINDS:
        raise SpecError(f"unknown model kind {kind!r}")
    if not isinstance(spec, str | ProviderSpec):
        try:
            spec = _SPEC.validate_python(spec)
        except ValidationError as err:
            raise SpecError(f"invalid {kind} spec: {err.error_count()} validation error(s)") from None
    if isinstance(spec, ProviderSpec):
        params = spec.params
        model = params.pop("model", None)
        if model is not None and not isinstance(model, str):
            raise SpecError(f"{kind} spec: 'model' must be a string")
        norm = NormalizedSpec(kind, spec.provider, model or None, None, params)
    else:
        text = spec.strip()
        head, _, variant = text.partition(":")
        provider, _, model = head.partition("/")
        if not provider or (_ and not model) or (":" in text and not variant):
            raise SpecError(f"invalid {kind} model string (expected provider[/model][:variant])")
        norm = NormalizedSpec(kind, provider.lower(), model or None, variant or None)
    entry = PROVIDERS[kind].get(norm.provider)
    if entry is None:
        other = [k for k in MODEL_KINDS if norm.provider in PROVIDERS[k]]
        hint = f"; {norm.provider} is a provider of {' and '.join(other)}: is this spec under the right kind?"
        hint = hint if other else ""
        raise SpecError(f"unknown {kind} provider {norm.provider!r} (known: {', '.join(known_providers(kind))}){hint}")
    if entry.models and (norm.model or entry.default_model) not in entry.models:
        raise SpecError(f"unknown {norm.provider} {kind} model {norm.model!r} (known: {', '.join(entry.models)})")
    if norm.variant and entry.variant_for(kind) is None:
        raise SpecError(f"{norm.provider} {kind} model strings take no ':variant' suffix")
    return norm


CHAIN_SEPARATOR = " > "
"""Between the labels of a fallback chain's entries, in the order they are tried (``chain_label``)."""


def chain_label(kind: ModelKind, value: ModelSpec | list[ModelSpec]) -> str | None:
    """The label of a layer's model kind: a spec's label, or a chain's entry labels in order
    (``openai/gpt-4.1-mini > anthropic/claude-haiku-4-5``); entries that do not parse are left out (the worker skips
    them, and says why); None when none parses."""
    labels = []
    for spec in chain_entries(value):
        try:
            labels.append(parse_spec(kind, spec).label)
        except SpecError:
            continue
    return CHAIN_SEPARATOR.join(labels) or None


def routing_params(spec: object) -> list[str]:
    """The ``ROUTING_PARAMS`` a provider dict names (a model string names none)."""
    params = spec.params if isinstance(spec, ProviderSpec) else spec if isinstance(spec, Mapping) else {}
    return sorted(k for k in params if k in ROUTING_PARAMS)


def without_routing_params(spec: ModelSpec) -> ModelSpec:
    """``spec`` without its ``ROUTING_PARAMS`` (a model string as is)."""
    if not isinstance(spec, ProviderSpec) or not routing_params(spec):
        return spec
    return ProviderSpec.model_validate({k: v for k, v in spec.model_dump().items() if k not in ROUTING_PARAMS})


def url_problems(spec: object) -> Iterator[tuple[str, str]]:
    """``(param, why)`` for each ``URL_PARAMS`` value of a provider dict that is not an https (or wss) URL."""
    params = spec.params if isinstance(spec, ProviderSpec) else {}
    for name in sorted(URL_PARAMS & set(params)):
        value = params[name]
        if not (isinstance(value, str) and value.lower().startswith(("https://", "wss://"))):
            yield name, ("is not an https URL: the provider's key would travel unencrypted (or to a host named "
                         "without a scheme); write https://<host>/... (wss://<host>/... for a websocket)")  # fmt: skip


def credential_variables(norm: NormalizedSpec) -> tuple[str, ...]:
    """The environment variables that carry this provider's credential (any one of them does); empty: none."""
    return PROVIDERS[norm.kind][norm.provider].env


def missing_credential(norm: NormalizedSpec, given: Collection[str]) -> str | None:
    """The variable a worker given only the variables ``given`` lacks to build ``norm``, or None."""
    needed = credential_variables(norm)
    return needed[0] if needed and not set(needed) & set(given) else None


class CredentialError(ValueError):
    """``FILE_CREDENTIALS`` variables whose value is neither an existing file nor a key file's JSON text."""


def write_file_credentials(environ: MutableMapping[str, str]) -> dict[str, str]:
    """For each ``FILE_CREDENTIALS`` variable of ``environ`` whose value is a key file's JSON text, not the path of an
    existing file: write the text to a file only its owner may read (0600, in a new 0700 directory from
    ``tempfile.mkdtemp``) and point the variable at it. A path to an existing file, and an unset or empty variable,
    are left as they are. Returns ``{variable: path}`` of the files written. Raises ``CredentialError`` naming every
    variable that is neither (never its value), before anything is written."""
    texts: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(FILE_CREDENTIALS):
        value = environ.get(name, "")
        if not value or os.path.isfile(value):
            continue
        try:
            is_object = isinstance(json.loads(value), dict)
        except ValueError:
            is_object = False
        if is_object:
            texts[name] = value
        else:
            problems.append(f"{name}: neither the path of an existing file nor a key file's JSON text; "
                            f"{FILE_CREDENTIAL_HOW}")  # fmt: skip
    if problems:
        raise CredentialError("\n".join(problems))
    written: dict[str, str] = {}
    directory = tempfile.mkdtemp(prefix="siphon-credentials-") if texts else ""
    for name, text in texts.items():
        path = os.path.join(directory, f"{name.lower()}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, 0o600)  # whatever the umask
            f.write(text)
        environ[name] = written[name] = path
    return written


def is_offline(norm: NormalizedSpec) -> bool:
    """True for the offline test models (the ``local`` provider)."""
    return PROVIDERS[norm.kind][norm.provider].offline


def offline_refusal(norm: NormalizedSpec) -> str:
    """Why an offline test model is not run outside the ``local`` environment."""
    return f"{norm.label} is an offline test model: only the `{LOCAL_ENVIRONMENT}` environment runs it"


@dataclass(frozen=True)
class RunProblem:
    """Why a worker could not run one model kind of a layer as declared (``run_problems``)."""

    kind: ModelKind
    spec: NormalizedSpec | None  # None: the kind is unset in a default layer
    missing_credential: str | None = None  # the variable to give the worker; None with a spec: a test model
    field: str = ""  # where in the layer: the kind, or ``kind.<i>`` for a chain's entry (``entry_fields``)

    def message(self, where_keys: str) -> str:
        """The problem in words; ``where_keys`` says where credentials are declared (stack file or arguments)."""
        if self.spec is None:
            return (f"not set: outside `{LOCAL_ENVIRONMENT}` a worker runs only the models it is given, and would "
                    f"refuse to start; set it, e.g. {EXAMPLE_SPECS[self.kind]}")  # fmt: skip
        if self.missing_credential is None:
            return f"{offline_refusal(self.spec)}; name the provider the agent runs on, e.g. {EXAMPLE_SPECS[self.kind]}"
        return f"{self.spec.label} needs {self.missing_credential}, which the workers are not given: {where_keys}"


def run_problems(
    layer: AgentConfig, *, environment: str, credentials: Collection[str] | None, defaults: bool = False
) -> Iterator[RunProblem]:
    """What keeps a worker in ``environment`` from running ``layer``'s models as declared: outside ``local``, a test
    model, or (for a ``defaults`` layer) a kind left unset; with ``credentials`` (the variables the deployment gives
    the worker), a provider whose credential is not among them. Specs that do not parse are left to ``check_spec``."""
    local = environment == LOCAL_ENVIRONMENT
    for kind in MODEL_KINDS:
        value = getattr(layer, kind)
        if value is None:
            if defaults and not local:
                yield RunProblem(kind, None, field=kind)
            continue
        for field_, spec in entry_fields(kind, value):  # a chain: every entry, as one spec
            try:
                norm = parse_spec(kind, spec)
            except SpecError:
                continue
            if is_offline(norm) and not local:
                yield RunProblem(kind, norm, field=field_)
            elif credentials is not None and (variable := missing_credential(norm, credentials)):
                yield RunProblem(kind, norm, variable, field=field_)


def can_resolve(kind: ModelKind, spec: object) -> bool:
    """True when ``spec`` parses and names a provider (and, for local providers, a model) the worker knows.

    Does not check that the plugin is installed in the image or that its credential is set: that depends
    on the deployment (see ``worker.models.registry.availability``)."""
    try:
        parse_spec(kind, spec)
    except SpecError:
        return False
    return True


def check_spec(kind: ModelKind, spec: object) -> str | None:
    """``None`` if ``can_resolve``, else the reason (for stack validation messages)."""
    try:
        parse_spec(kind, spec)
    except SpecError as err:
        return str(err)
    return None


def layer_spec_problems(layer: AgentConfig) -> Iterator[tuple[ModelKind, str, str]]:
    """``(kind, field, reason)`` for each model spec a configuration layer sets that the worker cannot resolve; a
    chain's entries each at their own field (``kind.<i>``: ``entry_fields``)."""
    for kind in MODEL_KINDS:
        value = getattr(layer, kind)
        for field_, spec in entry_fields(kind, value) if value is not None else []:
            if reason := check_spec(kind, spec):
                yield kind, field_, reason
