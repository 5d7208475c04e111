"""Inter-event protocol (sans-I/O): frames, identity cards, commands and their answers.

Yuneta yunos talk to each other (and `ycommand` to the agent) with *inter-events*: one compact
JSON object per WebSocket text message, ``{"event": NAME, "kw": {...}}``. Routing metadata
rides inside ``kw["__md_iev__"]``: ``__msg_type__`` and the ``ievent_gate_stack`` (a LIFO of
``{src_*, dst_*, user, host}`` records; an answer copies the request's ``__md_iev__`` and swaps
src/dst in the top record). This module holds that protocol and nothing else, in the style of
h11/wsproto: ``decode_frame``/``encode_frame``, the builders of each message, and two small
state machines, `ClientSession` and `ServerSession`, that are fed received text and return what
to send and what happened. Sockets live in the transport (`yuneta.ycommand`, the agent's
listener). The shapes follow the C framework (kernel/c/root-linux/src/msg_ievent.c,
c_ievent_cli.c, c_ievent_srv.c); docs/wire-protocol.md lists the facts and our decisions.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import yuneta.command
from yuneta.command import DEFAULT_SERVICE

__all__ = [
    "EV_IDENTITY_CARD",
    "EV_IDENTITY_CARD_ACK",
    "EV_MT_COMMAND",
    "EV_MT_COMMAND_ANSWER",
    "EV_MT_STATS",
    "EV_MT_STATS_ANSWER",
    "EV_GOODBYE",
    "IEVENT_STACK_ID",
    "COMMAND_STACK_ID",
    "MSG_ID_KEY",
    "DEFAULT_MAX_FRAME_SIZE",
    "ST_DISCONNECTED",
    "ST_WAIT_IDENTITY_CARD",
    "ST_WAIT_IDENTITY_CARD_ACK",
    "ST_SESSION",
    "ST_CLOSED",
    "FrameError",
    "LocalProtocolError",
    "Frame",
    "Gate",
    "decode_frame",
    "encode_frame",
    "md_yuno",
    "build_identity_card",
    "check_identity_card",
    "validate_identity_card",
    "CARD_USER",
    "build_identity_card_ack",
    "build_command",
    "build_command_answer",
    "SendFrame",
    "Close",
    "IdentityAccepted",
    "IdentityRefused",
    "CommandRequest",
    "EventReceived",
    "ProtocolFault",
    "SessionOpened",
    "CommandAnswer",
    "AnswerDropped",
    "ServerSession",
    "ClientSession",
]

# Events of the protocol (names as in msg_ievent.c / c_ievent_srv.c).
EV_IDENTITY_CARD = "EV_IDENTITY_CARD"
EV_IDENTITY_CARD_ACK = "EV_IDENTITY_CARD_ACK"
EV_MT_COMMAND = "EV_MT_COMMAND"
EV_MT_COMMAND_ANSWER = "EV_MT_COMMAND_ANSWER"
EV_MT_STATS = "EV_MT_STATS"
EV_MT_STATS_ANSWER = "EV_MT_STATS_ANSWER"
EV_GOODBYE = "EV_GOODBYE"

IEVENT_STACK_ID = "ievent_gate_stack"
COMMAND_STACK_ID = "command_stack"
MSG_TYPE_IDENTITY = "__identity__"
MSG_TYPE_COMMAND = "__command__"
MSG_TYPE_STATS = "__stats__"
# Our addition: a correlation id inside __md_iev__. The C server deep-copies the request's
# __md_iev__ into the answer (msg_iev_set_back_metadata), so it comes back untouched.
MSG_ID_KEY = "msg_id"

DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
YUNETA_VERSION = "7.0.0-py"

ST_DISCONNECTED = "ST_DISCONNECTED"
ST_WAIT_IDENTITY_CARD = "ST_WAIT_IDENTITY_CARD"
ST_WAIT_IDENTITY_CARD_ACK = "ST_WAIT_IDENTITY_CARD_ACK"
ST_SESSION = "ST_SESSION"
ST_CLOSED = "ST_CLOSED"

# Keys of a command frame's kw that are metadata, not command parameters.
_METADATA_KEYS = frozenset(
    {
        "__command__",
        "__stats__",
        "__md_iev__",
        "__md_yuno__",
        "__temp__",
        "__username__",
        "__md_command__",
    }
)
_MAX_DEPTH = 256


class FrameError(ValueError):
    """A received frame is not a valid inter-event; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalProtocolError(RuntimeError):
    """The local side asked for something its session state does not allow."""


@dataclass(frozen=True)
class Frame:
    """One decoded inter-event: its event name and its kw (a dict)."""

    event: str
    kw: dict[str, Any]


# ---------------------------------------------------------------------------
#   Frames
# ---------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise FrameError(f"bad JSON: {name} is not JSON")


