"""ycommand: the operator's shell to a Yuneta agent (or any yuno) over WebSocket.

It speaks the inter-event protocol of `yuneta.ievent` exactly as the C ``ycommand`` does:
connect, send ``EV_IDENTITY_CARD``, wait for a positive ``EV_IDENTITY_CARD_ACK``, then send
each command as ``EV_MT_COMMAND`` and print its ``EV_MT_COMMAND_ANSWER``. A line may chain
commands with ``;`` (quotes and braces respected); a leading ``-`` lets the chain go on after
that command fails. Answers print as the C tool prints them: lists with a schema as tables,
other data as JSON, then the comment, or ``ERROR <result>: <comment>``. In ``-c`` mode the exit
code is the last answer's result & 0xFF (so -1 exits 255); transport failures exit 1 and
usage errors 2. Everything that waits is bounded by ``-w``: ycommand never hangs. When the
reader of stdout goes away (``ycommand ... | head -1``) it stops quietly with 141 (128 + SIGPIPE,
what a shell reports for a command killed by SIGPIPE), without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO, TypeGuard

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from yuneta import ievent
from yuneta.command import DEFAULT_SERVICE
from yuneta.tls_client import client_context

DEFAULT_URL = "ws://127.0.0.1:1991"
DEFAULT_ROLE = "yuneta_agent"
# The agent gives a slow yuno up to 10 s (its command_timeout) and then answers "No answer
# within 10 s": ycommand must still be listening then.
DEFAULT_WAIT = 15.0
DEFAULT_LINGER = 0.25
HISTORY_FILE = "~/.ycommand_history"
EXIT_TRANSPORT = 1
EXIT_USAGE = 2
EXIT_OUTPUT_CLOSED = 141
LOCAL_COMMANDS = ("exit", "quit", "history")
REFUSED = "Identity card refused"

_RED = "\033[41;1;37m"
_YELLOW = "\033[0;93m"
_CYAN = "\033[1;36m"
_GRAY = "\033[0;90m"
_OFF = "\033[0m"


# ---------------------------------------------------------------------------
#   Command lines
# ---------------------------------------------------------------------------


def split_commands(text: str) -> list[str]:
    """Split a line into commands on top-level ``;``, as the C split_commands_into_array.

    A ``;`` inside '...' or "..." (backslash escapes inside quotes) or inside {...} is literal.
    Each command is stripped of spaces and tabs; empty commands are dropped. An unterminated
    quote runs to the end of the line (the C drops that last command; we keep it).
    """
    commands: list[str] = []
    start = 0
    depth = 0
    quote = ""
    i = 0
    n = len(text)
    while i <= n:
        ch = text[i] if i < n else ""
        if quote and i < n:
            if ch == "\\" and i + 1 < n:
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
        elif (ch == ";" and depth == 0) or i == n:
            chunk = text[start:i].strip(" \t\r\n")
            if chunk:
                commands.append(chunk)
            start = i + 1
        i += 1
    return commands


def strip_ignore_prefix(command: str) -> tuple[bool, str]:
    """``(ignore_error, command)``: a leading ``-`` means "go on if this command fails"."""
    command = command.strip(" \t")
    if command.startswith("-"):
        return True, command[1:].lstrip(" \t")
    return False, command


# ---------------------------------------------------------------------------
#   Rendering
# ---------------------------------------------------------------------------


def _paint(text: str, color: str, enabled: bool) -> str:
    return f"{color}{text}{_OFF}" if enabled else text


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _is_table_schema(schema: Any) -> bool:
    return (
        isinstance(schema, list)
        and len(schema) > 0
        and all(isinstance(col, dict) for col in schema)
    )


def _fillspace(col: dict[str, Any]) -> int:
    header = col.get("header")
    header = header if isinstance(header, str) else ""
    fill = col.get("fillspace", 10)
    fill = fill if isinstance(fill, int) and not isinstance(fill, bool) else 10
    if fill and fill < len(header):
        fill = len(header)
    return fill


def render_table(schema: list[dict[str, Any]], rows: list[Any], color: bool = False) -> str:
    """A list of rows as the C jsontable2str draws it.

    One column per schema entry ``{"id", "header", "fillspace"}`` (width ``fillspace``,
    default 10, at least the header's length; 0 hides the column; cells are cut to the width),
    a header line, a ``===`` line, one line per row, then ``Total: N``.
    """
    cols = [(col, _fillspace(col)) for col in schema]
    cols = [(col, fill) for col, fill in cols if fill > 0]

    def line(cells: Iterable[str]) -> str:
        return " ".join(cells).rstrip()

    header = line(
        _paint(str(col.get("header") or "").ljust(fill)[:fill], _CYAN, color) for col, fill in cols
    )
    ruler = line(_paint("=" * fill, _GRAY, color) for _, fill in cols)
    out = [header, ruler]
    for row in rows:
        cells = []
        for col, fill in cols:
            value = row.get(str(col.get("id"))) if isinstance(row, dict) else None
            cells.append(_cell_text(value).replace("\n", " ").ljust(fill)[:fill])
        out.append(line(cells))
    out.append("")
    out.append(f"Total: {len(rows)}")
    return "\n".join(out)


_PER_YUNO_KEYS = ("yuno_role", "yuno_name", "result", "comment", "data")


def _result_of(kw: dict[str, Any]) -> int:
    result = kw.get("result", -1)
    return result if isinstance(result, int) and not isinstance(result, bool) else -1


def _comment_of(kw: dict[str, Any]) -> str:
    comment = kw.get("comment")
    return comment if isinstance(comment, str) else ""


_TREE_KEYS = ("gclass", "name", "state", "running", "children")


def _is_tree(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in _TREE_KEYS)


def render_tree(node: dict[str, Any], color: bool = False) -> str:
    """A `view-gobj-tree` answer drawn as a tree: name, [gclass], state, running/playing flags,
    and the asked attributes, one gobj a line."""
    out: list[str] = []

    def label(n: dict[str, Any]) -> str:
        flags = ("running" if n.get("running") else "stopped") + (
            ", playing" if n.get("playing") else ""
        )
        attrs = n.get("attrs") or {}
        extra = " " + " ".join(f"{k}={_cell_text(v)}" for k, v in attrs.items()) if attrs else ""
        return (
            f"{_paint(str(n.get('name')), _CYAN, color)} [{n.get('gclass')}] "
            f"{n.get('state')} ({flags}){extra}"
        )

    def walk(n: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        out.append(label(n) if root else f"{prefix}{'└── ' if last else '├── '}{label(n)}")
        children = [c for c in n.get("children") or [] if isinstance(c, dict)]
        inner = "" if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(children):
            walk(child, inner, i == len(children) - 1, False)

    walk(node, "", True, True)
    return "\n".join(out)


def _render_data(schema: Any, data: Any, color: bool) -> str | None:
    """Data as the C prints it: a list with a table schema -> table; a gobj tree drawn as a
    tree; other lists and dicts -> JSON indented by 4; a string as is; numbers/booleans as
    JSON; null -> None (nothing)."""
    if isinstance(data, list) and _is_table_schema(schema):
        return render_table(schema, data, color)
    if _is_tree(data):
        return render_tree(data, color)
    if isinstance(data, (list, dict)):
        return json.dumps(data, indent=4, ensure_ascii=False)
    if isinstance(data, str):
        return data
    if data is not None:
        return json.dumps(data)
    return None


def _is_per_yuno_answers(data: Any) -> TypeGuard[list[dict[str, Any]]]:
    """True for the agent's ``command-yuno`` data: one entry per yuno that answered."""
    return (
        isinstance(data, list)
        and len(data) > 0
        and all(isinstance(item, dict) and all(k in item for k in _PER_YUNO_KEYS) for item in data)
    )


def _render_yuno_entry(entry: dict[str, Any], color: bool) -> list[str]:
    label = f"{entry.get('yuno_role')}^{entry.get('yuno_name')}"
    comment = _comment_of(entry)
    # C_YUNO's own comments often start with "role^name:" already: do not say it twice.
    said = comment if comment.startswith(label) else f"{label}: {comment}".rstrip()
    result = _result_of(entry)
    header = (
        _paint(f"ERROR {result}: {said}", _RED, color)
        if result < 0
        else _paint(said, _YELLOW, color)
    )
    body = _render_data(entry.get("schema"), entry.get("data"), color)
    return [header] if body is None else [header, body]


def render_answer(kw: dict[str, Any], color: bool = False) -> str:
    """The text ycommand prints for one answer (C display_webix_result).

    The data (see `_render_data`), then, when ``result < 0``, ``ERROR <result>: <comment>``,
    else the comment when not empty. The agent's ``command-yuno`` answer (data: a list of
    ``{yuno_role, yuno_name, result, comment, [schema], data}``, no table schema of its own)
    prints per yuno a header ``role^name: comment`` (``ERROR <result>: role^name: comment``
    when that yuno failed) and that yuno's data rendered the same way, then the comment.
    """
    result = _result_of(kw)
    comment = _comment_of(kw)
    schema = kw.get("schema")
    data = kw.get("data")
    parts: list[str] = []
    if _is_per_yuno_answers(data) and not _is_table_schema(schema):
        said = set()
        for entry in data:
            parts.extend(_render_yuno_entry(entry, color))
            label = f"{entry.get('yuno_role')}^{entry.get('yuno_name')}"
            own = _comment_of(entry)
            said.add(own if own.startswith(label) else f"{label}: {own}".rstrip())
        if comment in said:  # one yuno: the agent's comment is that yuno's, printed above
            return "\n".join(parts)
    else:
        body = _render_data(schema, data, color)
        if body is not None:
            parts.append(body)
    if result < 0:
        parts.append(_paint(f"ERROR {result}: {comment}", _RED, color))
    elif comment:
        parts.append(_paint(comment, _YELLOW, color))
    return "\n".join(parts)


def render_json(kw: dict[str, Any]) -> str:
    """One answer as a compact JSON line: the envelope, plus ``__md_yuno__`` when present."""
    envelope = {key: kw.get(key) for key in ("result", "comment", "schema", "data")}
    if "__md_yuno__" in kw:
        envelope["__md_yuno__"] = kw["__md_yuno__"]
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def extract_command_names(kw: dict[str, Any]) -> list[str]:
    """Command names from a ``help`` answer, for completion.

    Understands the C help text (lines ``- name ...``), lists of names, lists of dicts with
    ``command``/``name``/``id``, and dicts keyed by command name.
    """
    data = kw.get("data")
    names: list[str] = []
    if isinstance(data, str):
        names = re.findall(r"^\s*-\s+([A-Za-z0-9_][\w.\-]*)", data, flags=re.MULTILINE)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict):
                for key in ("command", "name", "id"):
                    if isinstance(item.get(key), str):
                        names.append(item[key])
                        break
    elif isinstance(data, dict):
        names = [key for key in data if isinstance(key, str)]
    return sorted(set(names))


