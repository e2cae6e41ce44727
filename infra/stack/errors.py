"""A stack file's problems: each with its file, line and field, printed one to a line."""

from __future__ import annotations

from dataclasses import dataclass

import yaml


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


def line_of(lines: dict[tuple[str, ...], int], field: str) -> int | None:
    """The line of ``field`` (a dotted path) in a stack file: its own, else its nearest enclosing field's."""
    parts = tuple(p for p in field.split(".") if p)
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return lines.get(())