def _check_tree(obj: Any) -> None:
    """Reject lone surrogates (not encodable as UTF-8) and absurd nesting."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise FrameError("bad JSON: nested too deeply")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise FrameError("bad JSON: string with a lone surrogate") from None
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)


def decode_frame(data: str | bytes | bytearray, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> Frame:
    """Decode one received message into a `Frame`.

    Raises `FrameError` (and nothing else) when the message is larger than ``max_size`` bytes,
    not UTF-8, not JSON, not an object, lacks a non-empty string ``event`` or has a ``kw`` that
    is not an object. A missing ``kw`` is accepted as ``{}``.
    """
    if isinstance(data, (bytes, bytearray)):
        if len(data) > max_size:
            raise FrameError(f"frame too large: {len(data)} > {max_size} bytes")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"bad UTF-8 at byte {exc.start}") from None
    elif isinstance(data, str):
        if len(data) > max_size or len(data.encode("utf-8", "surrogatepass")) > max_size:
            raise FrameError(f"frame too large: more than {max_size} bytes")
        text = data
    else:
        raise FrameError(f"frame must be text or bytes, not {type(data).__name__}")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except FrameError:
        raise
    except RecursionError:
        raise FrameError("bad JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int digit limits
        raise FrameError(f"bad JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"frame is not a JSON object but {type(obj).__name__}")
    _check_tree(obj)
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise FrameError("frame without a non-empty string 'event'")
    kw = obj.get("kw", {})
    if not isinstance(kw, dict):
        raise FrameError(f"'kw' of {event} is not an object")
    return Frame(event, kw)


def encode_frame(event: str, kw: Mapping[str, Any] | None = None) -> str:
    """Serialize one inter-event as compact JSON text (``{"event":..,"kw":{..}}``)."""
    if not isinstance(event, str) or not event:
        raise ValueError("event must be a non-empty string")
    return json.dumps(
        {"event": event, "kw": dict(kw or {})},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


# ---------------------------------------------------------------------------
#   Routing records
# ---------------------------------------------------------------------------


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Gate:
    """One record of ``__md_iev__.ievent_gate_stack``: who sends, to whom, as which user."""

    src_yuno: str = ""
    src_role: str = ""
    src_service: str = ""
    dst_yuno: str = ""
    dst_role: str = ""
    dst_service: str = ""
    user: str = ""
    host: str = ""

    def to_dict(self) -> dict[str, str]:
        """The record as the wire carries it (C key order: dst_*, src_*, user, host)."""
        return {
            "dst_yuno": self.dst_yuno,
            "dst_role": self.dst_role,
            "dst_service": self.dst_service,
            "src_yuno": self.src_yuno,
            "src_role": self.src_role,
            "src_service": self.src_service,
            "user": self.user,
            "host": self.host,
        }

    @classmethod
    def from_dict(cls, record: Any) -> Gate:
        """Read a record leniently: missing or non-string fields become ``""``."""
        if not isinstance(record, Mapping):
            return cls()
        return cls(**{name: _str(record.get(name)) for name in cls.__dataclass_fields__})

    def reversed(self, my_yuno: str, my_role: str, my_service: str) -> Gate:
        """The answer's record: dst = the old src, src = me (msg_iev_reverse_dst)."""
        return Gate(
            src_yuno=my_yuno,
            src_role=my_role,
            src_service=my_service,
            dst_yuno=self.src_yuno,
            dst_role=self.src_role,
            dst_service=self.src_service,
            user=self.user,
            host=self.host,
        )


