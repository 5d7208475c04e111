"""Directory watcher: "something under these directories changed", once, after a debounce.

Certificates change in ways that defeat a watch on the file itself: an atomic rename onto
the name (the watched inode is gone), `install -C` (delete, then create), a Kubernetes
Secret volume swap (a new `..2026_...` directory, then `..data` renamed over it: the
certificate's own name never appears in an event) and certbot moving its `live/` links one
at a time. So `DirWatcher` watches directories (inotify through watchdog, never polling)
and counts only events that end a change: CLOSE_WRITE (never the first MODIFY, which a
rewrite in place sends at the truncate), a move onto or off a name, a delete, and the
creation of a symlink, a directory or a non-empty file (a hard link); an empty file just
created is waited for until its CLOSE_WRITE. Counted events re-arm one deadline (trailing
debounce, capped so a steady stream still reports); when it falls due `on_change` is called
once with the paths seen.

A directory that does not exist yet is waited for: its nearest existing ancestor is watched
and the real watch starts when it appears. Each watched directory's parent is watched too,
so a directory deleted, renamed away or re-created is noticed and watched again. Every
re-plan is followed by an `on_change`, because files may have appeared while no watch was
in place.

Threads: watchdog's threads only record paths and arm the deadline; `on_change` runs on the
kernel's scheduler thread and must only post (a gobj's `send_event`), never do the work.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from yuneta.log import log
from yuneta.scheduler import TimerHandle, scheduler

try:  # Linux: unpaired moves must stay moves, not look like a file just created
    from watchdog.observers.inotify import InotifyObserver

    def _observer() -> Any:
        return InotifyObserver(generate_full_events=True)

except ImportError:  # pragma: no cover - other platforms
    from watchdog.observers import Observer

    def _observer() -> Any:
        return Observer()


DEFAULT_DEBOUNCE = 0.5
#: A steady stream of events reports at the latest this many debounces after the first.
MAX_DELAY_FACTOR = 10
#: Paths handed to on_change at most (the rest are counted).
MAX_PATHS = 32

# Only these reach us at all (the kernel filters the rest: reading a certificate, which
# every reload does, wakes nobody).
_EVENT_FILTER = [
    FileClosedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What is watched now: {path: recursive}; the existing targets by real path (a target
    may be a symlink to a directory); {target: ancestor} of those still awaited."""

    watched: dict[str, bool]
    real: dict[str, str]
    waiting: dict[str, str]


def _nearest_existing(path: str) -> str:
    node = path
    while not os.path.isdir(node):
        parent = os.path.dirname(node)
        if parent == node:
            return node
        node = parent
    return node


def _within(path: str, directory: str, recursive: bool) -> bool:
    if recursive:
        return path.startswith(directory.rstrip("/") + "/")
    return os.path.dirname(path) == directory


