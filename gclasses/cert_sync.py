"""Layer 2 of the certificate life cycle: the agent keeps every yuno on the store's certificates.

`CertSync` is the agent's helper behind `cert-sync-now`, `cert-sync-status` and the
`cert_sync_*` attributes (their rows are in C_AGENT's tables). A *tick* snapshots the store
(size, mtime and SHA-256 of every certificate, chain and key file), runs the copy command
(an argument list, never a shell, with a time limit after which its process group is
killed), snapshots again, and then *converges*: every running yuno is asked for its TLS
listeners' `view-cert`, each served certificate is compared with the file on disk, and
`reload-certs` goes to every listener that lags, the agent's own included. The original
broadcast once when a `*.crt` file's size or mtime moved, so a yuno that missed it stayed
behind; here a listener that is still behind after a tick (no answer, refused) makes the
agent try again after a growing delay until it catches up.

A tick starts when the agent starts (the baseline), from the inotify watch on the store
(`yuneta.watch`, within a debounce of a change), from the timer (`cert_sync_interval_sec`,
the safety net), from `cert-sync-now`, and when a yuno connects (it may have been left behind
while the agent was down).
Watch-triggered ticks do not run the copy command: the change is already in the store, and a
copy that rewrites files would otherwise trigger itself forever.

Threads: the tick runs as a coroutine on the agent's I/O loop (the copy is an asyncio
subprocess, file hashing runs in the loop's executor, yunos answer over their channels), so
the agent's actor keeps answering `list-yunos` while a copy hangs or a yuno is stopped. The
coroutine reads only the frozen `_TickPlan` it was given and returns a `TickResult`; the
agent's actor applies it (attributes, log line, answers to `cert-sync-now`) when it receives
EV_CERT_SYNC_DONE. Everything else here runs on the agent's actor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import shlex
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gclasses.c_timer import CTimer
from gclasses.tls_listener import RETRY_DELAYS, is_transient_failure
from yuneta.command import envelope
from yuneta.errors import AttrError
from yuneta.gobj import create_gobj
from yuneta.netio.loop import run_subprocess
from yuneta.watch import DirWatcher

if TYPE_CHECKING:
    from gclasses.c_agent import CAgent

INTERVAL_FLOOR = 30
#: Files of the store that make up a certificate (SPEC 7: name.crt, name.chain, private/name.key).
STORE_SUFFIXES = (".crt", ".chain", ".pem", ".key")
KEY_SUFFIXES = (".key",)
#: Longest wait before retrying a listener that lags (then the interval takes over).
MAX_RETRY_DELAY = 60.0
#: Bytes of the copy command's output kept for the log.
OUTPUT_TAIL = 600
#: Changed files named in a tick's log line (the count says how many): journald splits a
#: line past 48 KiB, which a store of a few hundred files changed at once would reach.
MAX_LOGGED_CHANGES = 32
#: Largest store file read and hashed (certificates and keys are a few KiB; a bundle of a
#: few hundred certificates still fits).
MAX_STORE_FILE = 1 << 20

# cert_sync_last_result values (SPEC 5)
RELOADED = "reloaded"
RELOADED_COPY_ERROR = "reloaded (copy script reported error)"
COPY_FAILED = "copy-script-failed"
NO_CHANGE = "no-change"

#: Attributes whose writing changes what the helper does at once.
LIVE_ATTRS = (
    "cert_sync_enabled",
    "cert_sync_interval_sec",
    "cert_sync_store_dir",
    "cert_sync_watch",
    "cert_sync_debounce_sec",
)


def check_attrs(gclass: str, attrs: dict[str, Any]) -> None:
    """Config-time checks of the cert_sync_* values (AttrError naming the attribute)."""
    if attrs["cert_sync_interval_sec"] < INTERVAL_FLOOR:
        raise AttrError(
            gclass,
            "cert_sync_interval_sec",
            f"must be at least {INTERVAL_FLOOR} seconds, not {attrs['cert_sync_interval_sec']}",
        )
    if attrs["cert_sync_copy_timeout_sec"] <= 0:
        raise AttrError(gclass, "cert_sync_copy_timeout_sec", "must be more than 0 seconds")
    if attrs["cert_sync_debounce_sec"] < 0:
        raise AttrError(gclass, "cert_sync_debounce_sec", "must not be negative")
    try:
        shlex.split(attrs["cert_sync_copy_cmd"])
    except ValueError as exc:
        raise AttrError(
            gclass, "cert_sync_copy_cmd", f"cannot be split into arguments: {exc}"
        ) from None


# ----- store snapshots (executor threads) ------------------------------------------


@dataclass(frozen=True, slots=True)
class FileState:
    """One store file as a tick sees it. `fingerprint` is the leaf certificate's SHA-256
    (certificates only: a key's hash never leaves the agent's memory)."""

    size: int
    mtime_ns: int
    sha256: str
    fingerprint: str = ""


Snapshot = dict[str, FileState]


def leaf_fingerprint(data: bytes) -> str:
    """SHA-256 of the first certificate in PEM `data`, in view-cert's form (AA:BB:...);
    ValueError when there is none."""
    certs = x509.load_pem_x509_certificates(data)
    return certs[0].fingerprint(hashes.SHA256()).hex(":").upper()


def take_snapshot(store_dir: str) -> Snapshot:
    """Every certificate, chain and key file of the store (top level and one level below,
    e.g. `private/`), symlinks followed. Unreadable files are recorded by size and mtime."""
    out: Snapshot = {}
    root = Path(store_dir)
    if not root.is_dir():
        return out
    for path in sorted([*root.glob("*"), *root.glob("*/*")]):
        if path.suffix not in STORE_SUFFIXES:
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # gone (or a dangling or looping link) now: the next tick sees it
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STORE_FILE:
            # A FIFO would block the tick forever, /dev/zero or a huge file fill memory.
            out[str(path.relative_to(root))] = FileState(
                st.st_size, st.st_mtime_ns, "", "(not a certificate file)"
            )
            continue
        try:
            with path.open("rb") as f:
                data = f.read(MAX_STORE_FILE + 1)
        except OSError:
            # Unreadable by the agent (a key it may not read): seen by size and mtime.
            out[str(path.relative_to(root))] = FileState(st.st_size, st.st_mtime_ns, "")
            continue
        fingerprint = ""
        if path.suffix not in KEY_SUFFIXES:
            try:
                fingerprint = leaf_fingerprint(data)
            except ValueError:
                fingerprint = "(not a certificate)"
        out[str(path.relative_to(root))] = FileState(
            st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest(), fingerprint
        )
    return out


def diff_snapshots(old: Snapshot, new: Snapshot) -> list[dict[str, str]]:
    """What changed, for the log and the answer: names and certificate fingerprints only."""
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "modified"
        entry = {"file": name, "change": change}
        if not name.endswith(KEY_SUFFIXES):
            entry["old_fingerprint"] = before.fingerprint if before else ""
            entry["new_fingerprint"] = after.fingerprint if after else ""
        changes.append(entry)
    return changes


def disk_fingerprint(path: str) -> str:
    """The fingerprint of the certificate file at `path`; "" when it cannot be read (the
    listener's own reload then says exactly why)."""
    try:
        return leaf_fingerprint(Path(path).read_bytes())
    except (OSError, ValueError):
        return ""


# ----- the copy command (I/O loop) -------------------------------------------------


async def run_copy(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run the copy command; {outcome, exit_code, seconds, output}. Outcomes: skipped (no
    command), ok, failed (non-zero exit), not-found (no such program), cannot-run,
    timeout (its whole process group killed)."""
    if not argv:
        return {"outcome": "skipped", "exit_code": None, "seconds": 0.0, "output": ""}
    started = time.monotonic()

    def done(outcome: str, code: int | None, output: bytes | str = b"") -> dict[str, Any]:
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return {
            "outcome": outcome,
            "exit_code": code,
            "seconds": round(time.monotonic() - started, 3),
            "output": text.strip()[-OUTPUT_TAIL:],
        }

    try:
        result = await run_subprocess(argv, timeout, merge_stderr=True, keep=OUTPUT_TAIL * 4)
    except FileNotFoundError:
        return done("not-found", None, f"{argv[0]}: no such file")
    except OSError as exc:
        return done("cannot-run", None, f"{argv[0]}: {exc.strerror or exc}")
    if result.timed_out:
        if result.held_output:
            why = (
                f"exited {result.returncode}, but something it started held its output open"
                f" past {timeout:g} s: process group killed"
            )
        else:
            why = f"no exit within {timeout:g} s: process group killed"
        return done("timeout", None, why)
    return done("ok" if result.returncode == 0 else "failed", result.returncode, result.stdout)


# ----- convergence (I/O loop) --------------------------------------------------------

#: ask(command, kw) -> envelope: a yuno over its channel, or the agent's own root.
Asker = Callable[[str, dict[str, Any]], Awaitable[dict]]


@dataclass(frozen=True, slots=True)
class YunoTarget:
    id: str
    yuno_role: str
    yuno_name: str
    ask: Asker

    @property
    def label(self) -> str:
        return f"{self.yuno_role}^{self.yuno_name}"


@dataclass(frozen=True, slots=True)
class _TickPlan:
    trigger: str
    store_dir: str
    copy_argv: list[str]
    copy_timeout: float
    previous: Snapshot | None
    yunos: list[YunoTarget]
    retry_transient: bool
    #: (yuno_id, gobj) of listeners whose reload failed: tried again even when their
    #: certificate matches (a key that does not match leaves the certificate unchanged).
    lagging: frozenset[tuple[str, str]] = frozenset()


@dataclass
class TickResult:
    trigger: str
    store_dir: str
    snapshot: Snapshot
    changed_files: list[dict[str, str]]
    copy: dict[str, Any]
    listeners: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.changed_files)

    @property
    def reloaded(self) -> int:
        return sum(1 for r in self.listeners if r["action"] == "reloaded")

    @property
    def lagging(self) -> list[dict[str, Any]]:
        return [r for r in self.listeners if r["action"] in ("failed", "no-answer")]

    @property
    def copy_failed(self) -> bool:
        return self.copy["outcome"] not in ("ok", "skipped")

    @property
    def result(self) -> str:
        """cert_sync_last_result, as SPEC 5 (a lagging listener reloaded counts as reloaded)."""
        if self.changed or self.reloaded:
            return RELOADED_COPY_ERROR if self.copy_failed else RELOADED
        return COPY_FAILED if self.copy_failed else NO_CHANGE


async def run_tick(plan: _TickPlan) -> TickResult:
    """One tick: snapshot, copy, snapshot, converge every yuno at once."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    before = await loop.run_in_executor(None, take_snapshot, plan.store_dir)
    copy = await run_copy(plan.copy_argv, plan.copy_timeout)
    after = before
    if copy["outcome"] != "skipped":
        after = await loop.run_in_executor(None, take_snapshot, plan.store_dir)
    changed_files = diff_snapshots(before if plan.previous is None else plan.previous, after)
    changed_paths = {
        os.path.realpath(os.path.join(plan.store_dir, c["file"])) for c in changed_files
    }
    result = TickResult(plan.trigger, plan.store_dir, after, changed_files, copy)
    per_yuno = await asyncio.gather(*(_converge_yuno(y, changed_paths, plan) for y in plan.yunos))
    result.listeners = [r for rows in per_yuno for r in rows]
    result.seconds = round(time.monotonic() - started, 3)
    return result


async def _converge_yuno(
    yuno: YunoTarget, changed_paths: set[str], plan: _TickPlan
) -> list[dict[str, Any]]:
    """Bring every TLS listener of one yuno onto the files on disk; one row per listener."""
    base = {
        "yuno_id": yuno.id,
        "yuno": yuno.label,
        "yuno_role": yuno.yuno_role,
        "yuno_name": yuno.yuno_name,
    }
    answer = await yuno.ask("view-cert", {"service": "__yuno__"})
    if answer.get("result", -1) < 0 or not isinstance(answer.get("data"), list):
        return [{**base, "gobj": "*", "action": "no-answer", "comment": answer.get("comment", "")}]
    loop = asyncio.get_running_loop()
    rows = []
    for served in answer["data"]:
        if not isinstance(served, dict) or not served.get("gobj"):
            continue
        row = {
            **base,
            "gobj": served["gobj"],
            "old_fingerprint": served.get("fingerprint_sha256", ""),
        }
        paths = served.get("crypto_paths") or {}
        cert_path = paths.get("ssl_certificate", "")
        disk = ""
        if cert_path:
            disk = await loop.run_in_executor(None, disk_fingerprint, cert_path)
        touched = any(os.path.realpath(p) in changed_paths for p in paths.values())
        if not cert_path:
            # A yuno that does not say which files it serves: reload it when the store moved.
            lagging = bool(changed_paths)
        else:
            lagging = touched or disk != row["old_fingerprint"]
        lagging = lagging or (yuno.id, served["gobj"]) in plan.lagging
        if not lagging:
            rows.append({**row, "action": "in-sync", "new_fingerprint": disk, "comment": ""})
            continue
        rows.append(await _reload(yuno, {**row, "disk_fingerprint": disk}, plan.retry_transient))
    return rows


async def _reload(yuno: YunoTarget, row: dict[str, Any], retry: bool) -> dict[str, Any]:
    """reload-certs on one listener; a transient refusal soon after a change is retried."""
    attempts = 0
    while True:
        attempts += 1
        answer = await yuno.ask("reload-certs", {"__gobj__": row["gobj"]})
        comment = answer.get("comment") or ""
        if answer.get("result", -1) >= 0:
            raw = answer.get("data")
            data = raw if isinstance(raw, dict) else {}
            return {
                **row,
                "action": "reloaded",
                "new_fingerprint": data.get("fingerprint_sha256", ""),
                "comment": comment,
                "attempts": attempts,
            }
        if not (retry and attempts <= len(RETRY_DELAYS) and is_transient_failure(comment)):
            failed = "no-answer" if _no_answer(comment) else "failed"
            return {
                **row,
                "action": failed,
                "new_fingerprint": "",
                "comment": comment,
                "attempts": attempts,
            }
        await asyncio.sleep(RETRY_DELAYS[attempts - 1])


def _no_answer(comment: str) -> bool:
    return comment.startswith(("No answer", "Connection", "Not connected"))


# ----- the agent's side (its actor) ----------------------------------------------------


class CertSync:
    """The agent's cert-sync state. Every method runs on the agent's actor."""

    def __init__(self, agent: CAgent) -> None:
        self.agent = agent
        self.attrs = agent.attrs
        self.timer = create_gobj("__cert_sync_timer__", CTimer, {}, agent)
        self.watcher: DirWatcher | None = None
        self.snapshot: Snapshot | None = None
        self.running: concurrent.futures.Future | None = None
        self.waiters: list[concurrent.futures.Future] = []  # answered when this tick ends
        self.next_waiters: list[concurrent.futures.Future] = []  # by the tick after it
        self.pending: str = ""  # trigger of a tick asked for while one runs
        self.lagging: dict[tuple[str, str], dict[str, Any]] = {}
        self.retry_delay = 0.0
        self.next_check = 0
        self.last_copy: dict[str, Any] = {}
        self.playing = False
        self.hooked = False  # on the inter-event server's channel opens

    # ----- life cycle and attributes -------------------------------------------------

    def play(self) -> None:
        self.playing = True
        server = self.agent.server
        if not self.hooked and server is not None:
            server.add_channel_listener(self._link_opened, lambda channel: None)
            self.hooked = True
        self.apply()

    def _link_opened(self, channel: Any) -> None:
        """I/O loop thread: a peer identified itself; a yuno gets converged too."""
        if channel.card.get("yuno_id"):
            self.agent.send_event("EV_YUNO_CONNECTED", {"yuno_id": channel.card["yuno_id"]})

    def pause(self) -> None:
        self.playing = False
        self.apply()

    def destroy(self) -> None:
        self.playing = False
        self._stop_watch()
        for f in [*self.waiters, *self.next_waiters]:
            if not f.done():
                f.set_result(envelope(-1, "agent stopping"))

    def writing(self, name: str) -> None:
        """A cert_sync_* attribute was written: check it, then let it act at once."""
        check_attrs(self.agent.gclass.name, self.attrs)
        if name == "cert_sync_store_dir":
            self.snapshot = None  # another store: nothing to compare with yet
        if name in LIVE_ATTRS:
            self.apply()

    def apply(self) -> None:
        """Make the timer and the watch match the attributes."""
        on = self.playing and self.attrs["cert_sync_enabled"]
        self._stop_watch()
        if on and self.attrs["cert_sync_watch"]:

            def changed(paths: list[str]) -> None:  # on the watcher's thread: only post
                self.agent.send_event("EV_CERT_STORE_CHANGED", {"paths": paths})

            self.watcher = DirWatcher(
                [self.store_dir],
                changed,
                debounce=self.attrs["cert_sync_debounce_sec"],
                recursive=True,
                owner=self.agent.full_name,
            )
            self.watcher.start()
        self.retry_delay = 0.0
        self._arm(self.attrs["cert_sync_interval_sec"] if on else 0)
        if on and self.snapshot is None:
            # The baseline later changes are measured from (and a first convergence).
            self.request("start")

    def _stop_watch(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _arm(self, seconds: float) -> None:
        if seconds <= 0:
            self.timer.clear_timeout()
            self.next_check = 0
            return
        self.timer.set_timeout(int(seconds * 1000))
        self.next_check = int(time.time() + seconds)

    @property
    def store_dir(self) -> str:
        return os.path.abspath(self.attrs["cert_sync_store_dir"])

    # ----- triggers ------------------------------------------------------------------

    def on_timer(self) -> int:
        if not self.attrs["cert_sync_enabled"]:
            return 0
        self.request("retry" if self.retry_delay else "timer")
        return 0

    def on_store_changed(self, paths: list[str]) -> int:
        if self.attrs["cert_sync_enabled"] and self.watcher is not None:
            self.request("watch")
        return 0

    def on_yuno_connected(self) -> int:
        if self.playing and self.attrs["cert_sync_enabled"]:
            self.request("connect")
        return 0

    def cmd_now(self) -> concurrent.futures.Future:
        waiter: concurrent.futures.Future = concurrent.futures.Future()
        self.request("now", waiter)
        return waiter

    def request(self, trigger: str, waiter: concurrent.futures.Future | None = None) -> None:
        """Run a tick now, or right after the one running (which may have looked at the
        store before the change that asks for this one)."""
        if waiter is not None:
            self.next_waiters.append(waiter)
        if self.running is not None:
            self.pending = _stronger(self.pending, trigger)
            return
        self._start(trigger)

    def _start(self, trigger: str) -> None:
        runs_copy = trigger in ("timer", "now")
        argv = shlex.split(self.attrs["cert_sync_copy_cmd"]) if runs_copy else []
        plan = _TickPlan(
            trigger=trigger,
            store_dir=self.store_dir,
            copy_argv=argv,
            copy_timeout=float(self.attrs["cert_sync_copy_timeout_sec"]),
            previous=self.snapshot,
            yunos=self.agent.cert_sync_targets(),
            retry_transient=trigger in ("watch", "now"),
            lagging=frozenset(self.lagging),
        )
        self.waiters, self.next_waiters = self.next_waiters, []
        assert self.agent.runtime is not None
        self.running = self.agent.runtime.io_loop.run(run_tick(plan))
        self.running.add_done_callback(self._tick_finished)

    def _tick_finished(self, future: concurrent.futures.Future) -> None:
        """I/O loop thread: hand the result to the actor."""
        try:
            kw: dict[str, Any] = {"result": future.result()}
        except BaseException as exc:  # a bug in the tick must not stop the syncing
            kw = {"error": repr(exc)}
        self.agent.send_event("EV_CERT_SYNC_DONE", kw)

    # ----- a tick is done (actor) -----------------------------------------------------

    def on_done(self, kw: dict[str, Any]) -> int:
        self.running = None
        result: TickResult | None = kw.get("result")
        if result is None:
            self.agent.log_error("cert-sync tick failed", error=kw.get("error"))
            answer = envelope(-1, f"cert-sync tick failed: {kw.get('error')}")
        else:
            self._apply_result(result)
            answer = self._answer(result)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(answer)
        self.waiters = []
        if self.pending or self.next_waiters:
            trigger, self.pending = self.pending or "now", ""
            self._start(trigger)
        elif self.playing and self.attrs["cert_sync_enabled"]:
            interval = self.attrs["cert_sync_interval_sec"]
            if self.lagging:
                # Someone is behind (stopped, refused): look again soon, then less often.
                self.retry_delay = min(interval, MAX_RETRY_DELAY, max(1.0, self.retry_delay * 2))
                self._arm(self.retry_delay)
            else:
                self.retry_delay = 0.0
                self._arm(interval)
        return 0

    def _apply_result(self, r: TickResult) -> None:
        now = int(time.time())
        if r.store_dir == self.store_dir:
            self.snapshot = r.snapshot
        self.last_copy = {k: v for k, v in r.copy.items() if k != "output"}
        self.attrs["cert_sync_last_check"] = now
        if r.changed or r.reloaded:
            self.attrs["cert_sync_last_action"] = now
        if r.copy_failed and not r.changed:
            self.attrs["cert_sync_failures"] += 1
        self.attrs["cert_sync_last_result"] = r.result
        lagging = {}
        for row in r.lagging:
            key = (row["yuno_id"], row["gobj"])
            since = self.lagging.get(key, {}).get("since", now)
            lagging[key] = {
                "yuno_id": row["yuno_id"],
                "yuno": row["yuno"],
                "yuno_role": row["yuno_role"],
                "yuno_name": row["yuno_name"],
                "gobj": row["gobj"],
                "reason": row["comment"],
                "served_fingerprint": row.get("old_fingerprint", ""),
                "disk_fingerprint": row.get("disk_fingerprint", ""),
                "since": since,
            }
        self.lagging = lagging
        failed = [row for row in r.listeners if row["action"] in ("failed", "no-answer")]
        copy_level = {"ok": "info", "skipped": "info", "failed": "error"}.get(
            r.copy["outcome"], "error"
        )
        level = "warning" if failed or copy_level == "error" else "info"
        self.agent.log(
            level,
            "cert-sync tick",
            trigger=r.trigger,
            result=r.result,
            store_dir=r.store_dir,
            changed=r.changed_files[:MAX_LOGGED_CHANGES],
            changed_count=len(r.changed_files),
            copy=r.copy,
            listeners=[_log_row(row) for row in r.listeners],
            lagging=len(lagging),
            seconds=r.seconds,
        )

    def _answer(self, r: TickResult) -> dict:
        yunos: dict[str, dict[str, Any]] = {}
        for row in r.listeners:
            y = yunos.setdefault(
                row["yuno_id"], {"id": row["yuno_id"], "yuno": row["yuno"], "listeners": []}
            )
            y["listeners"].append(_log_row(row))
        comment = "cert-sync tick done: " + (
            "reloaded" if r.result.startswith(RELOADED) else "no change"
        )
        data = {
            "result": r.result,
            "changed": 1 if r.changed else 0,
            "store_dir": r.store_dir,
            "changed_files": r.changed_files,
            "copy": r.copy,
            "yunos": list(yunos.values()),
            "lagging": list(self.lagging.values()),
        }
        return envelope(0, comment, None, data)

    # ----- status -------------------------------------------------------------------

    def status(self) -> dict:
        watch: dict[str, Any]
        if not self.attrs["cert_sync_enabled"]:
            watch = {"watching": [], "watch_note": "off: cert_sync_enabled is 0"}
        elif not self.attrs["cert_sync_watch"]:
            watch = {"watching": [], "watch_note": "off: cert_sync_watch is 0"}
        elif self.watcher is None:
            watch = {"watching": [], "watch_note": "off: the agent is not playing"}
        else:
            s = self.watcher.status()
            notes = [
                f"waiting for {w['dir']} to exist (watching {w['watching']})" for w in s["waiting"]
            ]
            if s["error"]:
                notes.append(f"error: {s['error']}")
            watch = {"watching": s["watching"], "watch_note": "; ".join(notes)}
        data = {
            "enabled": bool(self.attrs["cert_sync_enabled"]),
            "interval_sec": self.attrs["cert_sync_interval_sec"],
            "store_dir": self.attrs["cert_sync_store_dir"],
            "copy_cmd": self.attrs["cert_sync_copy_cmd"],
            "last_check": self.attrs["cert_sync_last_check"],
            "last_action": self.attrs["cert_sync_last_action"],
            "last_result": self.attrs["cert_sync_last_result"],
            "failures": self.attrs["cert_sync_failures"],
            "deploy_hook_last_run": read_stamp(self.attrs["cert_sync_stamp_file"]),
            **watch,
            "lagging": list(self.lagging.values()),
            "next_check": self.next_check,
            "copy_timeout_sec": self.attrs["cert_sync_copy_timeout_sec"],
            "last_copy": self.last_copy,
            "running": self.running is not None,
        }
        return envelope(0, "", None, data)


def read_stamp(path: str) -> int:
    """The deploy hook's stamp: Unix seconds in a file, 0 when missing or not a number."""
    try:
        return int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _stronger(a: str, b: str) -> str:
    """Of two pending triggers, the one that does more (runs the copy, retries)."""
    order = ("", "start", "connect", "retry", "watch", "timer", "now")
    return a if order.index(a) >= order.index(b) else b


def _log_row(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("yuno", "gobj", "action", "old_fingerprint", "new_fingerprint", "comment", "attempts")
    return {k: row[k] for k in keep if k in row and row[k] not in ("", None)}
