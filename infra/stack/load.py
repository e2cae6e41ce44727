"""Reading a stack file: YAML with line numbers, validation errors that name file, line and field."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infra.livekit.fields import describe_errors
from infra.stack.errors import Problem, StackFileError, line_of, yaml_problem
from infra.stack.model import StackFile

STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: ~10x faster


def _lines(node: yaml.Node, path: tuple[str, ...] = (), out: dict[tuple[str, ...], int] | None = None) -> dict:
    """Map each path in the document (keys and list indexes as strings) to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, str(i)), out)
    return out


def stack_path(environment: str, stacks_dir: Path | None = None) -> Path:
    """Where the stack file of an environment lives (``SIPHON_STACKS_DIR`` overrides the folder)."""
    folder = stacks_dir or Path(os.environ.get("SIPHON_STACKS_DIR") or STACKS_DIR)
    return folder / f"{environment}.yaml"


def parse(text: str, file: str) -> tuple[StackFile, dict[tuple[str, ...], int]]:
    """Parse and validate a stack file's text; raise StackFileError naming file, line and field."""
    loader = _Loader(text)  # one parse: the node tree gives line numbers, the same tree the data
    try:
        node = loader.get_single_node()
        data: Any = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise StackFileError([yaml_problem(file, e, text)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise StackFileError([Problem(file, 1, "", "a stack file is a YAML mapping (environment:, agents:, ...)")])
    lines = _lines(node) if node is not None else {}
    try:
        return StackFile.model_validate(data), lines
    except ValidationError as e:
        problems = [Problem(file, line_of(lines, f), f, msg) for f, msg in describe_errors(e)]
        raise StackFileError(problems) from None


def read_text(path: Path, what: str = "the stack file") -> str:
    """A file's UTF-8 text, or StackFileError saying why it cannot be read (at the line of a byte that is not
    UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StackFileError([Problem(str(path), None, "", f"cannot read {what}: {e.strerror}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problem = f"not UTF-8 text: byte {data[e.start]:#04x} cannot start or continue a character (save it as UTF-8)"
        raise StackFileError([Problem(str(path), line, "", problem)]) from None


def load(path: Path) -> tuple[StackFile, dict[tuple[str, ...], int]]:
    """Read and validate one stack file."""
    return parse(read_text(path), str(path))


@dataclass(frozen=True)
class StackConfig:
    """What validation may read from the stack's Pulumi config file (no decryption, no credentials)."""

    file: str = ""
    """The config file (``Pulumi.<environment>.yaml`` beside the stack file); empty: secret references unchecked."""
    exists: bool = False
    keys: frozenset[str] = frozenset()
    """Config keys the file sets (without the project prefix)."""
    secure: frozenset[str] = frozenset()
    """The keys it sets as secrets (encrypted)."""
    imports: bool = False
    """The file imports Pulumi ESC environments (``environment:``), whose keys cannot be read offline."""
    livekit_url: str = ""

    @classmethod
    def read(cls, stack_file: Path, environment: str) -> StackConfig:
        """``Pulumi.<environment>.yaml`` beside the stack file (and the project name from ``Pulumi.yaml``)."""
        path = stack_file.with_name(f"Pulumi.{environment}.yaml")
        if not path.is_file():
            return cls(str(path))
        text = read_text(path, "the stack's config file")
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise StackFileError([yaml_problem(str(path), e, text)]) from None
        config = doc.get("config") or {} if isinstance(doc, dict) else None
        if not isinstance(config, dict):
            problem = "a stack's config file is a YAML mapping whose config: is a mapping (pulumi config set writes it)"
            raise StackFileError([Problem(str(path), 1, "", problem)])
        project = _project_name(stack_file)
        keys = {k: k.removeprefix(f"{project}:") for k in config}
        secure = frozenset(short for k, short in keys.items() if isinstance(config[k], dict) and "secure" in config[k])
        url = config.get("livekit:url")
        return cls(str(path), True, frozenset(keys.values()), secure, bool(doc.get("environment")),
                   url if isinstance(url, str) else "")  # fmt: skip


def _project_name(stack_file: Path) -> str:
    for folder in (stack_file.parent, *stack_file.parents):
        project = folder / "Pulumi.yaml"
        if project.is_file():
            try:
                doc = yaml.safe_load(project.read_text(encoding="utf-8"))
            except (OSError, ValueError, yaml.YAMLError):  # not this project's file: the default name
                break
            return str(doc.get("name", "siphon")) if isinstance(doc, dict) else "siphon"
    return "siphon"
