"""Yuno JSON configs: load, merge, substitute variables, validate.

Several files may be given; later ones are deep-merged over earlier ones (objects merge
key by key, anything else is replaced). `(^^name^^)` placeholders anywhere are replaced by
the values in `__json_config_variables__`: a string that is exactly one placeholder takes
the variable's value with its JSON type, otherwise the value is inserted as text.
Everything is checked before anything starts; a problem raises ConfigError naming the
file, the JSON path inside it and the problem.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from yuneta.errors import ConfigError, GClassError
from yuneta.gclass import GClassDef, find_gclass

TOP_KEYS = {"environment", "global", "yuno", "services", "__json_config_variables__"}
ENV_KEYS = {"work_dir", "store_dir", "log_dir", "log_handlers", "log_level"}
NODE_KEYS = {
    "name",
    "gclass",
    "kw",
    "children",
    "as_service",
    "default_service",
    "autostart",
    "autoplay",
    "disabled",
}
_VAR_RE = re.compile(r"\(\^\^([A-Za-z0-9_.\-]+)\^\^\)")
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # configs are hand-written: anything bigger is a mistake
MAX_DEPTH = 64  # deeper than any real gobj tree; bounds every recursive walk below
HANDLER_TYPES = ("stderr", "stdout", "file")
HANDLER_KEYS = {"handler_type", "filename", "level", "max_bytes", "backup_count"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Path = tuple[str | int, ...]


def fmt_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class ServiceNode:
    """One validated node of the `services` tree."""

    name: str
    gclass: str
    kw: dict[str, Any]
    children: list[ServiceNode] = field(default_factory=list)
    as_service: bool = False
    default_service: bool = False
    autostart: bool = True
    autoplay: bool = True
    # attr -> (file, JSON path) that set it, so a start failure blames the right file
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)

    def origin_error(self, attr: str, problem: str) -> ConfigError:
        file, path = self.origins.get(attr, ("<config>", f"services.{self.name}"))
        return ConfigError(file, path, problem)


@dataclass
class YunoConfig:
    """A loaded, merged and validated config."""

    files: list[str]
    environment: dict[str, Any]
    global_kw: dict[str, Any]
    yuno: dict[str, Any]
    services: list[ServiceNode]
    variables: dict[str, Any]
    raw: dict[str, Any]


class _Merger:
    """Deep merge that remembers which file set each path."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[Path, str] = {}
        self.var_sites: dict[Path, str] = {}  # path -> the variable substituted there

    def merge(self, data: dict[str, Any], file: str) -> None:
        self._merge_into(self.data, data, (), file)

    def _merge_into(self, dst: dict, src: dict, path: Path, file: str) -> None:
        for key, value in src.items():
            p = (*path, key)
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                self._merge_into(dst[key], value, p, file)
            else:
                dst[key] = copy.deepcopy(value)
                self._mark(value, p, file)

    def _mark(self, value: Any, path: Path, file: str) -> None:
        self.origin[path] = file
        if isinstance(value, dict):
            for k, v in value.items():
                self._mark(v, (*path, k), file)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._mark(v, (*path, i), file)

    def file_of(self, path: Path) -> str:
        for n in range(len(path), -1, -1):
            file = self.origin.get(path[:n])
            if file is not None:
                return file
        return next(iter(set(self.origin.values())), "<config>")

    def blame(self, path: Path) -> tuple[str, str]:
        """(file, path text) to name in an error about `path`: where a variable put the
        value, the file that set that variable (an override, typically), not the base."""
        for n in range(len(path), 0, -1):
            var = self.var_sites.get(path[:n])
            if var is not None:
                vpath = ("__json_config_variables__", var, *path[n:])
                return self.file_of(vpath[:2]), f"{fmt_path(vpath)} (as {fmt_path(path)})"
        return self.file_of(path), fmt_path(path)


def load_config(files: list[str], extra: list[dict[str, Any]] | None = None) -> YunoConfig:
    """Load, merge, substitute and validate `files` (then `extra` dicts, for tests)."""
    if not files and not extra:
        raise ConfigError("<command line>", "", "no config file given (use -f FILE)")
    merger = _Merger()
    used: set[str] = set()
    sources = [(file, _read(file)) for file in files]
    sources += [(f"<extra config {i}>", data) for i, data in enumerate(extra or [])]
    for file, data in sources:
        _check_depth(data, file)
        used |= _placeholders(data)
        merger.merge(data, file)
    raw = merger.data
    variables = raw.get("__json_config_variables__", {})
    if not isinstance(variables, dict):
        path: Path = ("__json_config_variables__",)
        raise ConfigError(merger.file_of(path), fmt_path(path), "must be an object")
    for name in variables:
        # A variable no file uses is a typo that would silently leave a default in place.
        if name not in used:
            path = ("__json_config_variables__", name)
            raise ConfigError(
                merger.file_of(path),
                fmt_path(path),
                f"unknown config variable '{name}': no (^^{name}^^) uses it",
            )
    resolved = {k: v for k, v in raw.items() if k != "__json_config_variables__"}
    resolved = _substitute(resolved, variables, (), merger)
    return _validate(resolved, variables, merger, [*files])