class DirWatcher:
    """Watch `dirs` (absolute paths) and call `on_change(paths)` once per burst of changes.

    `recursive` watches below each directory too. `start()` / `stop()` from any thread;
    `status()` is a plain snapshot for a status command.
    """

    def __init__(
        self,
        dirs: Iterable[str],
        on_change: Callable[[list[str]], object],
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        recursive: bool = False,
        owner: str = "watch",
    ) -> None:
        self.targets = sorted({os.path.abspath(d) for d in dirs if d})
        self.on_change = on_change
        self.debounce = max(0.0, float(debounce))
        self.recursive = recursive
        self.owner = owner
        self.changes = 0  # on_change calls made
        self._lock = threading.Lock()  # the handler's state: paths, deadline
        self._plan_lock = threading.Lock()  # one re-plan at a time (never held by the handler)
        self._observer: Any = None
        self._watches: list[Any] = []
        self._plan = _Plan({}, {}, {})
        self._error = ""
        self._paths: list[str] = []
        self._dropped = 0
        self._replan = False
        self._first = 0.0
        self._timer: TimerHandle | None = None
        self._stopped = True

    # ----- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start watching (idempotent). A directory that cannot be watched is reported in
        `status()`, never raised: the caller's timer stays the safety net."""
        with self._plan_lock:
            if not self._stopped:
                return
            self._stopped = False
            self._observer = _observer()
            self._observer.start()
            self._apply_plan()

    def stop(self) -> None:
        """Stop watching and drop any pending report (idempotent)."""
        with self._plan_lock:
            self._stopped = True
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._paths, self._replan = [], False
            observer, self._observer = self._observer, None
            self._watches = []
            self._plan = _Plan({}, {}, {})
        if observer is not None:
            observer.stop()
            observer.join(5.0)

    @property
    def running(self) -> bool:
        return not self._stopped

    def status(self) -> dict[str, Any]:
        """{"watching": [dirs], "waiting": [{"dir", "watching"}], "error": str}."""
        plan = self._plan
        return {
            "watching": sorted(plan.real.values()),
            "waiting": [{"dir": t, "watching": a} for t, a in sorted(plan.waiting.items())],
            "error": self._error,
        }

    # ----- planning (start and scheduler thread) --------------------------------------

    def _make_plan(self) -> _Plan:
        watched: dict[str, bool] = {}
        real: dict[str, str] = {}
        waiting: dict[str, str] = {}
        for target in self.targets:
            if os.path.isdir(target):
                real[os.path.realpath(target)] = target
                watched[os.path.realpath(target)] = self.recursive
                # The parent sees the directory itself deleted, renamed or replaced.
                parent = os.path.dirname(target)
                if parent != target:
                    watched.setdefault(parent, False)
            else:
                ancestor = _nearest_existing(target)
                waiting[target] = ancestor
                watched.setdefault(ancestor, False)
        return _Plan(watched, real, waiting)

    def _apply_plan(self) -> None:
        """(Re)schedule every watch from what exists now. Called with _plan_lock held."""
        observer = self._observer
        if observer is None:
            return
        for watch in self._watches:
            try:
                observer.unschedule(watch)
            except (KeyError, ValueError):  # its emitter already went with its directory
                pass
        self._watches = []
        errors = []
        for _attempt in range(3):  # a directory may appear while we schedule: look again
            plan = self._make_plan()
            for path, recursive in plan.watched.items():
                if any(w.path == path for w in self._watches):
                    continue
                try:
                    self._watches.append(
                        observer.schedule(
                            _Handler(self), path, recursive=recursive, event_filter=_EVENT_FILTER
                        )
                    )
                except OSError as exc:  # inotify limits, permissions: say so, keep the rest
                    errors.append(f"{path}: {exc.strerror or exc}")
            self._plan = plan
            if all(not os.path.isdir(t) for t in plan.waiting):
                break
        self._error = "; ".join(errors)
        if errors:
            log("warning", self.owner, "cannot watch directory", error=self._error)

    # ----- events (watchdog thread) ---------------------------------------------------

    def _event(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(p) for p in (event.src_path, event.dest_path) if p]
        plan = self._plan
        structural = counted = False
        for p in paths:
            # A target directory itself (or, while it is awaited, an ancestor) came or went.
            structural = structural or any(
                p in (target, real) or target.startswith(p.rstrip("/") + "/")
                for real, target in plan.real.items()
            )
            structural = structural or any(
                p == target or target.startswith(p.rstrip("/") + "/") for target in plan.waiting
            )
            counted = counted or any(
                _within(p, real, self.recursive) and _ends_a_change(event, p) for real in plan.real
            )
        if structural or counted:
            self._arm(paths, structural)

    def _arm(self, paths: list[str], replan: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if self._stopped:
                return
            for p in paths:
                if p in self._paths:
                    continue
                if len(self._paths) < MAX_PATHS:
                    self._paths.append(p)
                else:
                    self._dropped += 1
            self._replan = self._replan or replan
            if self._timer is None:
                self._first = now
            else:
                self._timer.cancel()
            deadline = min(now + self.debounce, self._first + self.debounce * MAX_DELAY_FACTOR)
            self._timer = scheduler().call_at(deadline, self._fire)

    def _fire(self) -> None:
        """Scheduler thread: re-plan if the tree moved, then report once."""
        with self._lock:
            if self._stopped:
                return
            self._timer = None
            paths, dropped, replan = self._paths, self._dropped, self._replan
            self._paths, self._dropped, self._replan = [], 0, False
        if replan:
            with self._plan_lock:
                if self._stopped:
                    return
                self._apply_plan()
        if dropped:
            paths = [*paths, f"... and {dropped} more"]
        self.changes += 1
        self.on_change(paths)


def _ends_a_change(event: FileSystemEvent, path: str) -> bool:
    if isinstance(event, FileCreatedEvent):
        # An empty regular file is being written: its CLOSE_WRITE will come. A symlink,
        # or a file born with content (a hard link), will not send one.
        try:
            st = os.lstat(path)
        except OSError:
            return True  # gone already: a change all the same
        return not (stat.S_ISREG(st.st_mode) and st.st_size == 0)
    return True


class _Handler(FileSystemEventHandler):
    """Forwards watchdog's events to its DirWatcher (watchdog's thread)."""

    def __init__(self, watcher: DirWatcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        self.watcher._event(event)