def _top_gate(kw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The top ``ievent_gate_stack`` record of kw, if kw carries one."""
    md = kw.get("__md_iev__")
    if not isinstance(md, Mapping):
        return None
    stack = md.get(IEVENT_STACK_ID)
    if not isinstance(stack, list) or not stack or not isinstance(stack[0], dict):
        return None
    return stack[0]


def md_yuno(realm_name: str, yuno_role: str, yuno_name: str, yuno_id: str) -> dict[str, str]:
    """The ``__md_yuno__`` block a yuno puts in its answers."""
    return {
        "realm_name": realm_name,
        "yuno_role": yuno_role,
        "yuno_name": yuno_name,
        "yuno_id": yuno_id,
    }


def _set_back_metadata(
    request_kw: Mapping[str, Any],
    response: dict[str, Any],
    md: Mapping[str, Any],
    me: tuple[str, str, str],
    default_gate: Gate | None,
) -> dict[str, Any]:
    """Copy the request's ``__md_iev__`` into response, reversed, plus ``__md_yuno__``.

    ``me`` is (yuno, role, service) of the answering side: the new src of the top gate.
    """
    md_iev = request_kw.get("__md_iev__")
    md_iev = copy.deepcopy(dict(md_iev)) if isinstance(md_iev, Mapping) else {}
    stack = md_iev.get(IEVENT_STACK_ID)
    if isinstance(stack, list) and stack and isinstance(stack[0], dict):
        top = stack[0]
        request_gate = Gate.from_dict(top)
    else:
        top = None
        request_gate = default_gate or Gate()
    answer_gate = request_gate.reversed(*me).to_dict()
    if top is not None:
        top.update(answer_gate)  # keep any extra keys the sender put in its record
    else:
        md_iev[IEVENT_STACK_ID] = [answer_gate]
    response["__md_iev__"] = md_iev
    response["__md_yuno__"] = dict(md)
    response.pop("__temp__", None)
    return response


# ---------------------------------------------------------------------------
#   Identity card
# ---------------------------------------------------------------------------


def build_identity_card(
    src_yuno: str,
    src_role: str,
    src_service: str,
    dst_yuno: str,
    dst_role: str,
    dst_service: str,
    user: str,
    host: str,
    pid: int,
    jwt: str | None = None,
    *,
    yuno_id: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """kw of an EV_IDENTITY_CARD as the C client sends it (c_ievent_cli.c send_identity_card).

    The routing (src/dst role, name, service, user, host) travels in ``__md_iev__`` as the
    single gate record; the yuno's own data (``yuno_role``, ``yuno_name``, ``pid``, ``jwt``,
    ``username``...) at the top level. ``extra`` adds keys without overriding these.
    """
    card: dict[str, Any] = {
        "yuno_role": src_role,
        "yuno_id": yuno_id,
        "yuno_name": src_yuno,
        "yuno_tag": "",
        "yuno_version": "",
        "yuno_release": "",
        "yuneta_version": YUNETA_VERSION,
        "playing": False,
        "pid": int(pid),
        "watcher_pid": 0,
        "jwt": jwt or "",
        "username": user,
        "launch_id": 0,
        "yuno_startdate": "",
        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, host or "localhost")),
        "required_services": [],
    }
    for key, value in (extra or {}).items():
        card.setdefault(key, value)
    gate = Gate(
        src_yuno=src_yuno,
        src_role=src_role,
        src_service=src_service,
        dst_yuno=dst_yuno,
        dst_role=dst_role,
        dst_service=dst_service,
        user=user,
        host=host,
    )
    card["__md_iev__"] = {IEVENT_STACK_ID: [gate.to_dict()], "__msg_type__": MSG_TYPE_IDENTITY}
    return card


def card_gate(kw: Mapping[str, Any]) -> Gate | None:
    """The client's routing record of an identity card.

    Read from ``__md_iev__.ievent_gate_stack[0]`` (the C wire form); a card without a stack
    may carry the same fields flat at the top level (``src_role``, ``dst_role``...).
    """
    top = _top_gate(kw)
    if top is not None:
        return Gate.from_dict(top)
    if any(isinstance(kw.get(k), str) for k in ("src_role", "dst_role")):
        gate = Gate.from_dict(kw)
        if not gate.user:
            gate = Gate(**{**gate.__dict__, "user": _str(kw.get("username"))})
        return gate
    return None


ServicesLookup = Callable[[str], bool] | Collection[str]
AuthHook = Callable[[Mapping[str, Any]], tuple[int, str]]

#: The ``user`` our ycommand and yunos put in identity cards, as the C tools always do (the C
#: agent refuses any other user without a JWT). It is a claim, never trusted: our agent
#: identifies a local peer from the kernel (`yuneta.peercred`).
CARD_USER = "yuneta"

# Limits of an identity card's fields, checked before anything in it is used or stored.
MAX_NAME = 128  # roles, names, ids, services, user, host
MAX_TEXT = 4096  # any other string (versions, dates, config paths)
MAX_JWT = 16384
MAX_LIST = 64  # config_files, required_services
_NAME_FIELDS = ("yuno_role", "yuno_name", "yuno_id", "yuno_tag", "username")
_TEXT_FIELDS = (
    "yuno_version",
    "yuno_release",
    "yuneta_version",
    "yuno_startdate",
    "id",
    "yuno_secret",
)
_INT_FIELDS = ("watcher_pid", "launch_id")
_LIST_FIELDS = ("config_files", "required_services")
_YUNO_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_string(where: str, value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"'{where}' must be a string, not {type(value).__name__}"
    if len(value) > limit:
        return f"'{where}' is longer than {limit} characters"
    return None


def validate_identity_card(kw: Mapping[str, Any]) -> str | None:
    """Why an identity card is malformed, or None when every field has its type and size.

    Runs before any other check and before anything of the card is stored: ``pid`` a
    positive int; names (role, name, id, user, the gate record) strings of at most
    ``MAX_NAME`` characters; other strings at most ``MAX_TEXT``; lists of at most
    ``MAX_LIST`` such strings; a non-empty ``yuno_id`` made of letters, digits, ``_ . -``
    (it names files of the agent). Missing optional fields are fine. Never raises.
    """
    if "pid" in kw and (not _is_int(kw["pid"]) or kw["pid"] <= 0):
        return f"'pid' must be a positive integer, not {kw['pid']!r:.40}"
    for name in _INT_FIELDS:
        if name in kw and not _is_int(kw[name]):
            return f"'{name}' must be an integer, not {type(kw[name]).__name__}"
    if "playing" in kw and not isinstance(kw["playing"], (bool, int)):
        return f"'playing' must be a boolean, not {type(kw['playing']).__name__}"
    limits = {**dict.fromkeys(_NAME_FIELDS, MAX_NAME), **dict.fromkeys(_TEXT_FIELDS, MAX_TEXT)}
    for name, limit in {**limits, "jwt": MAX_JWT}.items():
        if name in kw and (reason := _bad_string(name, kw[name], limit)):
            return reason
    yuno_id = kw.get("yuno_id", "")
    if yuno_id and (yuno_id[0] == "." or not set(yuno_id) <= _YUNO_ID_CHARS):
        return "'yuno_id' may only hold letters, digits, '_', '.', '-' and not start with '.'"
    for name in _LIST_FIELDS:
        if name not in kw:
            continue
        items = kw[name]
        if not isinstance(items, list) or len(items) > MAX_LIST:
            return f"'{name}' must be a list of at most {MAX_LIST} strings"
        for i, item in enumerate(items):
            if reason := _bad_string(f"{name}[{i}]", item, MAX_TEXT):
                return reason
    md = kw.get("__md_iev__")
    if md is not None:
        if not isinstance(md, Mapping):
            return "'__md_iev__' must be an object"
        stack = md.get(IEVENT_STACK_ID)
        if stack is not None:
            if not isinstance(stack, list) or not 1 <= len(stack) <= MAX_LIST:
                return f"'{IEVENT_STACK_ID}' must be a list of 1 to {MAX_LIST} records"
            if not isinstance(stack[0], Mapping):
                return f"'{IEVENT_STACK_ID}[0]' must be an object"
            for name in Gate.__dataclass_fields__:
                # The C ycommand names its src_service after the agent's URL: a text.
                limit = MAX_TEXT if name == "src_service" else MAX_NAME
                value = stack[0].get(name, "")
                if reason := _bad_string(f"{IEVENT_STACK_ID}[0].{name}", value, limit):
                    return reason
    for name in Gate.__dataclass_fields__:  # the flat form (no stack)
        if name in kw and (reason := _bad_string(name, kw[name], MAX_NAME)):
            return reason
    return None


def _has_service(services: ServicesLookup, name: str) -> bool:
    if callable(services):
        return bool(services(name))
    wanted = name.casefold()
    return any(isinstance(s, str) and s.casefold() == wanted for s in services)


def check_identity_card(
    kw: Mapping[str, Any],
    *,
    my_role: str,
    my_name: str = "",
    services: ServicesLookup,
    auth: AuthHook | None = None,
) -> tuple[int, str]:
    """Decide on an identity card as c_ievent_srv.c ac_identity_card does; never raises.

    Checks in order: a routing record exists; ``dst_role`` equals ``my_role`` (case-insensitive,
    required); ``dst_yuno``, when given, equals ``my_name``; ``src_role`` and ``src_service``
    are not empty; ``dst_service`` exists (``services`` is a predicate or a collection of
    names, compared case-insensitively); then ``auth(kw)`` returns ``(result, comment)``
    (it sees ``jwt``). Returns ``(0, comment)`` or ``(negative, reason)``.
    """
    malformed = validate_identity_card(kw)
    if malformed is not None:
        return -1, f"Identity card refused: {malformed}"
    gate = card_gate(kw)
    if gate is None:
        return -1, "Identity card without ievent_gate_stack"
    if gate.dst_role.casefold() != my_role.casefold():
        return -1, f"Identity card refused: dst_role '{gate.dst_role}' is not my role '{my_role}'"
    if gate.dst_yuno and gate.dst_yuno.casefold() != my_name.casefold():
        return -1, f"Identity card refused: dst_yuno '{gate.dst_yuno}' is not my name '{my_name}'"
    if not gate.src_role:
        return -1, "Identity card refused: without yuno role (src_role)"
    if not gate.src_service:
        return -1, "Identity card refused: without yuno service (src_service)"
    try:
        found = _has_service(services, gate.dst_service)
    except Exception as exc:  # a broken lookup must not break the session
        return -1, f"Identity card refused: service lookup failed: {exc}"
    if not found:
        return -1, f"Identity card refused: service '{gate.dst_service}' not found in this yuno"
    if auth is None:
        return 0, "Identity card accepted"
    try:
        outcome = auth(kw)
        result, comment = int(outcome[0]), str(outcome[1])
    except Exception as exc:
        return -1, f"Authentication failed: {exc}"
    if result < 0:
        return result, comment or "Authentication failed"
    return result, comment or "Identity card accepted"


def build_identity_card_ack(
    result: int,
    comment: str,
    card_kw: Mapping[str, Any],
    my_yuno: str,
    my_role: str,
    my_service: str,
    md_yuno: Mapping[str, Any],
) -> dict[str, Any]:
    """kw of the EV_IDENTITY_CARD_ACK answering ``card_kw``.

    As c_authz.c + msg_iev_set_back_metadata: ``result``, ``comment``, ``username``,
    ``dst_service``, ``services_roles``, then the card's ``__md_iev__`` with its top gate
    reversed (src = this server: ``my_yuno``/``my_role``/``my_service``; dst = the client) and
    ``__md_yuno__`` = ``md_yuno``.
    """
    gate = card_gate(card_kw) or Gate()
    ack: dict[str, Any] = {
        "result": int(result),
        "comment": comment if comment or result >= 0 else "(see log)",
        "username": gate.user or _str(card_kw.get("username")),
        "dst_service": gate.dst_service,
        "services_roles": {gate.dst_service: []} if result >= 0 else {},
    }
    return _set_back_metadata(card_kw, ack, md_yuno, (my_yuno, my_role, my_service), gate)


# ---------------------------------------------------------------------------
#   Commands
# ---------------------------------------------------------------------------


def build_command(
    command_line: str,
    kw: Mapping[str, Any] | None,
    gate: Gate | Mapping[str, Any],
    *,
    msg_id: int | str | None = None,
) -> dict[str, Any]:
    """kw of an EV_MT_COMMAND (c_ievent_cli.c mt_command).

    The command's extra parameters (``kw``) are top-level keys of the frame's kw, next to
    ``__command__`` (the whole command line); ``__md_iev__`` carries ``__msg_type__``
    ``"__command__"``, the ``ievent_gate_stack`` with ``gate`` and the C's
    ``command_stack`` record. ``msg_id`` (ours) is echoed back by any answering server.
    """
    record = gate.to_dict() if isinstance(gate, Gate) else Gate.from_dict(gate).to_dict()
    frame_kw: dict[str, Any] = {k: v for k, v in (kw or {}).items() if k not in _METADATA_KEYS}
    md_iev: dict[str, Any] = {
        COMMAND_STACK_ID: [{"command": command_line, "kw": {}}],
        IEVENT_STACK_ID: [record],
        "__msg_type__": MSG_TYPE_COMMAND,
    }
    if msg_id is not None:
        md_iev[MSG_ID_KEY] = msg_id
    frame_kw["__command__"] = command_line
    frame_kw["__md_iev__"] = md_iev
    return frame_kw


def build_command_answer(
    envelope: Mapping[str, Any],
    request_kw: Mapping[str, Any],
    md_yuno: Mapping[str, Any],
    *,
    my_service: str = "",
    default_gate: Gate | None = None,
) -> dict[str, Any]:
    """kw of the EV_MT_COMMAND_ANSWER to ``request_kw`` (msg_iev_build_response).

    The envelope (normalized: int ``result``, str ``comment``, ``schema``, ``data``; other keys
    kept) plus a deep copy of the request's ``__md_iev__`` whose top gate is reversed: src =
    this yuno (``md_yuno`` name/role, ``my_service``), dst = the caller, so ``dst_role`` is the
    caller's role. A request without a stack (``__command__`` only) gets ``default_gate`` as its
    request record. ``__md_yuno__`` = ``md_yuno``.
    """
    raw_result = envelope.get("result", -1)
    result = raw_result if isinstance(raw_result, int) and not isinstance(raw_result, bool) else -1
    comment = envelope.get("comment")
    answer = {k: v for k, v in envelope.items() if k not in ("__md_iev__", "__md_yuno__")}
    answer.update(
        yuneta.command.envelope(
            result,
            comment if isinstance(comment, str) else "",
            envelope.get("schema"),
            envelope.get("data"),
        )
    )
    me = (_str(md_yuno.get("yuno_name")), _str(md_yuno.get("yuno_role")), my_service)
    return _set_back_metadata(request_kw, answer, md_yuno, me, default_gate)


# ---------------------------------------------------------------------------
#   What the sessions return
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SendFrame:
    """Send this inter-event to the peer."""

    event: str
    kw: dict[str, Any]

    @property
    def text(self) -> str:
        """The frame as compact JSON text, ready for a WebSocket text message."""
        return encode_frame(self.event, self.kw)


@dataclass(frozen=True)
class Close:
    """Close the connection (after sending what came before)."""

    reason: str


@dataclass(frozen=True)
class IdentityAccepted:
    """Server side: the client identified itself; the session is open."""

    client: Gate
    card: dict[str, Any]


@dataclass(frozen=True)
class IdentityRefused:
    """Server side: an identity card was refused (a negative ACK was sent)."""

    result: int
    comment: str
    card: dict[str, Any]


@dataclass(frozen=True)
class CommandRequest:
    """Server side: run ``command`` on ``service`` and answer with `ServerSession.answer`.

    ``kw`` holds the parameters beyond the command line (metadata and the routing ``service``
    key stripped); ``request_kw`` is the frame's kw as received, needed to build the answer.
    """

    command: str
    kw: dict[str, Any]
    service: str
    gate: Gate
    request_kw: dict[str, Any]
    answer_event: str = EV_MT_COMMAND_ANSWER


@dataclass(frozen=True)
class EventReceived:
    """Any other inter-event received in session (subscriptions, injected events...)."""

    event: str
    kw: dict[str, Any]


@dataclass(frozen=True)
class ProtocolFault:
    """A received message was not understood; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class SessionOpened:
    """Client side: positive EV_IDENTITY_CARD_ACK; the peer's confirmed identity."""

    remote_yuno_role: str
    remote_yuno_name: str
    remote_yuno_service: str
    kw: dict[str, Any]