def _read(file: str) -> dict[str, Any]:
    """One config file as a JSON object; every way it can be unreadable is one line."""
    try:
        with open(file, "rb") as f:
            blob = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    if len(blob) > MAX_CONFIG_BYTES:
        raise ConfigError(file, "", f"larger than {MAX_CONFIG_BYTES} bytes: not a config")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file, "", f"not UTF-8 text (a binary file?): bad byte at offset {exc.start}"
        ) from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number (numbers must be finite)")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            file, "", f"bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise ConfigError(file, "", str(exc)) from None
    except RecursionError:
        raise ConfigError(file, "", f"nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"the top level must be an object, not {type(data).__name__}")
    return data


def _check_depth(data: Any, file: str) -> None:
    """Refuse absurd nesting before any recursive walk meets it (iterative: no recursion)."""
    stack: list[tuple[Any, Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ConfigError(
                file, fmt_path(path[:MAX_DEPTH]), f"nested more than {MAX_DEPTH} levels deep"
            )
        if isinstance(value, dict):
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))


def _placeholders(value: Any) -> set[str]:
    """Every variable name a `(^^name^^)` refers to, anywhere in `value`."""
    if isinstance(value, dict):
        return set().union(*(_placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value))
    if isinstance(value, str):
        return set(_VAR_RE.findall(value))
    return set()


def _check_log_handlers(handlers: dict, path: Path, fail: Any) -> None:
    """What `yuneta.log.setup_logging` needs, checked before anything starts."""
    for name, spec in handlers.items():
        p = (*path, name)
        if not isinstance(spec, dict):
            raise fail(
                p,
                f'a log handler must be an object like {{"handler_type": "stderr"}}, not {type(spec).__name__}',
            )
        for key in spec:
            if key not in HANDLER_KEYS:
                raise fail(
                    (*p, key), f"unknown log handler key '{key}' (expected {sorted(HANDLER_KEYS)})"
                )
        kind = spec.get("handler_type", "stderr")
        if kind not in HANDLER_TYPES:
            raise fail((*p, "handler_type"), f"must be one of {list(HANDLER_TYPES)}, not {kind!r}")
        if "level" in spec and spec["level"] not in LOG_LEVELS:
            raise fail((*p, "level"), f"must be one of {list(LOG_LEVELS)}, not {spec['level']!r}")
        for key in ("max_bytes", "backup_count"):
            value = spec.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise fail((*p, key), f"must be a non-negative integer, not {value!r}")
        if kind != "file":
            continue
        filename = spec.get("filename")
        if not isinstance(filename, str) or not filename:
            raise fail((*p, "filename"), "a file log handler needs a 'filename'")
        directory = os.path.dirname(os.path.abspath(filename))
        if not os.path.isdir(directory):
            raise fail((*p, "filename"), f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK):
            raise fail((*p, "filename"), f"directory {directory} is not writable")


def _substitute(value: Any, variables: dict[str, Any], path: Path, merger: _Merger) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, (*path, k), merger) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, (*path, i), merger) for i, v in enumerate(value)]
    if not isinstance(value, str) or "(^^" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            raise ConfigError(
                merger.file_of(path), fmt_path(path), f"unknown config variable '{name}'"
            )
        return variables[name]

    merger.var_sites[path] = _VAR_RE.findall(value)[0]
    whole = _VAR_RE.fullmatch(value)
    if whole:
        return copy.deepcopy(lookup(whole.group(1)))

    def text(m: re.Match[str]) -> str:
        v = lookup(m.group(1))
        return v if isinstance(v, str) else json.dumps(v)

    return _VAR_RE.sub(text, value)


def _validate(
    data: dict[str, Any], variables: dict, merger: _Merger, files: list[str]
) -> YunoConfig:
    def fail(path: Path, problem: str) -> ConfigError:
        return ConfigError(*merger.blame(path), problem)

    for key in data:
        if key not in TOP_KEYS:
            raise fail(
                (key,), f"unknown top-level key '{key}' (expected one of {sorted(TOP_KEYS)})"
            )

    environment = data.get("environment", {})
    if not isinstance(environment, dict):
        raise fail(("environment",), "must be an object")
    for key, value in environment.items():
        if key not in ENV_KEYS:
            raise fail(("environment", key), f"unknown environment key '{key}'")
        if key == "log_handlers":
            if not isinstance(value, dict):
                raise fail(("environment", key), "must be an object of handlers")
            _check_log_handlers(value, ("environment", key), fail)
        elif key == "log_level":
            if value not in LOG_LEVELS:
                raise fail(("environment", key), f"must be one of {list(LOG_LEVELS)}")
        elif not isinstance(value, str):
            raise fail(("environment", key), "must be a string")

    global_kw = data.get("global", {})
    if not isinstance(global_kw, dict):
        raise fail(("global",), "must be an object")
    for key in global_kw:
        if "." not in key:
            raise fail(("global", key), "keys must be 'GCLASS.attr' or 'service_name.attr'")

    yuno_kw = data.get("yuno", {})
    if not isinstance(yuno_kw, dict):
        raise fail(("yuno",), "must be an object")
    yuno_def = _gdef("C_YUNO", ("yuno",), fail)
    yuno_kw = _check_kw(
        yuno_def, {**_globals_for(global_kw, "C_YUNO", "__yuno__"), **yuno_kw}, ("yuno",), fail
    )

    services_raw = data.get("services", [])
    if not isinstance(services_raw, list):
        raise fail(("services",), "must be a list of gobj trees")
    services = _nodes(services_raw, ("services",), global_kw, fail, merger.blame)
    _check_global_targets(global_kw, services, fail)

    return YunoConfig(files, environment, global_kw, yuno_kw, services, variables, data)


