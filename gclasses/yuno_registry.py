"""The agent's registry of yunos: who they are, their processes, kept across agent restarts.

C_AGENT owns one `YunoRegistry`; this module holds the logic so the gclass keeps to its
table and thin hooks. The registry is persisted atomically (`yuneta.persist`) after every
change, so an agent restart finds what it launched: a yuno still alive is re-adopted when
its pid passes a check (same process start time and our own command line, so a recycled
pid is never taken for it), else it is marked lost. Dead entries stay visible, with their
exit code, for `retention` seconds, or until `delete-yuno` removes them.

Each launched yuno has a stable per-name directory, `<work_dir>/yunos/<role>^<name>/`,
holding its log (`yuno.log`, appended across launches) and its agent override file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yuneta.persist import read_json, write_json_atomic
from yuneta.wsio import Channel

STATES = ("starting", "running", "exited", "lost")

YUNO_SCHEMA = [
    {"id": "id", "header": "Id", "fillspace": 12},
    {"id": "yuno_role", "header": "Role", "fillspace": 16},
    {"id": "yuno_name", "header": "Name", "fillspace": 14},
    {"id": "pid", "header": "Pid", "fillspace": 8},
    {"id": "running", "header": "Running", "fillspace": 8},
    {"id": "connected", "header": "Connected", "fillspace": 10},
    {"id": "launched", "header": "Launched", "fillspace": 9},
    {"id": "verified", "header": "Verified", "fillspace": 9},
    {"id": "state", "header": "State", "fillspace": 8},
    {"id": "exit_code", "header": "Exit", "fillspace": 5},
    {"id": "config", "header": "Config", "fillspace": 40},
]

# What survives an agent restart (the rest is about live links and processes).
_PERSISTED = (
    "id",
    "yuno_role",
    "yuno_name",
    "config",
    "pid",
    "launched",
    "running",
    "exit_code",
    "lost",
    "proc_start",
    "started_at",
    "ended_at",
    "run_dir",
    "override",
    "secret_file",
)


#: Departed yunos that never proved an id (hand-started without a secret file, or any
#: admitted peer's claim) kept for list-yunos; older ones are forgotten at once.
MAX_GONE_UNVERIFIED = 64


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone or a
    zombie: with the pid, it names one process for good (a recycled pid starts later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class AdoptedProcess:
    """A yuno launched by an earlier agent: not our child, so no wait(); it is watched and
    signalled only while `/proc` still shows the very process that was launched. Its exit
    code is unknowable (its parent was the earlier agent): `returncode` is None."""

    def __init__(self, pid: int, start: int) -> None:
        self.pid, self.start = pid, start
        self.gone = False

    def alive(self) -> bool:
        if not self.gone and proc_start_time(self.pid) != self.start:
            self.gone = True
        return not self.gone

    def poll(self) -> int | None:
        return None  # never an exit code; callers ask alive()

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)


@dataclass
class YunoEntry:
    """What the agent knows of one yuno."""

    id: str
    yuno_role: str = ""
    yuno_name: str = ""
    config: list[str] = field(default_factory=list)
    pid: int = 0
    running: bool = False
    launched: bool = False
    verified: bool = False  # presented the secret the agent knows for its id (yuno_identity)
    channel: Channel | None = None
    process: subprocess.Popen | AdoptedProcess | None = None
    exit_code: int | None = None
    lost: bool = False  # gone while no agent watched it (exit code unknown)
    proc_start: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    run_dir: str = ""
    override: str = ""
    secret_file: str = ""  # the launched yuno's secret (gclasses/yuno_identity.py)

    @property
    def connected(self) -> bool:
        return self.channel is not None

    @property
    def label(self) -> str:
        return f"{self.yuno_role}^{self.yuno_name}"

    @property
    def state(self) -> str:
        if self.running:
            return "running" if self.connected or not self.launched else "starting"
        return "lost" if self.lost else "exited"

    def exited(self) -> int | None:
        """Whether the launched process is gone: its exit code (None if unknowable), or
        False while it runs. Only processes the agent launched or verified are asked."""
        if isinstance(self.process, AdoptedProcess):
            return False if self.process.alive() else None
        if isinstance(self.process, subprocess.Popen):
            code = self.process.poll()
            return False if code is None else code
        return False

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "yuno_role": self.yuno_role,
            "yuno_name": self.yuno_name,
            "pid": self.pid,
            "running": self.running,
            "connected": self.connected,
            "launched": self.launched,
            "verified": self.verified,
            "state": self.state,
            "exit_code": self.exit_code,
            "config": ",".join(self.config),
        }


class YunoRegistry:
    """The entries by yuno id, their persistence and their retention. Touched by the I/O
    loop (links) and by the agent's actor (commands, periodic check): one lock."""

    def __init__(self, path: Path, work_dir: Path) -> None:
        self.path = path
        self.work_dir = work_dir
        self.lock = threading.RLock()
        self.entries: dict[str, YunoEntry] = {}

    # ----- persistence --------------------------------------------------------------

    def load(self) -> tuple[list[YunoEntry], list[YunoEntry]]:
        """Read the saved registry: (re-adopted, lost) launched yunos. An unreadable file is
        an error for the caller (starting empty would forget live yunos silently)."""
        data = read_json(self.path, {"yunos": []})
        if not isinstance(data, dict) or not isinstance(data.get("yunos"), list):
            raise ValueError('expected {"yunos": [...]}')
        adopted, lost = [], []
        with self.lock:
            for saved in data["yunos"]:
                e = YunoEntry(**{k: saved[k] for k in _PERSISTED if k in saved})
                if e.running and e.launched:
                    if e.proc_start is not None and self._ours(e):
                        e.process = AdoptedProcess(e.pid, e.proc_start)
                        adopted.append(e)
                    else:
                        e.running, e.lost, e.ended_at = False, True, time.time()
                        lost.append(e)
                elif e.running:  # started by hand: running again once its link is back
                    e.running = False
                self.entries[e.id] = e
        self.save()
        return adopted, lost

    def _ours(self, e: YunoEntry) -> bool:
        """The pid is still the process launched for this entry: same start time, and its
        command line names this entry's override file."""
        if proc_start_time(e.pid) != e.proc_start:
            return False
        try:
            argv = Path(f"/proc/{e.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(e.override) and e.override.encode() in argv

    def save(self) -> None:
        with self.lock:
            rows = [{k: getattr(e, k) for k in _PERSISTED} for e in self.entries.values()]
        write_json_atomic(self.path, {"yunos": rows})

    # ----- entries ------------------------------------------------------------------

    def run_dir(self, role: str, name: str) -> Path:
        """The stable per-name directory of a launched yuno (its log and override)."""
        safe = "".join(c if c.isalnum() or c in "-_.^" else "_" for c in f"{role}^{name}")
        return self.work_dir / "yunos" / safe

    def add(self, entry: YunoEntry) -> None:
        with self.lock:
            self.entries[entry.id] = entry
        self.save()

    def same_name(self, role: str, name: str) -> list[YunoEntry]:
        """Running entries with this role and name (case-insensitive, as the filters)."""
        with self.lock:
            return [
                e
                for e in self.entries.values()
                if e.running
                and e.yuno_role.lower() == role.lower()
                and e.yuno_name.lower() == name.lower()
            ]

    def match(self, kw: dict, *, running_only: bool = False) -> list[YunoEntry]:
        """Entries matching the id / yuno_role / yuno_name filters (case-insensitive)."""

        def same(a: str, b: str) -> bool:
            return not b or a.lower() == b.lower()

        with self.lock:
            return [
                e
                for e in self.entries.values()
                if same(e.id, kw.get("id", ""))
                and same(e.yuno_role, kw.get("yuno_role", ""))
                and same(e.yuno_name, kw.get("yuno_name", ""))
                and (e.running or not running_only)
            ]

    def mark_exited(self, e: YunoEntry, code: int | None) -> None:
        with self.lock:
            e.running, e.exit_code, e.ended_at = False, code, time.time()
        self.save()

    def check(self, retention: float) -> tuple[list[YunoEntry], list[YunoEntry]]:
        """Periodic: (died, pruned). Launched yunos whose process ended are marked exited;
        dead entries older than `retention` seconds are removed."""
        died, pruned = [], []
        now = time.time()
        with self.lock:
            for e in self.entries.values():
                if e.running and e.process is not None:
                    code = e.exited()
                    if code is not False:
                        e.running, e.exit_code, e.ended_at = False, code, now
                        died.append(e)
            for e in list(self.entries.values()):
                if not e.running and e.ended_at and now - e.ended_at >= retention:
                    pruned.append(self.entries.pop(e.id))
        if died or pruned:
            self.save()
        for e in pruned:
            self._forget(e)
        return died, pruned

    def remove(self, entries: list[YunoEntry]) -> None:
        with self.lock:
            for e in entries:
                self.entries.pop(e.id, None)
        self.save()
        for e in entries:
            self._forget(e)

    def _forget(self, e: YunoEntry) -> None:
        """The override file may carry the yuno's token, the secret file proves its id: both
        go with its entry. The log stays."""
        for path in (e.override, e.secret_file):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # ----- links --------------------------------------------------------------------

    def by_channel(self, channel: Channel) -> YunoEntry | None:
        with self.lock:
            return next((e for e in self.entries.values() if e.channel is channel), None)

    def link_opened(
        self, yuno_id: str, card: Mapping[str, Any], channel: Channel, verified: bool
    ) -> YunoEntry:
        """A yuno's identity claim stood (I/O loop thread, `yuno_identity.judge`). A launched
        entry keeps the pid the agent knows: an identity card's pid proves nothing."""
        with self.lock:
            e = self.entries.get(yuno_id) or YunoEntry(id=yuno_id, started_at=time.time())
            e.yuno_role = str(card.get("yuno_role", ""))
            e.yuno_name = str(card.get("yuno_name", ""))
            if e.process is None:
                e.pid = int(card.get("pid") or e.pid or 0)
            if not e.config and isinstance(card.get("config_files"), list):
                e.config = [str(c) for c in card["config_files"]]
            e.channel = channel
            e.verified = verified
            e.running, e.lost, e.ended_at = True, False, 0.0
            self.entries[yuno_id] = e
        return e

    def link_closed(self, channel: Channel) -> tuple[list[YunoEntry], list[YunoEntry]]:
        """A link closed (I/O loop thread): (closed, pruned). A yuno the agent did not launch
        is known only through its link, so without it the agent no longer counts it as
        running. Any admitted peer can claim a fresh id and leave, so such departed,
        unverified entries are capped at MAX_GONE_UNVERIFIED, oldest out first: claims
        cannot grow the registry (and every save of it) without bound."""
        with self.lock:
            entries = [e for e in self.entries.values() if e.channel is channel]
            for e in entries:
                e.channel = None
                if e.process is None:
                    e.running, e.ended_at = False, time.time()
            gone = sorted(
                (
                    e
                    for e in self.entries.values()
                    if not (e.running or e.launched or e.verified or e.connected)
                ),
                key=lambda e: e.ended_at,
            )
            pruned = gone[: max(0, len(gone) - MAX_GONE_UNVERIFIED)]
            for e in pruned:
                del self.entries[e.id]
        if pruned:
            self.save()
        return entries, pruned


def last_log_line(path: Path) -> str:
    """The last line of a yuno's log, readable: a JSON line as `msg: error` (the fields an
    operator needs), anything else as it is. Reads only the file's tail."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    if not lines:
        return ""
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        return last[-600:]
    if not isinstance(record, dict):
        return last[-600:]
    text = str(record.get("msg", ""))
    detail = record.get("error") or record.get("exception")
    return (f"{text}: {detail}" if detail else text)[-600:]
