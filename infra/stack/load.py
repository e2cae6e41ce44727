"""Reading a stack file: YAML with line numbers, validation errors that name file, line and field."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infra.livekit.fields import describe_errors
from infra.stack.model import StackFile

STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: ~10x faster


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stack file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field, message = _printable(self.field), _printable(self.message)  # one problem, one line
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def _printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (a key may hold any character)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def yaml_problem(file: str, error: yaml.YAMLError, text: str = "") -> Problem:
    """A YAML syntax error of ``file``, at its line when the parser gives one (or the reader's position in
    ``text``: a character YAML does not allow)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1 if text else None
        return Problem(file, line, "", f"not valid YAML: character #x{error.character:04x}: {error.reason}")
    return Problem(file, mark.line + 1 if mark else None, "", f"not valid YAML: {getattr(error, 'problem', error)}")


class StackFileError(Exception):
    """A stack file is invalid; ``problems`` lists each problem with file, line and field."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


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


def _line_of(lines: dict[tuple[str, ...], int], field: str) -> int | None:
    parts = tuple(p for p in field.split(".") if p)
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return lines.get(())


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
        problems = [Problem(file, _line_of(lines, f), f, msg) for f, msg in describe_errors(e)]
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