# ---------------------------------------------------------------------------
#   The link to the remote yuno
# ---------------------------------------------------------------------------


class YcommandError(Exception):
    """A failure that ends ycommand with a message on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_TRANSPORT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputClosed(Exception):
    """Whoever read our stdout went away (``| head``): stop quietly with EXIT_OUTPUT_CLOSED."""


def _discard_output(out: TextIO) -> None:
    # Point the dead pipe's descriptor at /dev/null so the interpreter's last flush of text
    # still buffered succeeds instead of printing "Exception ignored ... BrokenPipeError".
    # (SIGPIPE is left ignored: restoring its default would also kill us on a dead socket.)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


@dataclass
class Options:
    """What the command line asked for."""

    url: str = DEFAULT_URL
    command: str = ""
    yuno_role: str = DEFAULT_ROLE
    yuno_name: str = ""
    service: str = DEFAULT_SERVICE
    wait: float = DEFAULT_WAIT
    linger: float = DEFAULT_LINGER
    interactive: bool = False
    as_json: bool = False
    token: str = ""
    cafile: str = ""
    insecure: bool = False


class AgentLink:
    """One identified WebSocket session to a yuno; runs commands one at a time.

    A reader task feeds every received message to the `ievent.ClientSession`; the answer to
    the command in flight (matched by msg_id) completes it, any other answer (e.g. the
    per-yuno answers of ``command-yuno``) goes to ``on_extra_answer`` as it arrives.
    """

    def __init__(
        self,
        ws: ClientConnection,
        session: ievent.ClientSession,
        wait: float,
        on_extra_answer: Callable[[ievent.CommandAnswer], None],
    ) -> None:
        self.ws = ws
        self.session = session
        self.wait = wait
        self.on_extra_answer = on_extra_answer
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: tuple[int, asyncio.Future[ievent.CommandAnswer]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed_reason = ""

    async def identify(self) -> ievent.SessionOpened:
        """Send the identity card and wait (at most ``wait`` s) for a positive ACK."""
        await self.ws.send(self.session.connection_made().text)
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(self.wait):
                while True:
                    event = await self._inbox.get()
                    if isinstance(event, ievent.SessionOpened):
                        return event
                    if isinstance(event, ievent.IdentityRefused):
                        code = event.result & 0xFF or EXIT_TRANSPORT
                        reason = event.comment
                        if not reason.startswith(REFUSED):  # the server may have said it
                            reason = f"{REFUSED}: {reason}"
                        raise YcommandError(f"ERROR {event.result}: {reason}", code)
                    if isinstance(event, ConnectionClosed):
                        raise YcommandError(
                            f"connection closed before the identity card ACK ({self.closed_reason})"
                        )
        except TimeoutError:
            raise YcommandError(f"no identity card ACK within {self.wait:g} s") from None

    async def command(self, line: str) -> ievent.CommandAnswer:
        """Send one command and wait (at most ``wait`` s) for its answer."""
        msg_id, frame = self.session.send_command(line)
        future: asyncio.Future[ievent.CommandAnswer] = asyncio.get_running_loop().create_future()
        self._pending = (msg_id, future)
        try:
            await self.ws.send(frame.text)
            async with asyncio.timeout(self.wait):
                return await future
        except TimeoutError:
            raise YcommandError(f"no answer to '{line}' within {self.wait:g} s") from None
        except ConnectionClosed:
            raise YcommandError(f"connection closed ({self.closed_reason})") from None
        finally:
            self._pending = None

    async def close(self) -> None:
        """Close the WebSocket (bounded by ``wait``) and stop the reader."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.wait):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                for event in self.session.receive_data(message):
                    self._dispatch(event)
        except ConnectionClosed:
            pass
        self.session.connection_lost()
        # The close frames live on the sans-I/O protocol object (websockets >= 13).
        protocol = self.ws.protocol
        rcvd = protocol.close_rcvd
        self.closed_reason = f"code {rcvd.code} {rcvd.reason}".strip() if rcvd else "closed by peer"
        closed = ConnectionClosed(rcvd, protocol.close_sent, protocol.close_rcvd_then_sent)
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(closed)
        self._inbox.put_nowait(closed)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, ievent.CommandAnswer):
            pending = self._pending
            if pending is not None and not pending[1].done() and event.msg_id in (pending[0], None):
                pending[1].set_result(event)
            else:
                self.on_extra_answer(event)
        elif isinstance(event, ievent.ProtocolFault):
            print(f"ycommand: protocol error: {event.reason}", file=sys.stderr)
        else:
            self._inbox.put_nowait(event)


