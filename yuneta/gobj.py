"""gobjs: pykka actors running a transitions machine built from their gclass's table.

Threading model
---------------
* Every gobj owns one pykka `ThreadingActor` (one OS thread). Its FSM actions, commands,
  attribute writes and `mt_*` methods run on that thread, one message at a time, so a
  gclass's code never needs a lock for its own state.
* Calls from another thread are messages: `send_event` is a `tell` (asynchronous, returns
  None), `ask_event`, `command`, `write_attr`, `start`/`stop`/`play`/`pause` are `ask`s
  that wait for the answer. A call made on the gobj's own thread runs inline, like the
  original's synchronous `gobj_send_event`, so an action may command itself.
* Network I/O does not run on actors: the yuno's I/O loop thread (`yuneta.netio`) owns
  every socket; connections are light objects there and report to their listener gobj
  with `send_event` (a `tell`) or by updating plain counters of their own.

The thread rule: code off a gobj's actor (the I/O loop, a worker, another gobj) only posts
events to it or calls its thread-safe API (`send_event`, `ask_event`, `command`,
`read_attr`, `write_attr`, `public_attrs`, life cycle, `mt_stats`); only the actor writes
`attrs`. `mt_stats` returns live values and writes nothing, so any thread may call it. With
`YUNETA_CHECK_THREADS=1` in the environment (the tests set it), `attrs` checks the rule on
every write and raises ThreadRuleError; off, `attrs` is a plain dict and costs nothing.
* Actors are for long-lived gobjs only (yuno, services, listeners, timers, channels);
  never one per connection.

An event with no row in the current state is logged and ignored. An exception in an
action or command is logged with the gobj's full name; the actor keeps running.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast, overload

import pykka
from transitions import Machine

from yuneta.command import build_kw, envelope, error_envelope, split_command, then
from yuneta.errors import AttrError, CommandError, GClassError, ParseError, ThreadRuleError
from yuneta.gclass import Attr, Command, Flag, GClassDef, Param, coerce
from yuneta.log import log

if TYPE_CHECKING:
    from yuneta.runtime import YunoRuntime

ASK_TIMEOUT = 60.0

#: Commands every gobj answers, besides those of its gclass.
BUILTIN_COMMANDS: tuple[Command, ...] = (
    Command(
        "help",
        "cmd_help",
        (Param("str", "cmd", "", "A command to describe with its parameters and their types"),),
        "List the commands of this gobj with their parameters (help <command>: one in full)",
        ("h", "?"),
    ),
    Command(
        "view-attrs", "cmd_view_attrs", (), "View the public attributes of this gobj", ("attrs",)
    ),
    Command(
        "write-attr",
        "cmd_write_attr",
        (
            Param("str", "attr_name", None, "Attribute to write"),
            Param("json", "value", None, "New value (JSON for dict/list)"),
        ),
        "Write a writable attribute (runs the gclass's mt_writing)",
    ),
    Command(
        "view-gobj-tree",
        "cmd_view_gobj_tree",
        (Param("str", "attrs", "", "Comma-separated attributes to show for every gobj"),),
        "View the tree of gobjs below this one, with gclass, state and running flags",
        ("tree",),
    ),
)
_BUILTIN_INDEX = {alias: c for c in BUILTIN_COMMANDS for alias in (c.name, *c.aliases)}
_PUBLIC = Flag.RD | Flag.WR | Flag.STATS | Flag.RSTATS | Flag.PERSIST

#: The debug check of the thread rule (see the module's docstring); read once, at import.
CHECK_THREADS = os.environ.get("YUNETA_CHECK_THREADS", "") not in ("", "0")
#: Every violation the check raised, so that one raised inside a guard that logs and goes on
#: (an I/O loop callback, a posted call) still fails the test that caused it.
THREAD_RULE_VIOLATIONS: list[str] = []

_machines: dict[str, Machine] = {}
_machines_lock = threading.Lock()


def _machine_for(gdef: GClassDef) -> Machine:
    """One shared transitions Machine per gclass; each gobj is added as a model."""
    with _machines_lock:
        machine = _machines.get(gdef.name)
        if machine is None:
            machine = Machine(
                model=None,
                states=list(gdef.states),
                initial=gdef.initial_state,
                auto_transitions=False,
                ignore_invalid_triggers=True,
            )
            for state, rows in gdef.states.items():
                for event, _action, next_state in rows:
                    if next_state is not None and next_state != state:
                        machine.add_transition(event, state, next_state)
            _machines[gdef.name] = machine
        return machine


class _FsmModel:
    """The transitions model of one gobj: its `state` (and transitions' helpers) live here,
    so that transitions never adds methods to the gobj itself."""

    state: str
    trigger: Callable[[str], bool]  # added by transitions when the model is registered


class _CheckedAttrs(dict[str, Any]):
    """`attrs` when the thread-rule check is on: every write from a thread that is not the
    gobj's actor (once the actor runs, and while it lives) raises ThreadRuleError."""

    __slots__ = ("_gobj",)

    def __init__(self, gobj: GObj, values: dict[str, Any]) -> None:
        super().__init__(values)
        self._gobj = gobj

    def _check(self, key: object = "") -> None:
        actor = self._gobj._thread
        if actor is None or actor.ident == threading.get_ident() or not actor.is_alive():
            return
        problem = (
            f"{self._gobj.full_name}: attribute {key!r} written from thread "
            f"'{threading.current_thread().name}', not its actor '{actor.name}'"
        )
        THREAD_RULE_VIOLATIONS.append(problem)
        raise ThreadRuleError(problem)

    def __setitem__(self, key: str, value: Any) -> None:
        actor = self._gobj._thread  # the common case inline: a write on the actor itself
        if actor is not None and actor.ident != threading.get_ident():
            self._check(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._check(key)
        super().__delitem__(key)

    def __ior__(self, other: Any) -> _CheckedAttrs:  # type: ignore[override,misc]
        self._check()
        super().update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._check(", ".join(dict(*args, **kwargs)))
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return super().setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self._check(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._check()
        return super().popitem()

    def clear(self) -> None:
        self._check()
        super().clear()


class _GObjActor(pykka.ThreadingActor):
    """The actor behind a gobj: runs the closures the gobj sends it, on its own thread."""

    use_daemon_thread = True

    def __init__(self, gobj: GObj) -> None:
        super().__init__()
        self._gobj = gobj

    def on_start(self) -> None:
        self._gobj._thread = threading.current_thread()

    def on_receive(self, message: Any) -> Any:
        fn, args = message
        try:
            return ("ok", fn(*args))
        except BaseException as exc:  # returned to an asker; logged for a teller
            return ("err", exc)


class GObj:
    """A gobj. Subclasses declare `GCLASS` and implement actions, commands and `mt_*`."""

    GCLASS: ClassVar[GClassDef]

    def __init__(
        self,
        name: str,
        kw: dict[str, Any],
        parent: GObj | None,
        runtime: YunoRuntime | None,
    ) -> None:
        gdef = type(self).GCLASS
        self.gclass: GClassDef = gdef
        self.name = name
        self.parent = parent
        self.runtime = runtime
        self.children: list[GObj] = []
        attrs: dict[str, Any] = {a.name: _copy_default(a.default) for a in gdef.attrs}
        attrs.update(gdef.validate_kw(kw))
        for a in gdef.attrs:
            if Flag.REQUIRED in a.flags and attrs.get(a.name) in (None, "", [], {}):
                raise AttrError(gdef.name, a.name, f"required by gobj '{name}' but not given")
        type(self).mt_check_kw(attrs)
        self.attrs: dict[str, Any] = _CheckedAttrs(self, attrs) if CHECK_THREADS else attrs
        self.running = False
        self.playing = False
        self.destroyed = False
        self._subscriptions: list[tuple[str | None, GObj]] = []
        self._thread: threading.Thread | None = None
        self._fsm = _FsmModel()
        _machine_for(gdef).add_model(self._fsm, initial=gdef.initial_state)
        if runtime is not None:
            # Before the actor starts: from then on only the actor writes attrs.
            self.attrs.update(runtime.load_persistent(self))
        self._actor = _GObjActor.start(self)

    # ----- identity and tree -------------------------------------------------------

    @property
    def state(self) -> str:
        return self._fsm.state

    @property
    def full_name(self) -> str:
        """`GCLASS^name` of every ancestor and of this gobj, joined by a backquote."""
        parts = []
        node: GObj | None = self
        while node is not None:
            parts.append(f"{node.gclass.name}^{node.name}")
            node = node.parent
        return "`".join(reversed(parts))

    @property
    def yuno(self) -> GObj:
        node: GObj = self
        while node.parent is not None:
            node = node.parent
        return node

    def walk(self, order: str = "top_to_bottom") -> list[GObj]:
        """Every descendant (not self): parents before children, or children first."""
        out: list[GObj] = []

        def visit(g: GObj) -> None:
            for child in list(g.children):
                if order == "top_to_bottom":
                    out.append(child)
                    visit(child)
                else:
                    visit(child)
                    out.append(child)

        if order not in ("top_to_bottom", "bottom_to_top"):
            raise ValueError(f"walk order must be top_to_bottom or bottom_to_top, not {order!r}")
        visit(self)
        return out

    def find(self, name: str | None = None, gclass: str | None = None) -> list[GObj]:
        """Descendants matching a name and/or a gclass name, case-insensitive."""
        return [
            g
            for g in self.walk()
            if (name is None or g.name.lower() == name.lower())
            and (gclass is None or g.gclass.name.lower() == gclass.lower())
        ]

    def find_child(self, name: str) -> GObj | None:
        for child in self.children:
            if child.name.lower() == name.lower():
                return child
        return None

    # ----- thread plumbing ---------------------------------------------------------

    def _on_own_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float = ASK_TIMEOUT) -> Any:
        """Run fn(*args) on this gobj's thread and return its result (raising its error)."""
        if self._on_own_thread():
            return fn(*args)
        if not self._actor.is_alive():
            raise CommandError(f"{self.full_name}: gobj is destroyed")
        try:
            status, value = self._actor.ask((fn, args), timeout=timeout)
        except pykka.ActorDeadError:
            raise CommandError(f"{self.full_name}: gobj is destroyed") from None
        if status == "err":
            raise cast(BaseException, value)
        return value

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue fn(*args) on this gobj's thread without waiting; errors are logged."""

        def guarded(*a: Any) -> None:
            try:
                fn(*a)
            except Exception as exc:
                self.log_error(
                    "posted call failed",
                    call=getattr(fn, "__name__", str(fn)),
                    error=repr(exc),
                    exc_info=True,
                )

        try:
            self._actor.tell((guarded, args))
        except pykka.ActorDeadError:
            self.log("debug", "message to a destroyed gobj dropped")

    # ----- events ------------------------------------------------------------------

    def send_event(self, event: str, kw: dict | None = None, src: GObj | None = None) -> int | None:
        """Deliver `event` to this gobj: inline on its own thread (returns the action's
        result), otherwise queued (returns None)."""
        if self._on_own_thread():
            return self._dispatch(event, kw or {}, src)
        self._post(self._dispatch, event, kw or {}, src)
        return None

    def ask_event(self, event: str, kw: dict | None = None, src: GObj | None = None) -> int:
        """Deliver `event` and wait for the action's result (-1 when not accepted)."""
        return self._call(self._dispatch, event, kw or {}, src)

    def change_state(self, new_state: str) -> None:
        """Set the state from inside an action (as the original's gobj_change_state)."""
        if new_state not in self.gclass.states:
            raise GClassError(f"{self.gclass.name}: unknown state {new_state}")
        _machine_for(self.gclass).set_state(new_state, self._fsm)

    def _dispatch(self, event: str, kw: dict, src: GObj | None) -> int:
        if self.destroyed:
            return -1
        state = self.state
        row = self.gclass.row(state, event)
        if row is None:
            self.log(
                "warning",
                "event ignored: no row in the current state",
                event=event,
                state=state,
                src=src.full_name if src else "",
            )
            return -1
        _event, action, next_state = row
        if next_state is not None and next_state != state:
            self._fsm.trigger(event)
        if action is None:
            return 0
        try:
            result = getattr(self, action)(event, kw, src)
        except Exception as exc:
            self.log_error(
                "action failed",
                event=event,
                action=action,
                state=state,
                error=repr(exc),
                exc_info=True,
            )
            return -1
        return result if isinstance(result, int) else 0

    def subscribe_event(self, event: str | None, subscriber: GObj) -> None:
        """`subscriber` receives this gobj's published `event` (every event when None)."""
        if (event, subscriber) not in self._subscriptions:
            self._subscriptions.append((event, subscriber))

    def unsubscribe_event(self, event: str | None, subscriber: GObj) -> None:
        if (event, subscriber) in self._subscriptions:
            self._subscriptions.remove((event, subscriber))

    def publish_event(self, event: str, kw: dict | None = None) -> int:
        """Send `event` to every subscriber of it; returns how many received it."""
        n = 0
        for ev, subscriber in list(self._subscriptions):
            if ev is None or ev == event:
                if not subscriber.destroyed:
                    subscriber.send_event(event, dict(kw or {}), src=self)
                    n += 1
        return n

    # ----- attributes --------------------------------------------------------------

    def read_attr(self, name: str) -> Any:
        """An attribute's value from any thread; a STATS/RSTATS one live (`mt_stats`)."""
        if name not in self.attrs:
            raise AttrError(self.gclass.name, name, "unknown attribute")
        attr = self.gclass.attr_index[name]
        if attr.flags & (Flag.STATS | Flag.RSTATS):
            live = self.mt_stats()
            if name in live:
                return live[name]
        return self.attrs[name]

    def public_attrs(self, names: list[str] | None = None) -> dict[str, Any]:
        """The public attributes (or those of `names` that are public), counters live from
        `mt_stats`; from any thread: reads only. What view-attrs and view-gobj-tree show."""
        index = self.gclass.attr_index
        wanted = [a.name for a in self.gclass.attrs] if names is None else names
        live = self.mt_stats()
        return {
            n: live.get(n, self.attrs[n]) for n in wanted if n in index and index[n].flags & _PUBLIC
        }

    def write_attr(self, name: str, value: Any) -> None:
        """Write an attribute on this gobj's thread, then run `mt_writing(name)`.

        The value is coerced to the attribute's type. When `mt_writing` raises, the old
        value is restored and the error propagates. PERSIST attributes are saved.
        """
        self._call(self._write_attr, name, value)

    def _write_attr(self, name: str, value: Any) -> None:
        attr = self.gclass.attr_index.get(name)
        if attr is None:
            raise AttrError(self.gclass.name, name, "unknown attribute")
        try:
            new = coerce(attr.type, value)
        except ValueError as exc:
            raise AttrError(self.gclass.name, name, str(exc)) from None
        old = self.attrs.get(name)
        self.attrs[name] = new
        try:
            self.mt_writing(name)
        except Exception:
            self.attrs[name] = old
            raise
        if Flag.PERSIST in attr.flags and self.runtime is not None:
            self.runtime.save_persistent(self)

    def persistent_attrs(self) -> dict[str, Any]:
        return {a.name: self.attrs[a.name] for a in self.gclass.attrs if Flag.PERSIST in a.flags}

    # ----- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start this gobj (runs `mt_start`); starting a running gobj does nothing."""
        self._call(self._start)

    def _start(self) -> None:
        if not self.running:
            self.mt_start()
            self.running = True  # only once mt_start succeeded: a failed start is not running

    def stop(self) -> None:
        self._call(self._stop)

    def _stop(self) -> None:
        if self.playing:
            self._pause()
        if self.running:
            self.running = False
            self.mt_stop()

    def play(self) -> None:
        self._call(self._play)

    def _play(self) -> None:
        if not self.running:
            self._start()
        if not self.playing:
            self.playing = True
            self.mt_play()

    def pause(self) -> None:
        self._call(self._pause)

    def _pause(self) -> None:
        if self.playing:
            self.playing = False
            self.mt_pause()

    def start_tree(self) -> None:
        """Start this gobj and every descendant whose parent is running, top to bottom."""
        self.start()
        for child in self.walk("top_to_bottom"):
            if child.parent is not None and child.parent.running:
                child.start()

    def stop_tree(self) -> None:
        """Stop every descendant bottom-up, then this gobj."""
        for child in self.walk("bottom_to_top"):
            _quietly(child, child.stop)
        _quietly(self, self.stop)

    def destroy(self) -> None:
        """Stop and destroy the subtree bottom-up, and end the actors."""
        for child in self.walk("bottom_to_top"):
            child._destroy_one()
        self._destroy_one()

    def _destroy_one(self) -> None:
        if self.destroyed:
            return
        _quietly(self, self.stop)
        _quietly(self, lambda: self._call(self.mt_destroy))
        self.destroyed = True
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)
        if self.runtime is not None:
            self.runtime.unregister_service(self)
        _machine_for(self.gclass).remove_model(self._fsm)
        if not self._on_own_thread():
            self._actor.stop(block=True, timeout=ASK_TIMEOUT)
        else:
            self._actor.stop(block=False)

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        """Check a whole set of attribute values (defaults included) beyond their types, e.g.
        that a URL parses; raise AttrError. Runs when a config is loaded, before anything
        starts, and again at creation."""

    # Overridable hooks, all run on the gobj's thread.
    def mt_create(self) -> None:
        """Called once after creation, before any event."""

    def mt_start(self) -> None:
        """Called by start()."""

    def mt_stop(self) -> None:
        """Called by stop()."""

    def mt_play(self) -> None:
        """Called by play()."""

    def mt_pause(self) -> None:
        """Called by pause()."""

    def mt_destroy(self) -> None:
        """Called once before the actor ends."""

    def mt_writing(self, name: str) -> None:
        """Called after attribute `name` was written at run time; raise to refuse it."""

    def mt_stats(self) -> dict[str, Any]:
        """Live values of STATS/RSTATS attributes kept elsewhere (e.g. counters of the I/O
        loop), by name. Runs on any thread: plain reads only, it writes nothing (not even
        `attrs`); the kernel shows these values in place of the stored ones."""
        return {}

    # ----- commands ------------------------------------------------------------------

    def command(
        self,
        line: str,
        kw: dict | None = None,
        src: GObj | None = None,
        timeout: float = ASK_TIMEOUT,
    ) -> dict:
        """Run a command line (`cmd key=value ...`) plus typed `kw`; return its envelope.

        A handler that must wait (for other processes, the network) returns a
        `concurrent.futures.Future` of its envelope instead, which frees its actor at once;
        the caller waits here, at most `timeout` seconds. Never raises: every failure is
        an envelope with a negative result.
        """
        try:
            answer = self.submit_command(line, kw, src)
            if isinstance(answer, concurrent.futures.Future):
                answer = answer.result(timeout)
            return answer
        except concurrent.futures.TimeoutError:
            return envelope(-1, f"{self.name}: no answer within {timeout:g} s")
        except Exception as exc:
            return error_envelope(exc)

    def submit_command(
        self, line: str, kw: dict | None = None, src: GObj | None = None
    ) -> dict | concurrent.futures.Future:
        """`command` without the wait: the envelope, or a Future of it when the handler
        waits for something. A caller on an event loop awaits that Future instead of holding
        a thread for it (a command to a stopped yuno then costs a timer, not a thread)."""
        answer = self._call(self._command, line, dict(kw or {}), src)
        if isinstance(answer, concurrent.futures.Future):
            return then(answer, _normalize)
        return answer

    def find_command(self, name: str) -> Command | None:
        key = name.lower()
        return self.gclass.command_index.get(key) or _BUILTIN_INDEX.get(key)

    def _command(self, line: str, kw: dict, src: GObj | None) -> dict | concurrent.futures.Future:
        try:
            name, positional, pairs = split_command(line)
            cmd = self.find_command(name)
            if cmd is None:
                raise CommandError(
                    f"command '{name}' not available in '{self.name}' ({self.gclass.name})"
                )
            pairs.update(kw)
            typed = build_kw(cmd, positional, pairs)
            answer = getattr(self, cmd.handler)(cmd.name, typed, src)
        except (CommandError, AttrError) as exc:  # the operator's mistake: answered, no traceback
            return error_envelope(exc)
        except Exception as exc:
            self.log_error(
                "command failed", command=line.split(" ", 1)[0], error=repr(exc), exc_info=True
            )
            return error_envelope(exc)
        if isinstance(answer, concurrent.futures.Future):
            return answer
        return _normalize(answer)

    def commands(self) -> list[Command]:
        """The gclass's commands, then the built-in ones it does not redefine."""
        own = {c.name for c in self.gclass.commands}
        return [*self.gclass.commands, *(c for c in BUILTIN_COMMANDS if c.name not in own)]

    def cmd_help(self, cmd: str, kw: dict, src: GObj | None) -> dict:
        wanted = str(kw.get("cmd") or "").strip()
        if wanted:
            found = self.find_command(wanted)
            if found is None:
                raise CommandError(
                    f"command '{wanted}' not available in '{self.name}' ({self.gclass.name})"
                )
            return envelope(0, "", None, _command_help(found))
        rows = []
        for c in self.commands():
            params = " ".join(
                f"{p.name}=<{p.type}>"
                + (f" (default {p.default!r})" if p.default not in (None, "") else "")
                for p in c.params
            )
            rows.append(
                {
                    "command": c.name,
                    "aliases": ",".join(c.aliases),
                    "parameters": params + (" [key=value ...]" if c.wild else ""),
                    "description": c.description,
                }
            )
        # Columns as wide as their longest cell: help is read whole, never cut.
        schema = [
            {
                "id": key,
                "header": header,
                "fillspace": max([len(header)] + [len(r[key]) for r in rows]),
            }
            for key, header in (
                ("command", "Command"),
                ("aliases", "Aliases"),
                ("parameters", "Parameters"),
                ("description", "Description"),
            )
        ]
        return envelope(0, f"{len(rows)} commands of {self.gclass.name}^{self.name}", schema, rows)

    def cmd_view_attrs(self, cmd: str, kw: dict, src: GObj | None) -> dict:
        return envelope(0, "", None, self.public_attrs())

    def cmd_write_attr(self, cmd: str, kw: dict, src: GObj | None) -> dict:
        name = kw.get("attr_name") or ""
        attr: Attr | None = self.gclass.attr_index.get(name)
        if attr is None:
            raise CommandError(f"{self.gclass.name}: attribute '{name}' not found")
        if Flag.WR not in attr.flags:
            raise CommandError(f"{self.gclass.name}: attribute '{name}' is not writable")
        if "value" not in kw:
            raise ParseError("write-attr: parameter 'value' is required")
        self._write_attr(name, kw["value"])
        return envelope(0, f"{name} written", None, {name: self.attrs[name]})

    def cmd_view_gobj_tree(self, cmd: str, kw: dict, src: GObj | None) -> dict:
        wanted = [a.strip() for a in str(kw.get("attrs") or "").split(",") if a.strip()]
        return envelope(0, "", None, self.tree_node(wanted))

    def tree_node(self, wanted: list[str]) -> dict:
        """This gobj and its subtree as a dict (read from any thread: plain reads only)."""
        node: dict[str, Any] = {
            "gclass": self.gclass.name,
            "name": self.name,
            "full_name": self.full_name,
            "state": self.state,
            "running": self.running,
            "playing": self.playing,
        }
        attrs = self.public_attrs(wanted) if wanted else {}
        if attrs:
            node["attrs"] = attrs
        node["children"] = [c.tree_node(wanted) for c in list(self.children)]
        return node

    # ----- logging -------------------------------------------------------------------

    def log(self, level: str, msg: str, /, **fields: Any) -> None:
        log(level, self.full_name, msg, **fields)

    def log_error(self, msg: str, /, **fields: Any) -> None:
        log("error", self.full_name, msg, **fields)

    def __repr__(self) -> str:
        return f"<{self.full_name} {self.state}>"


def _command_help(c: Command) -> str:
    """One command in full: what it does, then each parameter with its type and default."""
    aliases = f" (aliases: {', '.join(c.aliases)})" if c.aliases else ""
    lines = [f"{c.name}{aliases}: {c.description}"]
    rows = [
        (
            f"{p.name}=<{p.type}>",
            p.description + (f" (default {p.default!r})" if p.default not in (None, "") else ""),
        )
        for p in c.params
    ]
    if c.wild:
        rows.append(("[key=value ...]", "any other parameter is passed on"))
    if rows:
        width = max(len(left) for left, _ in rows)
        lines.append("parameters:")
        lines += [f"  {left.ljust(width)}  {text}".rstrip() for left, text in rows]
    else:
        lines.append("parameters: none")
    return "\n".join(lines)


def _normalize(answer: Any) -> dict:
    """Any handler result as an envelope: None is success, a dict with `result` is completed,
    anything else becomes the data of a success."""
    if answer is None:
        return envelope(0)
    if isinstance(answer, dict) and "result" in answer:
        answer.setdefault("comment", "")
        answer.setdefault("schema", None)
        answer.setdefault("data", None)
        if answer["result"] < 0 and not answer["comment"]:
            answer["comment"] = "(see log)"
        return answer
    return envelope(0, "", None, answer)


def _copy_default(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        import copy

        return copy.deepcopy(value)
    return value


def _quietly(gobj: GObj, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:
        gobj.log_error("life-cycle call failed", error=repr(exc), exc_info=True)


G = TypeVar("G", bound=GObj)


@overload
def create_gobj(
    name: str,
    gclass: type[G],
    kw: dict | None = None,
    parent: GObj | None = None,
    runtime: YunoRuntime | None = None,
) -> G: ...


@overload
def create_gobj(
    name: str,
    gclass: str,
    kw: dict | None = None,
    parent: GObj | None = None,
    runtime: YunoRuntime | None = None,
) -> GObj: ...


def create_gobj(
    name: str,
    gclass: str | type[GObj],
    kw: dict | None = None,
    parent: GObj | None = None,
    runtime: YunoRuntime | None = None,
) -> GObj:
    """Create a gobj of `gclass` under `parent`, validate `kw` against its attribute table,
    restore its persistent attributes, start its actor and run `mt_create`."""
    from yuneta.gclass import find_gclass

    cls = find_gclass(gclass) if isinstance(gclass, str) else gclass
    if runtime is None and parent is not None:
        runtime = parent.runtime
    if parent is not None and parent.find_child(name) is not None:
        raise GClassError(f"{parent.full_name}: a child named '{name}' exists already")
    gobj = cls(name, dict(kw or {}), parent, runtime)
    if parent is not None:
        parent.children.append(gobj)
    try:
        gobj._call(gobj.mt_create)
    except Exception:
        gobj.destroy()
        raise
    return gobj
