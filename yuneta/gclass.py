"""gclass declarations: attributes, commands, events and the FSM as plain data.

Each `gclasses/c_*.py` opens with one `GClassDef` built from these tables, the way the
original C gclasses open with their `SDATA` tables. The kernel (`yuneta.gobj`) turns a
declaration into a pykka actor running a shared `transitions` machine. Attribute values
are validated and coerced here, so that config loading, `write-attr` and the command
parser all share one notion of "type".
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yuneta.errors import AttrError, GClassError

if TYPE_CHECKING:
    from yuneta.gobj import GObj


class Flag(enum.IntFlag):
    """Attribute flags, named as in the original (SDF_RD, SDF_WR, ...)."""

    NONE = 0
    RD = enum.auto()  # readable by commands (view-attrs)
    WR = enum.auto()  # writable at run time (write-attr)
    PERSIST = enum.auto()  # saved to the yuno's store, restored at restart
    STATS = enum.auto()  # a counter, resettable
    RSTATS = enum.auto()  # a read-only counter
    REQUIRED = enum.auto()  # must be given a non-empty value at creation


#: Attribute and parameter types, with the Python types a value may have.
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "real": (float, int),
    "dict": (dict,),
    "list": (list,),
    "json": (dict, list, str, int, float, bool, type(None)),
}

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _finite(number: float) -> float:
    # Infinity and NaN have no JSON form: an attribute holding one breaks every answer
    # that shows it.
    if not math.isfinite(number):
        raise ValueError(f"expected a finite real, got {number!r}")
    return number


def coerce(type_: str, value: Any, strict: bool = False) -> Any:
    """Return `value` as `type_`, converting strings from a command line.

    `strict` (configs, persisted values: already JSON-typed) converts nothing but an int
    to a real. Raises ValueError naming the expected type when the value does not fit.
    """
    if type_ not in TYPES:
        raise ValueError(f"unknown type '{type_}'")
    if strict:
        ok = isinstance(value, TYPES[type_]) and not (
            isinstance(value, bool) and type_ in ("int", "real")
        )
        if not ok:
            raise ValueError(f"expected {type_}, got {type(value).__name__} {_short(value)}")
        return _finite(float(value)) if type_ == "real" else value
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected bool, got {value!r}")
    if type_ == "int":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 0)
            except ValueError:
                pass
        raise ValueError(f"expected int, got {value!r}")
    if type_ == "real":
        if isinstance(value, bool):
            raise ValueError(f"expected real, got {value!r}")
        if isinstance(value, (int, float)):
            return _finite(float(value))
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
            else:
                return _finite(number)
        raise ValueError(f"expected real, got {value!r}")
    if type_ == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected str, got {type(value).__name__}")
    if type_ in ("dict", "list", "json"):
        if isinstance(value, str) and type_ != "json":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected {type_} (JSON), got {value!r}: {exc.msg}") from None
        if not isinstance(value, TYPES[type_]):
            raise ValueError(f"expected {type_}, got {type(value).__name__}")
        return value
    raise ValueError(f"unknown type '{type_}'")  # pragma: no cover - TYPES is closed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Attr:
    """One row of a gclass's attribute table."""

    type: str
    name: str
    flags: Flag
    default: Any
    description: str

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise GClassError(f"attribute '{self.name}': unknown type '{self.type}'")


@dataclass(frozen=True)
class Param:
    """One parameter of a command: name, type, default, description."""

    type: str
    name: str
    default: Any
    description: str


@dataclass(frozen=True)
class Command:
    """One row of a gclass's command table.

    `handler` names a method `(self, cmd, kw, src) -> dict | tuple | None` of the gclass.
    A `wild` command accepts keys its parameter table does not declare.
    """

    name: str
    handler: str
    params: tuple[Param, ...] = ()
    description: str = ""
    aliases: tuple[str, ...] = ()
    wild: bool = False


#: One FSM row: (event, action method name or None, next state or None).
Row = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class GClassDef:
    """The whole declaration of a gclass. The first state is the initial one.

    Checked when declared: every FSM row's event is one of `input_events` (a typo in a row
    would otherwise be an event silently never handled), one row per event and state, and
    every next state exists.
    """

    name: str
    attrs: tuple[Attr, ...]
    states: dict[str, tuple[Row, ...]]
    commands: tuple[Command, ...] = ()
    input_events: tuple[str, ...] = ()
    output_events: tuple[str, ...] = ()
    description: str = ""
    attr_index: dict[str, Attr] = field(init=False, repr=False, compare=False)
    command_index: dict[str, Command] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.states:
            raise GClassError(f"{self.name}: the FSM needs at least one state")
        attr_index = {a.name: a for a in self.attrs}
        if len(attr_index) != len(self.attrs):
            raise GClassError(f"{self.name}: duplicate attribute names")
        command_index: dict[str, Command] = {}
        for cmd in self.commands:
            for alias in (cmd.name, *cmd.aliases):
                command_index[alias.lower()] = cmd
        declared = set(self.input_events)
        for state, rows in self.states.items():
            seen: set[str] = set()
            for event, _action, next_state in rows:
                if event not in declared:
                    raise GClassError(
                        f"{self.name}: state {state}: event {event} is not among its input_events"
                    )
                if event in seen:
                    raise GClassError(f"{self.name}: state {state}: two rows for event {event}")
                seen.add(event)
                if next_state is not None and next_state not in self.states:
                    raise GClassError(
                        f"{self.name}: state {state}: event {event} goes to unknown state {next_state}"
                    )
        object.__setattr__(self, "attr_index", attr_index)
        object.__setattr__(self, "command_index", command_index)

    @property
    def initial_state(self) -> str:
        return next(iter(self.states))

    def row(self, state: str, event: str) -> Row | None:
        """The FSM row for `event` in `state`, or None when the state does not accept it."""
        for r in self.states.get(state, ()):
            if r[0] == event:
                return r
        return None

    def validate_kw(self, kw: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        """Return `kw` checked against the attribute table (types strict unless told);
        raise AttrError naming attribute and gclass."""
        out: dict[str, Any] = {}
        for key, value in kw.items():
            attr = self.attr_index.get(key)
            if attr is None:
                raise AttrError(self.name, key, "unknown attribute")
            try:
                out[key] = coerce(attr.type, value, strict)
            except ValueError as exc:
                raise AttrError(self.name, key, str(exc)) from None
        return out


_registry: dict[str, type[GObj]] = {}


def register_gclass(cls: type[GObj]) -> type[GObj]:
    """Class decorator: register a GObj subclass under its declaration's name."""
    gdef = getattr(cls, "GCLASS", None)
    if not isinstance(gdef, GClassDef):
        raise GClassError(f"{cls.__name__}: no GCLASS declaration")
    for _state, rows in gdef.states.items():
        for _event, action, _next in rows:
            if action is not None and not callable(getattr(cls, action, None)):
                raise GClassError(f"{gdef.name}: action '{action}' is not a method")
    for cmd in gdef.commands:
        if not callable(getattr(cls, cmd.handler, None)):
            raise GClassError(f"{gdef.name}: command '{cmd.name}' handler '{cmd.handler}' missing")
    _registry[gdef.name.upper()] = cls
    return cls


def find_gclass(name: str) -> type[GObj]:
    """Return the registered gclass `name` (case-insensitive) or raise GClassError.

    The kernel knows no gclass by itself: whoever runs it (the `yuneta` command line, a
    test) imports the modules that register theirs."""
    try:
        return _registry[name.upper()]
    except KeyError:
        raise GClassError(f"unknown gclass '{name}'") from None