def _gdef(name: Any, path: Path, fail: Any) -> GClassDef:
    if not isinstance(name, str) or not name:
        raise fail(path, "gclass must be a non-empty string")
    try:
        return find_gclass(name).GCLASS
    except GClassError as exc:
        raise fail(path, str(exc)) from None


def _globals_for(global_kw: dict[str, Any], gclass: str, name: str) -> dict[str, Any]:
    """The `global` overrides that apply to a gobj: by gclass first, then by name."""
    out: dict[str, Any] = {}
    for key, value in global_kw.items():
        target, _, attr = key.partition(".")
        if target.lower() == gclass.lower():
            out[attr] = value
    for key, value in global_kw.items():
        target, _, attr = key.partition(".")
        if target.lower() == name.lower():
            out[attr] = value
    return out


def _check_kw(gdef: GClassDef, kw: dict, path: Path, fail: Any) -> dict:
    """Types by the attribute table, then the gclass's own checks (`mt_check_kw`)."""
    try:
        checked = gdef.validate_kw(kw)
        defaults = {a.name: a.default for a in gdef.attrs}
        find_gclass(gdef.name).mt_check_kw({**defaults, **checked})
        return checked
    except Exception as exc:
        attr = getattr(exc, "attr", None)
        raise fail((*path, attr) if attr else path, str(exc)) from None


def _nodes(raw: list, path: Path, global_kw: dict, fail: Any, blame: Any) -> list[ServiceNode]:
    out: list[ServiceNode] = []
    seen: set[str] = set()
    for i, node in enumerate(raw):
        p = (*path, i)
        if not isinstance(node, dict):
            raise fail(p, "each gobj node must be an object")
        for key in node:
            if key not in NODE_KEYS:
                raise fail(
                    (*p, key), f"unknown key '{key}' in a gobj node (expected {sorted(NODE_KEYS)})"
                )
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise fail((*p, "name"), "every gobj node needs a non-empty string 'name'")
        if name.lower() in seen:
            raise fail((*p, "name"), f"duplicate gobj name '{name}' among siblings")
        seen.add(name.lower())
        gdef = _gdef(node.get("gclass"), (*p, "gclass"), fail)
        for flag in ("as_service", "default_service", "autostart", "autoplay", "disabled"):
            if flag in node and not isinstance(node[flag], bool):
                raise fail((*p, flag), "must be true or false")
        if node.get("disabled"):
            continue
        kw = node.get("kw", {})
        if not isinstance(kw, dict):
            raise fail((*p, "kw"), "must be an object")
        merged = {**_globals_for(global_kw, gdef.name, name), **kw}
        origins = {
            attr: blame((*p, "kw", attr))
            if attr in kw
            else _global_origin(global_kw, gdef.name, name, attr, blame)
            for attr in merged
        }
        kw = _check_kw(gdef, merged, (*p, "kw"), fail)
        children = node.get("children", [])
        if not isinstance(children, list):
            raise fail((*p, "children"), "must be a list")
        out.append(
            ServiceNode(
                name=name,
                gclass=gdef.name,
                kw=kw,
                children=_nodes(children, (*p, "children"), global_kw, fail, blame),
                as_service=bool(node.get("as_service", False)),
                default_service=bool(node.get("default_service", False)),
                autostart=bool(node.get("autostart", True)),
                autoplay=bool(node.get("autoplay", True)),
                origins=origins,
            )
        )
    return out


def _global_origin(
    global_kw: dict, gclass: str, name: str, attr: str, blame: Any
) -> tuple[str, str]:
    """Where a `global` entry that reached this gobj was set (by name wins over gclass)."""
    for target in (name, gclass):
        for key in global_kw:
            t, _, a = key.partition(".")
            if t.lower() == target.lower() and a == attr:
                return blame(("global", key))
    return "<config>", ""


def _check_global_targets(global_kw: dict, services: list[ServiceNode], fail: Any) -> None:
    """Every `global` key must name a known gclass or a gobj of the config."""
    names: set[str] = {"__yuno__"}

    def collect(nodes: list[ServiceNode]) -> None:
        for n in nodes:
            names.add(n.name.lower())
            collect(n.children)

    collect(services)
    for key in global_kw:
        target = key.partition(".")[0]
        if target.lower() in names:
            continue
        try:
            find_gclass(target)
        except GClassError:
            raise fail(
                ("global", key), f"'{target}' is neither a gclass nor a gobj of this config"
            ) from None