def connect_failure(exc: BaseException, opts: Options) -> str:
    """Why a connection failed, in an operator's words: never an empty reason."""
    from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI

    secure = opts.url.lower().startswith("wss://")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message} (give --cafile, or --insecure)"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc).lower().replace("_", " ")
        hint = " (is it a plain ws:// port?)" if "version" in reason or "record" in reason else ""
        return f"TLS handshake failed: {reason}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the agent running?)"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)) and secure:
        return "connection reset during the TLS handshake (is it a plain ws:// port?)"
    if isinstance(exc, TimeoutError):
        return f"no connection within {opts.wait:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, InvalidStatus):
        return f"the server refused the WebSocket handshake: HTTP {exc.response.status_code}"
    if isinstance(exc, InvalidMessage):
        hint = "" if secure else " (is it a wss:// port?)"
        return f"no valid WebSocket handshake answer{hint}"
    if isinstance(exc, InvalidURI):
        return f"not a ws:// or wss:// URL ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class Shell:
    """Runs command lines over an `AgentLink` and prints the answers."""

    def __init__(self, opts: Options, out: TextIO | None = None) -> None:
        self.opts = opts
        self.out = out or sys.stdout
        self.color = not opts.as_json and self.out.isatty()
        self.last_result = 0
        self.link: AgentLink | None = None
        self.output_closed = False

    def emit(self, text: str) -> None:
        """Print ``text`` and a newline; raises `OutputClosed` once stdout's reader is gone."""
        if self.output_closed:
            raise OutputClosed
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:
            self.output_closed = True
            _discard_output(self.out)
            raise OutputClosed from None

    def show(self, answer: ievent.CommandAnswer) -> None:
        """Print one answer; remember its result for the exit code."""
        self.last_result = answer.result
        text = render_json(answer.kw) if self.opts.as_json else render_answer(answer.kw, self.color)
        if text:
            self.emit(text)

    def show_late(self, answer: ievent.CommandAnswer) -> None:
        """`show` for answers arriving on the reader task: a closed stdout is only noted."""
        with contextlib.suppress(OutputClosed):
            self.show(answer)

    async def connect(self) -> ievent.SessionOpened:
        """Open the WebSocket and identify; errors become `YcommandError`."""
        opts = self.opts
        session = ievent.ClientSession(
            yuno_role="ycommand",
            src_service="ycommand",
            dst_role=opts.yuno_role,
            dst_yuno=opts.yuno_name,
            dst_service=opts.service,
            user=ievent.CARD_USER,
            pid=os.getpid(),
            jwt=opts.token or None,
        )
        try:
            ws = await connect(
                opts.url,
                ssl=client_context(opts.url, opts.cafile, insecure=opts.insecure),
                open_timeout=opts.wait,
                close_timeout=min(opts.wait, 2.0),
                compression=None,
                proxy=None,
                max_size=ievent.DEFAULT_MAX_FRAME_SIZE,
                ping_interval=None,
            )
        except Exception as exc:  # refused, unresolvable, TLS, invalid URI, rejected handshake...
            raise YcommandError(
                f"cannot connect to {opts.url}: {connect_failure(exc, opts)}"
            ) from None
        self.link = AgentLink(ws, session, opts.wait, self.show_late)
        try:
            return await self.link.identify()
        except BaseException:
            await self.link.close()
            raise

    async def run_line(self, line: str, *, stop_on_error: bool = True) -> str:
        """Run every command of a line in order, each after the previous answer.

        Returns ``"done"``, ``"stopped"`` (a command without ``-`` failed: the rest of the
        line was skipped) or ``"exit"`` (the local ``exit``/``quit``).
        """
        assert self.link is not None
        for command in split_commands(line):
            ignore, command = strip_ignore_prefix(command)
            if not command:
                continue
            if command.lower() in ("exit", "quit"):
                return "exit"
            if command.lower() == "history":
                for entry in _history_lines():
                    self.emit(entry)
                continue
            answer = await self.link.command(command)
            self.show(answer)
            if answer.result < 0 and stop_on_error and not ignore:
                return "stopped"
        return "done"

    async def linger(self) -> None:
        """Give late answers (fan-out of command-yuno) a moment to arrive and print."""
        if self.opts.linger > 0 and self.link is not None and not self.output_closed:
            await asyncio.sleep(self.opts.linger)
        if self.output_closed:
            raise OutputClosed

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()


