"""Specific exception types of the kernel.

Every error carries what failed and where; the command layer turns them into the
`{result, comment}` envelope in one place (`yuneta.command.error_envelope`).
"""

from __future__ import annotations


class YunetaError(Exception):
    """Base of every kernel error."""


class GClassError(YunetaError):
    """A gclass declaration or registry problem (unknown gclass, bad table)."""


class AttrError(YunetaError):
    """An attribute problem: unknown name or wrong type, naming both attribute and gclass."""

    def __init__(self, gclass: str, attr: str, problem: str) -> None:
        self.gclass = gclass
        self.attr = attr
        self.problem = problem
        super().__init__(f"{gclass}: attribute '{attr}': {problem}")


class CommandError(YunetaError):
    """A command failed; `result` is negative, `comment` is what the operator reads."""

    def __init__(self, comment: str, result: int = -1) -> None:
        self.result = result if result < 0 else -1
        self.comment = comment
        super().__init__(comment)


class ParseError(CommandError):
    """A command line could not be parsed (bad quoting, unknown key, wrong type)."""


class ConfigError(YunetaError):
    """A yuno config problem, naming the file, the JSON path inside it and the problem."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        self.file = file
        self.path = path
        self.problem = problem
        super().__init__(f"config error: {file}: {path or '/'}: {problem}")


class ThreadRuleError(RuntimeError):
    """A gobj's attributes were written from a thread that is not its actor (a bug in the
    code that wrote them, never an operator's error). Raised only when the debug check is on
    (`yuneta.gobj.CHECK_THREADS`)."""