@dataclass(frozen=True)
class CommandAnswer:
    """Client side: an EV_MT_COMMAND_ANSWER (or _STATS_ANSWER) addressed to us."""

    result: int
    comment: str
    schema: Any
    data: Any
    msg_id: Any
    kw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class AnswerDropped:
    """Client side: an answer not for us (dst_role/dst_yuno mismatch), as the C client drops."""

    reason: str
    kw: dict[str, Any] = field(repr=False)


# ---------------------------------------------------------------------------
#   Server session
# ---------------------------------------------------------------------------


def _hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""


class ServerSession:
    """One accepted connection seen from the server (C_IEVENT_SRV), without the socket.

    States: ``ST_WAIT_IDENTITY_CARD`` -> ``ST_SESSION`` -> ``ST_CLOSED``. Feed each received
    message to `receive_data`; it returns `SendFrame`/`Close` actions for the transport and
    `IdentityAccepted`/`IdentityRefused`/`CommandRequest`/`EventReceived`/`ProtocolFault` for
    the application. It never raises on peer input. Unlike the C, nothing is dropped silently:
    before an accepted card every event gets a negative answer; a refused card gets a negative
    ACK and the session stays waiting (the transport applies its own idle timeout).
    """

    def __init__(
        self,
        *,
        yuno_role: str,
        yuno_name: str = "",
        yuno_id: str = "",
        realm_name: str = "",
        services: ServicesLookup,
        auth: AuthHook | None = None,
        channel_name: str = "ievent_srv",
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.yuno_role = yuno_role
        self.yuno_name = yuno_name
        self.services = services
        self.auth = auth
        self.channel_name = channel_name
        self.max_frame_size = max_frame_size
        self.md_yuno = md_yuno(realm_name, yuno_role, yuno_name, yuno_id)
        self.state = ST_WAIT_IDENTITY_CARD
        self.client: Gate | None = None
        self.identity_card: dict[str, Any] | None = None

    # -- public API ---------------------------------------------------------

    def receive_data(self, data: str | bytes | bytearray) -> list[Any]:
        """Process one received WebSocket message; return the actions and events it causes."""
        if self.state == ST_CLOSED:
            return []
        try:
            frame = decode_frame(data, self.max_frame_size)
        except FrameError as exc:
            return self._bad_frame(exc.reason)
        try:
            return self.receive_frame(frame)
        except Exception as exc:  # defensive: peer input must never raise out of here
            return self._bad_frame(f"internal error on {frame.event}: {exc!r}")

    def receive_frame(self, frame: Frame) -> list[Any]:
        """Process one decoded frame (see `receive_data`)."""
        if self.state == ST_CLOSED:
            return []
        if frame.event == EV_GOODBYE:
            self.state = ST_CLOSED
            return [Close("peer said goodbye")]
        if frame.event == EV_IDENTITY_CARD:
            return self._identity_card(frame.kw)
        if self.state != ST_SESSION:
            answer_event = (
                EV_MT_STATS_ANSWER if frame.event == EV_MT_STATS else EV_MT_COMMAND_ANSWER
            )
            envelope = yuneta.command.envelope(
                -1, f"Identity card required: only authenticated clients can send {frame.event}"
            )
            return [SendFrame(answer_event, self._answer_kw(envelope, frame.kw))]
        if frame.event in (EV_MT_COMMAND, EV_MT_STATS):
            return self._command(frame)
        return [EventReceived(frame.event, frame.kw)]

    def answer(self, request: CommandRequest, envelope: Mapping[str, Any]) -> SendFrame:
        """The frame answering ``request`` with ``envelope`` ({result, comment, schema, data})."""
        return SendFrame(request.answer_event, self._answer_kw(envelope, request.request_kw))

    def connection_lost(self) -> None:
        """The transport closed; later input is ignored."""
        self.state = ST_CLOSED

    # -- internals ----------------------------------------------------------

    def _default_gate(self) -> Gate:
        """Request record assumed for a command that carries no __md_iev__ of its own."""
        client = self.client or Gate()
        return Gate(
            src_yuno=client.src_yuno,
            src_role=client.src_role,
            src_service=client.src_service,
            dst_yuno=self.yuno_name,
            dst_role=self.yuno_role,
            dst_service=client.dst_service,
            user=client.user,
            host=client.host,
        )

    def _answer_kw(
        self, envelope: Mapping[str, Any], request_kw: Mapping[str, Any]
    ) -> dict[str, Any]:
        return build_command_answer(
            envelope,
            request_kw,
            self.md_yuno,
            my_service=self.channel_name,
            default_gate=self._default_gate(),
        )

    def _bad_frame(self, reason: str) -> list[Any]:
        envelope = yuneta.command.envelope(-1, f"Bad inter-event: {reason}")
        return [
            ProtocolFault(reason),
            SendFrame(EV_MT_COMMAND_ANSWER, self._answer_kw(envelope, {})),
        ]

    def _identity_card(self, kw: dict[str, Any]) -> list[Any]:
        result, comment = check_identity_card(
            kw,
            my_role=self.yuno_role,
            my_name=self.yuno_name,
            services=self.services,
            auth=self.auth,
        )
        ack = build_identity_card_ack(
            result, comment, kw, self.yuno_name, self.yuno_role, self.channel_name, self.md_yuno
        )
        if result < 0:
            return [SendFrame(EV_IDENTITY_CARD_ACK, ack), IdentityRefused(result, comment, kw)]
        self.client = card_gate(kw)
        self.identity_card = kw
        self.state = ST_SESSION
        return [SendFrame(EV_IDENTITY_CARD_ACK, ack), IdentityAccepted(self.client or Gate(), kw)]

    def _command(self, frame: Frame) -> list[Any]:
        kw = frame.kw
        is_stats = frame.event == EV_MT_STATS
        answer_event = EV_MT_STATS_ANSWER if is_stats else EV_MT_COMMAND_ANSWER

        def refuse(comment: str) -> list[Any]:
            envelope = yuneta.command.envelope(-1, comment)
            return [SendFrame(answer_event, self._answer_kw(envelope, kw))]

        top = _top_gate(kw)
        gate = Gate.from_dict(top) if top is not None else self._default_gate()
        if gate.dst_role and gate.dst_role.casefold() != self.yuno_role.casefold():
            return refuse(f"It's not my role: '{gate.dst_role}', I am '{self.yuno_role}'")
        if gate.dst_yuno and gate.dst_yuno.casefold() != self.yuno_name.casefold():
            return refuse(f"It's not my name: '{gate.dst_yuno}', I am '{self.yuno_name}'")

        command = kw.get("__stats__" if is_stats else "__command__")
        if not isinstance(command, str):
            md = kw.get("__md_iev__")
            stack = md.get(COMMAND_STACK_ID) if isinstance(md, Mapping) else None
            record = stack[0] if isinstance(stack, list) and stack else None
            command = record.get("command") if isinstance(record, Mapping) else None
        if not isinstance(command, str) or (not command.strip() and not is_stats):
            return refuse("What command?")

        service = kw.get("service")
        if not isinstance(service, str) or not service:
            service = (self.client.dst_service if self.client else "") or DEFAULT_SERVICE
        try:
            found = _has_service(self.services, service)
        except Exception as exc:
            return refuse(f"Service lookup failed: {exc}")
        if not found:
            return refuse(f"Service not found: '{service}'")
        # "service" in the frame's kw routes the command (as in C); it is not a parameter.
        params = {k: v for k, v in kw.items() if k not in _METADATA_KEYS and k != "service"}
        return [CommandRequest(command, params, service, gate, kw, answer_event)]


# ---------------------------------------------------------------------------
#   Client session
# ---------------------------------------------------------------------------


class ClientSession:
    """One connection seen from the client (C_IEVENT_CLI, as used by ycommand), socket-free.

    States: ``ST_DISCONNECTED`` -> (`connection_made`) ``ST_WAIT_IDENTITY_CARD_ACK`` ->
    ``ST_SESSION``; a negative ACK or `connection_lost` -> ``ST_CLOSED``. `receive_data`
    returns `SessionOpened`/`IdentityRefused`/`CommandAnswer`/`AnswerDropped`/
    `EventReceived`/`ProtocolFault`; it never raises on peer input.
    """

    def __init__(
        self,
        *,
        yuno_role: str = "ycommand",
        yuno_name: str = "",
        src_service: str = "ycommand",
        dst_role: str = "yuneta_agent",
        dst_yuno: str = "",
        dst_service: str = DEFAULT_SERVICE,
        user: str = CARD_USER,
        host: str | None = None,
        pid: int | None = None,
        jwt: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.yuno_role = yuno_role
        self.yuno_name = yuno_name
        self.src_service = src_service
        self.dst_role = dst_role
        self.dst_yuno = dst_yuno
        self.dst_service = dst_service
        self.user = user
        self.host = _hostname() if host is None else host
        self.pid = os.getpid() if pid is None else pid
        self.jwt = jwt
        self.max_frame_size = max_frame_size
        self.state = ST_DISCONNECTED
        self.remote: SessionOpened | None = None
        self._next_msg_id = 1

    def connection_made(self) -> SendFrame:
        """The transport is open: the identity card to send first."""
        if self.state != ST_DISCONNECTED:
            raise LocalProtocolError(f"connection_made() in {self.state}")
        self.state = ST_WAIT_IDENTITY_CARD_ACK
        card = build_identity_card(
            self.yuno_name,
            self.yuno_role,
            self.src_service,
            self.dst_yuno,
            self.dst_role,
            self.dst_service,
            self.user,
            self.host,
            self.pid,
            self.jwt,
        )
        return SendFrame(EV_IDENTITY_CARD, card)

    def send_command(
        self, command_line: str, kw: Mapping[str, Any] | None = None, service: str = ""
    ) -> tuple[int, SendFrame]:
        """A command frame and its msg_id; only in ST_SESSION.

        ``service`` overrides the session's dst_service for this command: it goes into the
        gate record and into ``kw["service"]``, which is what a C server routes on.
        """
        if self.state != ST_SESSION:
            raise LocalProtocolError(f"cannot send a command in {self.state}")
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        gate = Gate(
            src_yuno=self.yuno_name,
            src_role=self.yuno_role,
            src_service=self.src_service,
            dst_yuno=self.dst_yuno,
            dst_role=self.dst_role,
            dst_service=service or self.dst_service,
            user=self.user,
            host=self.host,
        )
        params = dict(kw or {})
        if service:
            params["service"] = service
        return msg_id, SendFrame(
            EV_MT_COMMAND, build_command(command_line, params, gate, msg_id=msg_id)
        )

    def connection_lost(self) -> None:
        """The transport closed."""
        self.state = ST_CLOSED

    def receive_data(self, data: str | bytes | bytearray) -> list[Any]:
        """Process one received WebSocket message; return the events it causes."""
        if self.state in (ST_CLOSED, ST_DISCONNECTED):
            return []
        try:
            frame = decode_frame(data, self.max_frame_size)
        except FrameError as exc:
            return [ProtocolFault(exc.reason)]
        try:
            return self._receive_frame(frame)
        except Exception as exc:  # defensive: peer input must never raise out of here
            return [ProtocolFault(f"internal error on {frame.event}: {exc!r}")]

    def _receive_frame(self, frame: Frame) -> list[Any]:
        kw = frame.kw
        if self.state == ST_WAIT_IDENTITY_CARD_ACK:
            if frame.event != EV_IDENTITY_CARD_ACK:
                return [ProtocolFault(f"{frame.event} before EV_IDENTITY_CARD_ACK")]
            result = kw.get("result", -1)
            if not isinstance(result, int) or isinstance(result, bool):
                result = -1
            refusal = kw.get("comment")
            if result < 0:
                self.state = ST_CLOSED
                return [IdentityRefused(result, refusal if isinstance(refusal, str) else "", kw)]
            gate = Gate.from_dict(_top_gate(kw))
            self.state = ST_SESSION
            self.remote = SessionOpened(gate.src_role, gate.src_yuno, gate.src_service, kw)
            return [self.remote]

        if frame.event in (EV_MT_COMMAND_ANSWER, EV_MT_STATS_ANSWER):
            gate = Gate.from_dict(_top_gate(kw))
            if gate.dst_role and gate.dst_role.casefold() != self.yuno_role.casefold():
                return [AnswerDropped(f"It's not my role: '{gate.dst_role}'", kw)]
            if gate.dst_yuno and gate.dst_yuno.casefold() != self.yuno_name.casefold():
                return [AnswerDropped(f"It's not my name: '{gate.dst_yuno}'", kw)]
            result = kw.get("result", -1)
            if not isinstance(result, int) or isinstance(result, bool):
                result = -1
            comment = kw.get("comment")
            md = kw.get("__md_iev__")
            msg_id = md.get(MSG_ID_KEY) if isinstance(md, Mapping) else None
            return [
                CommandAnswer(
                    result,
                    comment if isinstance(comment, str) else "",
                    kw.get("schema"),
                    kw.get("data"),
                    msg_id,
                    kw,
                )
            ]
        return [EventReceived(frame.event, kw)]
