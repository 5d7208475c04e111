"""The yuno runtime: builds a gobj tree from a config, owns services, store and I/O loop.

A `YunoRuntime` is one process's yuno: the C_YUNO root gobj, the service registry
(case-insensitive names; `__yuno__`/`__root__` name the root, `__default_service__` the
default service), the store of persistent attributes, and the asyncio I/O loop thread
that owns every socket (started on first use). `run_yuno` is what `yuneta run` calls.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from yuneta.command import DEFAULT_SERVICE, envelope
from yuneta.config import ServiceNode, YunoConfig
from yuneta.errors import AttrError, ConfigError, YunetaError
from yuneta.gclass import coerce
from yuneta.gobj import GObj, create_gobj
from yuneta.log import log, setup_logging
from yuneta.persist import read_json, write_json_atomic

ROOT_ALIASES = ("__yuno__", "__root__")


class YunoRuntime:
    """Everything a yuno process shares across its gobjs."""

    def __init__(self, config: YunoConfig) -> None:
        self.config = config
        env = config.environment
        self.work_dir = Path(env.get("work_dir") or os.getcwd())
        self.store_dir = Path(env.get("store_dir") or self.work_dir / "store")
        self.log_dir = Path(env.get("log_dir") or self.work_dir / "logs")
        self.services: dict[str, GObj] = {}
        self.default_service: GObj | None = None
        self._lock = threading.RLock()
        self._persist_cache: dict[str, dict[str, Any]] | None = None
        self._io_loop: Any = None
        self.root: GObj | None = None
        self.stopping = threading.Event()

    # ----- building the tree --------------------------------------------------------

    def build(self) -> GObj:
        """Create the root C_YUNO and every service tree (nothing is started yet)."""
        kw = dict(self.config.yuno)
        kw.setdefault("yuno_id", uuid.uuid4().hex[:12])
        kw["start_time"] = int(time.time())
        kw["work_dir"] = str(self.work_dir)
        kw["store_dir"] = str(self.store_dir)
        kw["log_dir"] = str(self.log_dir)
        kw["config_files"] = list(self.config.files)
        self.root = create_gobj(kw.get("yuno_name") or "yuno", "C_YUNO", kw, None, self)
        for node in self.config.services:
            self._create_node(node, self.root)
        if self.default_service is None:
            for node in self.config.services:
                if node.as_service:
                    self.default_service = self.services.get(node.name.lower())
                    break
        return self.root

    def _create_node(self, node: ServiceNode, parent: GObj) -> GObj:
        gobj = create_gobj(node.name, node.gclass, node.kw, parent, self)
        gobj.config_node = node  # type: ignore[attr-defined]
        if node.as_service or node.default_service:
            self.register_service(gobj)
        if node.default_service:
            self.default_service = gobj
        for child in node.children:
            self._create_node(child, gobj)
        return gobj

    def start(self) -> None:
        """Start the root, then autostart/autoplay the service trees top to bottom."""
        assert self.root is not None
        self.root.start()
        for gobj in self.root.walk("top_to_bottom"):
            node = getattr(gobj, "config_node", None)
            autostart = node.autostart if node else True
            if autostart and gobj.parent is not None and gobj.parent.running:
                try:
                    gobj.start()
                except AttrError as exc:  # e.g. a url it cannot listen on: blame the config
                    if node is None:
                        raise
                    raise node.origin_error(exc.attr, exc.problem) from None
        self.root.play()
        for gobj in self.root.walk("top_to_bottom"):
            node = getattr(gobj, "config_node", None)
            if node is not None and node.autoplay and gobj.running:
                gobj.play()

    def shutdown(self) -> None:
        """Stop every gobj bottom-up, destroy the tree, stop the I/O loop."""
        if self.root is not None:
            self.root.stop_tree()
            self.root.destroy()
        if self._io_loop is not None:
            self._io_loop.stop()
            self._io_loop = None

    # ----- services -----------------------------------------------------------------

    def register_service(self, gobj: GObj) -> None:
        with self._lock:
            self.services[gobj.name.lower()] = gobj

    def unregister_service(self, gobj: GObj) -> None:
        with self._lock:
            if self.services.get(gobj.name.lower()) is gobj:
                del self.services[gobj.name.lower()]

    def find_service(self, name: str) -> GObj | None:
        """A service by name (case-insensitive); `__yuno__`/`__root__`/`__default_service__`."""
        key = (name or "").lower()
        if key in ROOT_ALIASES:
            return self.root
        if key == DEFAULT_SERVICE:
            return self.default_service or self.root
        with self._lock:
            return self.services.get(key)

    def find_gobj(self, name: str) -> GObj | None:
        """A service, or else the first gobj of the tree with that name (case-insensitive)."""
        found = self.find_service(name)
        if found is not None or self.root is None:
            return found
        matches = self.root.find(name=name)
        return matches[0] if matches else None

    def route_command(
        self,
        line: str,
        kw: dict[str, Any] | None = None,
        *,
        service: str = "",
        gobj: str = "",
        src: GObj | None = None,
    ) -> dict:
        """Run a command that came from outside the yuno on the gobj it names; its envelope.

        `gobj` (any gobj by name) wins over `service`; no service means the default one.
        A target that does not exist is a -1 envelope naming it. Blocks until the target
        answers: call it from a worker thread or another gobj's actor, never the I/O loop.
        """
        target = self._route_target(service, gobj)
        return target.command(line, kw, src=src) if isinstance(target, GObj) else target

    def submit_routed_command(
        self,
        line: str,
        kw: dict[str, Any] | None = None,
        *,
        service: str = "",
        gobj: str = "",
        src: GObj | None = None,
    ) -> dict | concurrent.futures.Future:
        """`route_command` without the wait: a handler that waits gives its Future
        (`GObj.submit_command`), for a caller on an event loop to await, holding no thread."""
        target = self._route_target(service, gobj)
        return target.submit_command(line, kw, src=src) if isinstance(target, GObj) else target

    def _route_target(self, service: str, gobj: str) -> GObj | dict:
        """The gobj a routed command goes to, or the -1 envelope naming what is missing."""
        if gobj:
            target = self.find_gobj(gobj)
            return target or envelope(-1, f"gobj '{gobj}' not found in this yuno")
        target = self.find_service(service or DEFAULT_SERVICE)
        return target or envelope(-1, f"Service not found: '{service}'")

    # ----- persistence --------------------------------------------------------------

    @property
    def persist_file(self) -> Path:
        role = self.config.yuno.get("yuno_role", "yuno")
        name = self.config.yuno.get("yuno_name", "") or role
        return self.store_dir / f"{role}^{name}" / "persistent-attrs.json"

    def _persisted(self) -> dict[str, dict[str, Any]]:
        """The store's content, read once. A corrupt store stops the start with its name:
        starting on defaults would silently drop what the operator had set."""
        if self._persist_cache is None:
            try:
                data = read_json(self.persist_file, {})
            except (ValueError, OSError) as exc:
                raise ConfigError(
                    str(self.persist_file), "", f"persistent attributes unreadable: {exc}"
                ) from None
            if not isinstance(data, dict):
                raise ConfigError(
                    str(self.persist_file), "", "persistent attributes must be an object"
                )
            self._persist_cache = data
        return self._persist_cache

    def load_persistent(self, gobj: GObj) -> dict[str, Any]:
        """The saved PERSIST attributes of `gobj`, coerced to their types (bad ones logged)."""
        with self._lock:
            saved = self._persisted().get(gobj.full_name, {})
        out: dict[str, Any] = {}
        for name, value in saved.items():
            attr = gobj.gclass.attr_index.get(name)
            if attr is None:
                log("warning", gobj.full_name, "persisted attribute unknown, ignored", attr=name)
                continue
            try:
                out[name] = coerce(attr.type, value, strict=True)
            except ValueError as exc:
                log(
                    "warning",
                    gobj.full_name,
                    "persisted attribute bad, ignored",
                    attr=name,
                    error=str(exc),
                )
        return out

    def save_persistent(self, gobj: GObj) -> None:
        """Write `gobj`'s PERSIST attributes to the store (atomic rename)."""
        with self._lock:
            store = self._persisted()
            store[gobj.full_name] = gobj.persistent_attrs()
            write_json_atomic(self.persist_file, store)
        log("info", gobj.full_name, "persistent attributes saved", file=str(self.persist_file))

    # ----- I/O loop -----------------------------------------------------------------

    @property
    def io_loop(self) -> Any:
        """The yuno's asyncio I/O loop thread (`yuneta.netio.IOLoop`), started on first use."""
        with self._lock:
            if self._io_loop is None:
                from yuneta.netio import IOLoop

                loop = IOLoop(name="yuno-io")
                loop.start()
                self._io_loop = loop
            return self._io_loop


def run_yuno(config: YunoConfig) -> int:
    """Build, start and run a yuno until SIGTERM/SIGINT; then stop it bottom-up. Returns 0."""
    env = config.environment
    setup_logging(env.get("log_handlers"), env.get("log_level", "info"))
    runtime = YunoRuntime(config)
    stop = runtime.stopping

    def on_signal(signum: int, _frame: Any) -> None:
        log("info", "__yuno__", "signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        root = runtime.build()
        runtime.start()
    except YunetaError as exc:  # an operator's error (bad certificate, bad attribute): no traceback
        log("critical", "__yuno__", "yuno failed to start", error=str(exc))
        runtime.shutdown()
        return 2 if isinstance(exc, ConfigError) else 1
    except Exception as exc:
        log("critical", "__yuno__", "yuno failed to start", error=str(exc), exc_info=True)
        runtime.shutdown()
        return 1
    log(
        "info",
        root.full_name,
        "yuno running",
        yuno_role=root.attrs.get("yuno_role"),
        yuno_name=root.attrs.get("yuno_name"),
        pid=os.getpid(),
    )
    while not stop.wait(0.5):
        pass
    runtime.shutdown()
    log("info", root.full_name, "yuno stopped")
    return 0