# ---------------------------------------------------------------------------
#   Interactive mode
# ---------------------------------------------------------------------------


def _history_lines() -> list[str]:
    try:
        import readline
    except ImportError:
        return []
    return [
        f"{i:4d}  {readline.get_history_item(i)}"
        for i in range(1, readline.get_current_history_length() + 1)
    ]


_PARAM_RE = re.compile(r"([A-Za-z_][\w\-]*)=<(\w+)>")
_NAME_PARAMS = {"service": "gobjs", "gobj": "gobjs", "yuno_name": "yuno_name"}
_YUNO_PARAMS = ("id", "yuno_role", "yuno_name")


def command_params(kw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{command: {param: type}} from a `help` table answer (its Parameters column)."""
    out: dict[str, dict[str, str]] = {}
    data = kw.get("data")
    if isinstance(data, list):
        for row in data:
            if isinstance(row, dict) and isinstance(row.get("command"), str):
                params = row.get("parameters")
                text = params if isinstance(params, str) else ""
                out[row["command"]] = dict(_PARAM_RE.findall(text))
    return out


def _tree_names(node: Any) -> set[str]:
    if not _is_tree(node):
        return set()
    names = {str(node["name"])}
    for child in node.get("children") or []:
        names |= _tree_names(child)
    return names


class Completer:
    """Tab completion: command names first; then the command's parameter names (`key=`);
    after `key=` its values: `command=` the target's commands, `service=`/`gobj=` the known
    gobj names, `id=`/`yuno_role=`/`yuno_name=` the agent's yunos, a bool true/false.
    Values are asked of the agent (`fetch`, bounded) the first time they are needed."""

    def __init__(self, help_kw: dict[str, Any], fetch: Callable[[str], dict[str, Any] | None]):
        self.params = command_params(help_kw)
        self.names = sorted(set(extract_command_names(help_kw)) | set(LOCAL_COMMANDS))
        self.fetch = fetch
        self.cache: dict[str, list[str]] = {}
        self.matches: list[str] = []

    def _values(self, kind: str) -> list[str]:
        if kind in self.cache:
            return self.cache[kind]
        values: set[str] = set()
        if kind == "yuno_commands":
            for entry in self._data("command-yuno command=help service=__yuno__", list):
                values |= set(command_params(entry).keys()) if isinstance(entry, dict) else set()
        elif kind == "gobjs":
            values = {"__yuno__", "__default_service__"}
            values |= _tree_names(self._data("view-gobj-tree", dict))
            for entry in self._data("command-yuno command=view-gobj-tree service=__yuno__", list):
                values |= _tree_names(entry.get("data") if isinstance(entry, dict) else None)
        elif kind in _YUNO_PARAMS:
            for row in self._data("list-yunos", list):
                if isinstance(row, dict) and row.get(kind):
                    values.add(str(row[kind]))
        self.cache[kind] = sorted(values)
        return self.cache[kind]

    def _data(self, line: str, kind: type) -> Any:
        kw = self.fetch(line) or {}
        data = kw.get("data")
        return data if isinstance(data, kind) else kind()

    def candidates(self, before: str, text: str) -> list[str]:
        """Completions of `text`, the word ending at the cursor; `before` is the line up to it."""
        segment = re.split(r";", before)[-1]
        prefix = text[: len(text) - len(text.lstrip("-"))]
        words = segment.lstrip(" \t-").split()
        if len(words) == 0 or (len(words) == 1 and not segment.endswith((" ", "\t"))):
            word = text.lstrip("-")
            return [f"{prefix}{n} " for n in self.names if n.startswith(word)]
        command = words[0]
        params = self.params.get(command, {})
        if "=" in text:
            key, _, value = text.partition("=")
            if key == "command":
                kind = "yuno_commands" if command == "command-yuno" else "agent_commands"
                choices = list(self.params) if kind == "agent_commands" else self._values(kind)
            elif params.get(key) == "bool":
                choices = ["true", "false"]
            elif key in _YUNO_PARAMS:
                choices = self._values(key)
            elif key in _NAME_PARAMS:
                choices = self._values(_NAME_PARAMS[key])
            else:
                choices = []
            return [f"{key}={c} " for c in choices if c.startswith(value)]
        given = {w.split("=", 1)[0] for w in words[1:] if "=" in w}
        return [f"{p}=" for p in params if p.startswith(text) and p not in given]

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            before = readline.get_line_buffer()[: readline.get_endidx()]
            try:
                self.matches = self.candidates(before, text)
            except Exception:  # completion must never kill the shell
                self.matches = []
        return self.matches[state] if state < len(self.matches) else None


def _setup_readline(completer: Completer) -> Callable[[], None]:
    """History in ~/.ycommand_history and `completer` on tab; returns the history saver."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    readline.set_completer(completer.complete)
    readline.set_completer_delims(" \t;")
    readline.parse_and_bind("tab: complete")

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


async def _interactive(shell: Shell, opened: ievent.SessionOpened) -> int:
    assert shell.link is not None
    help_kw: dict[str, Any] = {}
    try:
        help_kw = (await shell.link.command("help")).kw
    except YcommandError:
        pass
    loop = asyncio.get_running_loop()
    link = shell.link

    def fetch(line: str) -> dict[str, Any] | None:
        # Called by readline in input()'s executor thread while the loop is idle.
        future = asyncio.run_coroutine_threadsafe(link.command(line), loop)
        try:
            return future.result(shell.opts.wait).kw
        except Exception:
            future.cancel()
            return None

    save_history = _setup_readline(Completer(help_kw, fetch))
    remote = opened.remote_yuno_role + (
        f"^{opened.remote_yuno_name}" if opened.remote_yuno_name else ""
    )
    shell.emit(f"Connected to '{remote}', url:'{shell.opts.url}'.")
    prompt = f"{remote}> "
    try:
        if shell.opts.command and await shell.run_line(shell.opts.command) == "exit":
            return shell.last_result & 0xFF
        while True:
            try:
                line = await loop.run_in_executor(None, input, prompt)
            except (EOFError, KeyboardInterrupt):
                shell.emit("")
                break
            except BrokenPipeError:  # the prompt could not be written
                shell.output_closed = True
                _discard_output(shell.out)
                raise OutputClosed from None
            try:
                if await shell.run_line(line) == "exit":
                    break
            except YcommandError as exc:
                print(f"ycommand: {exc}", file=sys.stderr)
                if shell.link.session.state == ievent.ST_CLOSED:
                    return EXIT_TRANSPORT
    finally:
        save_history()
    return shell.last_result & 0xFF


# ---------------------------------------------------------------------------
#   Entry point
# ---------------------------------------------------------------------------


def version_line(prog: str) -> str:
    from yuneta import __version__

    return f"{prog} (Yuneta for Python) {__version__}, Python {sys.version.split()[0]}"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (option letters as the C ycommand)."""
    p = argparse.ArgumentParser(
        prog="ycommand",
        description="Yuneta Command: send commands to a yuno (the agent).",
        epilog="Inside a line ';' chains commands; a leading '-' goes on after an error. "
        "Exit code: the last answer's result & 0xFF.",
    )
    p.add_argument("--version", action="version", version=version_line("ycommand"))
    p.add_argument("-c", "--command", default="", help="command line to run")
    p.add_argument("-u", "--url", default=DEFAULT_URL, help=f"URL (default {DEFAULT_URL})")
    p.add_argument(
        "-O",
        "--yuno_role",
        "--yuno-role",
        dest="yuno_role",
        default=DEFAULT_ROLE,
        help=f"remote yuno role (default {DEFAULT_ROLE})",
    )
    p.add_argument(
        "-o",
        "--yuno_name",
        "--yuno-name",
        dest="yuno_name",
        default="",
        help="remote yuno name (default any)",
    )
    p.add_argument(
        "-S",
        "--yuno_service",
        "--service",
        dest="service",
        default=DEFAULT_SERVICE,
        help=f"remote service (default {DEFAULT_SERVICE})",
    )
    p.add_argument(
        "-w",
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        help=f"seconds to wait for the connection, the ACK and each answer "
        f"(default {DEFAULT_WAIT:g})",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER,
        help="seconds to keep printing late answers after the last one "
        f"(default {DEFAULT_LINGER:g})",
    )
    p.add_argument("-i", "--interactive", action="store_true", help="interactive shell")
    p.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="print each answer as its raw JSON envelope, one per line",
    )
    p.add_argument(
        "-t",
        "--token",
        "-j",
        "--jwt",
        dest="token",
        default="",
        help="credential (JWT) put in the identity card",
    )
    p.add_argument(
        "--cafile",
        "--ssl-trusted-certificate",
        dest="cafile",
        default="",
        help="PEM CA file to verify a wss:// server",
    )
    p.add_argument(
        "--insecure",
        "--ssl-allow-insecure-client",
        dest="insecure",
        action="store_true",
        help="do not verify a wss:// server's certificate",
    )
    p.add_argument("words", nargs=argparse.REMAINDER, help="the command, when -c is not given")
    return p


def parse_options(argv: list[str] | None = None) -> Options:
    """Options from the command line (``words`` joined by spaces are the command)."""
    ns = build_parser().parse_args(argv)
    command = ns.command or " ".join(ns.words).strip()
    if ns.wait <= 0:
        raise YcommandError("-w must be a positive number of seconds", EXIT_USAGE)
    return Options(
        url=ns.url,
        command=command,
        yuno_role=ns.yuno_role,
        yuno_name=ns.yuno_name,
        service=ns.service,
        wait=ns.wait,
        linger=max(ns.linger, 0.0),
        interactive=ns.interactive,
        as_json=ns.as_json,
        token=ns.token,
        cafile=ns.cafile,
        insecure=ns.insecure,
    )


async def run(opts: Options) -> int:
    """Run ycommand with ``opts``; return the process exit code."""
    shell = Shell(opts)
    if not opts.interactive and not opts.command and sys.stdin.isatty():
        raise YcommandError("What command? (give -c CMD, words, -i, or lines on stdin)", EXIT_USAGE)
    opened = await shell.connect()
    try:
        if opts.interactive:
            return await _interactive(shell, opened)
        if opts.command:
            await shell.run_line(opts.command)
        else:
            # Lines piped on stdin: every line runs, a failure does not stop the next one
            # (as the C ycommand's stdin-pipe mode).
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                await shell.run_line(line.rstrip("\n"), stop_on_error=False)
        await shell.linger()
        return shell.last_result & 0xFF
    finally:
        await shell.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and exits with) the exit code."""
    try:
        opts = parse_options(argv)
        code = asyncio.run(run(opts))
    except YcommandError as exc:
        print(f"ycommand: {exc}", file=sys.stderr)
        code = exc.exit_code
    except OutputClosed:
        code = EXIT_OUTPUT_CLOSED
    except KeyboardInterrupt:
        code = 130
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_output(sys.stdout)
        code = EXIT_OUTPUT_CLOSED
    return code


if __name__ == "__main__":
    sys.exit(main())
