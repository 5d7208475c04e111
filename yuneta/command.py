"""Command lines and their answers.

A command line `cmd key=value key2="quoted value" key3='x' positional` becomes a command
name and a kw, typed by the command's parameter table. Every command answers the same
envelope `{"result", "comment", "schema", "data"}` (result 0 is success, negative is
failure); errors become envelopes here, in one place.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable
from typing import Any

from yuneta.errors import CommandError, ParseError, YunetaError
from yuneta.gclass import Command, coerce

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

#: The service a command goes to when it names none (the original's `__default_service__`).
DEFAULT_SERVICE = "__default_service__"


def envelope(result: int = 0, comment: str = "", schema: Any = None, data: Any = None) -> dict:
    """The answer of every command. An empty failure comment becomes "(see log)"."""
    if result < 0 and not comment:
        comment = "(see log)"
    return {"result": int(result), "comment": comment, "schema": schema, "data": data}


def error_envelope(exc: BaseException) -> dict:
    """Turn an exception raised by a command into its envelope (never leaks a traceback)."""
    if isinstance(exc, CommandError):
        return envelope(exc.result, exc.comment)
    if isinstance(exc, YunetaError):
        return envelope(-1, str(exc))
    return envelope(-1, f"{type(exc).__name__}: {exc}" if str(exc) else "(see log)")


def tokenize(line: str) -> list[str]:
    """Split a command line on blanks, honouring "double" (with \\ escapes) and 'single' quotes.

    Quotes may start anywhere in a token (`key="a b"`); they are removed. Raises
    ParseError on an unterminated quote.
    """
    tokens: list[str] = []
    cur: list[str] = []
    in_token = False
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch.isspace():
            if in_token:
                tokens.append("".join(cur))
                cur, in_token = [], False
            i += 1
            continue
        in_token = True
        if ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise ParseError(f"unterminated double quote in: {line}")
                ch = line[i]
                if ch == "\\" and i + 1 < n and line[i + 1] in '"\\':
                    cur.append(line[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                cur.append(ch)
                i += 1
            continue
        if ch == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ParseError(f"unterminated single quote in: {line}")
            cur.append(line[i + 1 : end])
            i = end + 1
            continue
        cur.append(ch)
        i += 1
    if in_token:
        tokens.append("".join(cur))
    return tokens


def split_command(line: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a line into (command name, positional values, key=value pairs), all strings."""
    # Keys are recognised before quote removal: `key="a=b"` is a key, `"a=b"` a positional.
    raw = _raw_tokens(line)
    if not raw:
        raise ParseError("What command?")
    name = tokenize(raw[0])[0] if raw[0] else ""
    if not name:
        raise ParseError("What command?")
    positional: list[str] = []
    pairs: dict[str, str] = {}
    for tok in raw[1:]:
        eq = tok.find("=")
        key = tok[:eq] if eq > 0 else ""
        if key and _KEY_RE.match(key):
            value = tokenize(tok[eq + 1 :])
            pairs[key] = value[0] if value else ""
        else:
            value = tokenize(tok)
            positional.append(value[0] if value else "")
    return name, positional, pairs


def _raw_tokens(line: str) -> list[str]:
    """Tokens with their quotes kept, so that `split_command` can see where keys are."""
    tokens: list[str] = []
    cur: list[str] = []
    quote = ""
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if quote:
            cur.append(ch)
            if quote == '"' and ch == "\\" and i + 1 < n:
                cur.append(line[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
            i += 1
            continue
        if ch.isspace():
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            if ch in "\"'":
                quote = ch
            cur.append(ch)
        i += 1
    if quote:
        kind = "double" if quote == '"' else "single"
        raise ParseError(f"unterminated {kind} quote in: {line}")
    if cur:
        tokens.append("".join(cur))
    return tokens


def build_kw(cmd: Command, positional: list[str], pairs: dict[str, Any]) -> dict[str, Any]:
    """Type `pairs` and `positional` values by the command's parameters, adding defaults.

    Unknown keys are a ParseError unless the command is wild (then kept as given).
    """
    params = {p.name: p for p in cmd.params}
    kw: dict[str, Any] = {}
    if len(positional) > len(cmd.params):
        raise ParseError(
            f"command '{cmd.name}': too many positional values ({len(positional)}), "
            f"it takes {len(cmd.params)}"
        )
    for param, value in zip(cmd.params, positional, strict=False):
        pairs.setdefault(param.name, value)
    for key, value in pairs.items():
        declared = params.get(key)
        if declared is None:
            if cmd.wild:
                kw[key] = value
                continue
            raise ParseError(f"command '{cmd.name}': unknown parameter '{key}'")
        try:
            kw[key] = coerce(declared.type, value)
        except ValueError as exc:
            raise ParseError(f"command '{cmd.name}': parameter '{key}': {exc}") from None
    for param in cmd.params:
        if param.name not in kw and param.default is not None:
            kw[param.name] = param.default
    return kw


def then(future: concurrent.futures.Future, fn: Callable[[Any], dict]) -> concurrent.futures.Future:
    """A Future of `fn(result of future)`: how a handler that waits (see `GObj.command`)
    turns what it waited for into its envelope without holding its actor."""
    out: concurrent.futures.Future = concurrent.futures.Future()

    def done(f: concurrent.futures.Future) -> None:
        try:
            out.set_result(fn(f.result()))
        except BaseException as exc:  # delivered to the waiting caller as an envelope
            out.set_exception(exc)

    future.add_done_callback(done)
    return out
