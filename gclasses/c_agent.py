"""C_AGENT: launches and supervises yunos and routes commands to them.

The agent is itself a yuno (`configs/agent.json`, role `yuneta_agent`). Its C_IEVENT_SRV
child listens for `ycommand` and for the yunos' links; a yuno that identifies itself with
a `yuno_id` joins the registry. `run-yuno` starts `yuneta run -f ...` as a child process
(in its own session, so it outlives an agent restart) whose config is extended with the
agent's URL; the child connects back. `command-yuno` sends a command to every matching
running yuno at once and gathers one answer per yuno. A periodic check marks dead yunos
not running and logs it. Layer 2 of the certificate life cycle (the `cert_sync_*`
attributes, `cert-sync-now`, `cert-sync-status`) lives in `gclasses/cert_sync.py`; the
agent only declares it and delegates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gclasses import yuno_identity
from gclasses.c_timer import CTimer
from gclasses.cert_sync import CertSync, YunoTarget
from gclasses.cert_sync import check_attrs as check_cert_sync_attrs
from gclasses.yuno_registry import (
    YUNO_SCHEMA,
    YunoEntry,
    YunoRegistry,
    last_log_line,
    proc_start_time,
)
from yuneta import ievent
from yuneta.command import DEFAULT_SERVICE, envelope, then
from yuneta.config import load_config
from yuneta.errors import CommandError, ConfigError
from yuneta.gclass import Attr, Command, Flag, GClassDef, Param, register_gclass
from yuneta.gobj import GObj, create_gobj
from yuneta.persist import write_json_atomic
from yuneta.wsio import Channel, request_all

RWP = Flag.RD | Flag.WR | Flag.PERSIST

FILTERS = (
    Param("str", "id", "", "Yuno id"),
    Param("str", "yuno_role", "", "Yuno role"),
    Param("str", "yuno_name", "", "Yuno name"),
)

GCLASS = GClassDef(
    name="C_AGENT",
    description="Yuneta agent: yuno launcher, supervisor and command router",
    attrs=(
        Attr(
            "real",
            "command_timeout",
            Flag.RD | Flag.WR,
            10.0,
            "Seconds to wait for a yuno's answer",
        ),
        Attr(
            "real",
            "kill_grace",
            Flag.RD | Flag.WR,
            5.0,
            "Seconds a yuno has to stop before SIGKILL",
        ),
        Attr("str", "yunos_cafile", Flag.RD, "", "CA file launched yunos trust for a wss:// agent"),
        Attr(
            "str",
            "yuno_secrets_dir",
            Flag.RD,
            "",
            "Operator-provided secrets of yunos started by hand, <id>.secret "
            "(empty: <work_dir>/yuno-secrets)",
        ),
        Attr(
            "int",
            "max_yuno_inflight",
            Flag.RD | Flag.WR,
            32,
            "Commands waiting for one yuno's answer; beyond, command-yuno answers -1 at once",
        ),
        Attr(
            "int",
            "check_msec",
            Flag.RD,
            1000,
            "Milliseconds between checks of the yunos' processes",
        ),
        Attr(
            "real",
            "dead_retention",
            Flag.RD | Flag.WR,
            86400.0,
            "Seconds a dead yuno stays listed (delete-yuno removes it sooner)",
        ),
        Attr("int", "yunos_running", Flag.RSTATS, 0, "Yunos running now"),
        Attr("int", "yunos_launched", Flag.RSTATS, 0, "Yunos launched by run-yuno"),
        # Layer 2, certificate auto-sync (gclasses/cert_sync.py): SPEC 5 names and types.
        Attr(
            "bool",
            "cert_sync_enabled",
            RWP,
            True,
            "Keep every yuno's TLS listeners on the certificates of the store",
        ),
        Attr(
            "int",
            "cert_sync_interval_sec",
            RWP,
            900,
            "Seconds between sync ticks, the safety net under the watch (at least 30)",
        ),
        Attr("str", "cert_sync_store_dir", RWP, "/yuneta/store/certs", "Certificate store"),
        Attr(
            "str",
            "cert_sync_copy_cmd",
            RWP,
            "/usr/bin/sudo -n /yuneta/store/certs/copy-certs.sh",
            "Command run by timed ticks, as an argument list (no shell); empty: none",
        ),
        Attr(
            "int",
            "cert_sync_copy_timeout_sec",
            RWP,
            60,
            "Seconds the copy command may run; then its process group is killed",
        ),
        Attr("bool", "cert_sync_watch", RWP, True, "Watch the store (inotify): sync in seconds"),
        Attr(
            "real",
            "cert_sync_debounce_sec",
            Flag.RD | Flag.WR,
            0.5,
            "Quiet seconds after the store's last file event before a tick",
        ),
        Attr(
            "str",
            "cert_sync_stamp_file",
            Flag.RD | Flag.WR,
            "/var/lib/yuneta/last-deploy-hook-run",
            "The deploy hook's stamp (deploy_hook_last_run of cert-sync-status)",
        ),
        Attr("int", "cert_sync_last_check", Flag.RSTATS, 0, "Unix time of the last sync tick"),
        Attr("int", "cert_sync_last_action", Flag.RSTATS, 0, "Unix time of the last reload"),
        Attr("str", "cert_sync_last_result", Flag.RSTATS, "", "Result of the last sync tick"),
        Attr("int", "cert_sync_failures", Flag.RSTATS, 0, "Ticks whose copy failed, no change"),
    ),
    commands=(
        Command("list-yunos", "cmd_list_yunos", FILTERS, "List the yunos the agent knows", ("ly",)),
        Command(
            "run-yuno",
            "cmd_run_yuno",
            (
                Param("str", "config", None, "Config file(s), comma-separated, merged in order"),
                Param("dict", "variables", None, "__json_config_variables__ to add (JSON)"),
                Param("real", "wait", 10.0, "Seconds to wait for the yuno to be up (0: no wait)"),
                Param("bool", "allow_duplicate", False, "Launch even if its yuno_name runs"),
            ),
            "Launch a yuno (yuneta run -f ...) supervised by this agent",
        ),
        Command(
            "kill-yuno", "cmd_kill_yuno", FILTERS, "Stop the matching yunos (SIGTERM, then SIGKILL)"
        ),
        Command(
            "delete-yuno",
            "cmd_delete_yuno",
            FILTERS,
            "Remove the matching dead yunos from the registry (its log stays)",
        ),
        Command(
            "command-yuno",
            "cmd_command_yuno",
            (
                Param("str", "command", "", "Command to run in the yunos"),
                *FILTERS,
                Param("str", "service", "", "Service to run it on (__yuno__ the root)"),
                Param("str", "gobj", "", "Gobj (by name) to run it on"),
            ),
            "Send a command to every running yuno that matches; one answer per yuno",
            wild=True,
        ),
        Command(
            "command-agent",
            "cmd_command_agent",
            (
                Param("str", "command", "", "Command"),
                Param("str", "service", "", "Service of the agent"),
            ),
            "Run a command on a service of the agent itself",
            wild=True,
        ),
        Command(
            "view-gobj-tree",
            "cmd_view_agent_tree",
            (Param("str", "attrs", "", "Comma-separated attributes to show"),),
            "View the agent's whole gobj tree",
        ),
        Command(
            "cert-sync-now",
            "cmd_cert_sync_now",
            (),
            "Run one certificate sync tick now; answers when it is done",
        ),
        Command(
            "cert-sync-status",
            "cmd_cert_sync_status",
            (),
            "Certificate sync: settings, last tick, watch, lagging listeners, next check",
        ),
    ),
    input_events=(
        "EV_TIMEOUT_PERIODIC",
        "EV_TIMEOUT",
        "EV_CERT_STORE_CHANGED",
        "EV_CERT_SYNC_DONE",
        "EV_YUNO_CONNECTED",
    ),
    states={
        "ST_IDLE": (
            ("EV_TIMEOUT_PERIODIC", "ac_check_yunos", None),
            ("EV_TIMEOUT", "ac_cert_sync_timer", None),  # the cert-sync timer (one-shot)
            ("EV_CERT_STORE_CHANGED", "ac_cert_store_changed", None),  # the store's watcher
            ("EV_CERT_SYNC_DONE", "ac_cert_sync_done", None),  # a tick ended on the I/O loop
            ("EV_YUNO_CONNECTED", "ac_cert_sync_yuno_connected", None),  # converge it too
        ),
    },
)


@register_gclass
class CAgent(GObj):
    GCLASS = GCLASS

    def mt_create(self) -> None:
        assert self.runtime is not None
        self.registry = YunoRegistry(
            self.runtime.store_dir / "agent" / "yunos.json", self.runtime.work_dir
        )
        self.timer = create_gobj("__check_timer__", CTimer, {}, self)
        self.cert_sync = CertSync(self)

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        check_cert_sync_attrs(GCLASS.name, attrs)

    def mt_start(self) -> None:
        try:
            adopted, lost = self.registry.load()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                str(self.registry.path), "", f"yuno registry unreadable: {exc}"
            ) from None
        for e in adopted:
            self.log("info", "yuno re-adopted", id=e.id, yuno_name=e.yuno_name, pid=e.pid)
        for e in lost:
            self.log("warning", "yuno lost", id=e.id, yuno_name=e.yuno_name, pid=e.pid)
        server = self.server
        if server is not None:
            server.add_card_check(self.claim_identity)
            server.add_channel_listener(self.link_opened, self.link_closed)

    def mt_play(self) -> None:
        self.timer.set_timeout_periodic(self.attrs["check_msec"])
        self.cert_sync.play()

    def mt_pause(self) -> None:
        self.timer.clear_timeout()
        self.cert_sync.pause()

    def mt_writing(self, name: str) -> None:
        if name in ("command_timeout", "kill_grace", "dead_retention") and self.attrs[name] <= 0:
            raise CommandError(f"{name} must be more than 0 seconds")
        if name.startswith("cert_sync_"):
            self.cert_sync.writing(name)
        if name == "max_yuno_inflight" and self.attrs[name] < 1:
            raise CommandError(f"{name} must be at least 1")

    def mt_stats(self) -> dict[str, Any]:
        return {"yunos_running": len(self.registry.match({}, running_only=True))}

    # ----- registry -----------------------------------------------------------------

    @property
    def server(self) -> Any:
        found = self.find(gclass="C_IEVENT_SRV")
        return found[0] if found else None

    def match(self, kw: dict, *, running_only: bool = False) -> list[YunoEntry]:
        return self.registry.match(kw, running_only=running_only)

    def claim_identity(self, channel: Channel, card: Mapping[str, Any]) -> tuple[int, str]:
        """Before the ACK (I/O loop thread; the card's fields are type-checked): a card with
        a `yuno_id` claims that yuno. Judged by `yuno_identity.judge`; if it stands, the
        yuno is registered on this channel at once, so no second claim can slip in."""
        yuno_id = card.get("yuno_id")
        if not yuno_id:
            return 0, ""  # an operator's ycommand, not a yuno
        assert self.runtime is not None
        secrets_dir = self.attrs["yuno_secrets_dir"] or str(self.runtime.work_dir / "yuno-secrets")
        with self.registry.lock:
            entry = self.registry.entries.get(yuno_id)
            try:
                # a launched yuno's secret file is in its entry; else the operator's copy
                expected = (
                    yuno_identity.read_secret(entry.secret_file)
                    if entry is not None and entry.secret_file
                    else None
                ) or yuno_identity.operator_secret(yuno_id, Path(secrets_dir))
            except (OSError, ValueError) as exc:
                verdict = yuno_identity.Verdict(-1, f"Yuno id '{yuno_id}': {exc}")
            else:
                verdict = yuno_identity.judge(yuno_id, entry, card, expected)
                if verdict.result >= 0:
                    self.registry.link_opened(yuno_id, card, channel, verdict.verified)
        if verdict.result < 0:
            self.log(
                "warning",
                "yuno identity claim refused",
                id=yuno_id,
                peer=channel.peer,
                uid=channel.uid,
                reason=verdict.comment,
            )
        return verdict.result, verdict.comment

    def link_opened(self, channel: Channel) -> None:
        """A peer's ACK went out (I/O loop thread): say so if it is a yuno."""
        entry = self.registry.by_channel(channel)
        if entry is None:
            return  # an operator's ycommand, not a yuno
        self.log(
            "info",
            "yuno connected",
            id=entry.id,
            yuno_role=entry.yuno_role,
            yuno_name=entry.yuno_name,
            pid=entry.pid,
            launched=entry.launched,
            verified=entry.verified,
        )

    def link_closed(self, channel: Channel) -> None:
        """A peer's link closed (I/O loop thread)."""
        closed, pruned = self.registry.link_closed(channel)
        for e in closed:
            self.log(
                "warning",
                "yuno disconnected",
                id=e.id,
                yuno_role=e.yuno_role,
                yuno_name=e.yuno_name,
            )
        if pruned:
            self.log("info", "departed unverified yunos forgotten", count=len(pruned))

    def ac_check_yunos(self, event: str, kw: dict, src: Any) -> int:
        died, pruned = self.registry.check(float(self.attrs["dead_retention"]))
        for e in pruned:
            self.log("info", "dead yuno pruned", id=e.id, yuno_name=e.yuno_name)
        for e in died:
            self.log(
                "warning",
                "yuno died",
                id=e.id,
                yuno_role=e.yuno_role,
                yuno_name=e.yuno_name,
                pid=e.pid,
                exit_code=e.exit_code,
            )
        return 0

    # ----- commands -----------------------------------------------------------------

    def cmd_list_yunos(self, cmd: str, kw: dict, src: Any) -> dict:
        rows = [e.row() for e in self.match(kw)]
        return envelope(0, f"{len(rows)} yuno(s)", YUNO_SCHEMA, rows)

    def cmd_run_yuno(self, cmd: str, kw: dict, src: Any) -> concurrent.futures.Future | dict:
        files = [f.strip() for f in (kw.get("config") or "").split(",") if f.strip()]
        if not files:
            raise CommandError("run-yuno: config=FILE[,FILE...] is required")
        files = [str(Path(f).resolve()) for f in files]
        for f in files:
            if not os.path.isfile(f):
                raise CommandError(f"run-yuno: config file not found: {f}")
        server = self.server
        if server is None:
            raise CommandError("run-yuno: the agent has no inter-event server for yunos to join")
        assert self.runtime is not None
        yuno_id = uuid.uuid4().hex[:12]
        link: dict[str, Any] = {"yuno_id": yuno_id, "agent_url": server.real_url}
        if server.attrs["use_ssl"]:
            link.update(agent_jwt=server.yuno_credential(), agent_cafile=self.attrs["yunos_cafile"])
        override = {
            "yuno": link,
            # The link above sets yuno.agent_url itself: a variable would be unknown to any
            # config that does not use it.
            "__json_config_variables__": dict(kw.get("variables") or {}),
        }
        # The yuno would refuse a bad config the same way: refuse it here, before a process
        # exists, and learn the role and name its directory is named after.
        try:
            config = load_config(files, extra=[override])
        except ConfigError as exc:
            raise CommandError(f"run-yuno: {exc}") from None
        role = str(config.yuno.get("yuno_role", ""))
        name = str(config.yuno.get("yuno_name", ""))
        running = self.registry.same_name(role, name)
        if running and not kw.get("allow_duplicate"):
            raise CommandError(
                f"run-yuno: yuno {role}^{name} already runs (id {running[0].id}, "
                f"pid {running[0].pid}); kill-yuno it first or give allow_duplicate=true"
            )
        run_dir = self.registry.run_dir(role, name)
        # The yuno's own secret, in a 0600 file its config names: never in argv or a log.
        secret_file = run_dir / f"{yuno_id}.secret"
        yuno_identity.write_secret(secret_file, yuno_identity.new_secret())
        link["agent_secret_file"] = str(secret_file)
        override_path = run_dir / f"override-{yuno_id}.json"
        # 0600: it may carry the token the yuno presents to this agent.
        write_json_atomic(override_path, override, mode=0o600)
        argv = [sys.executable, "-m", "yuneta", "run"]
        for f in [*files, str(override_path)]:
            argv += ["-f", f]
        log_path = run_dir / "yuno.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(  # an argument list: never a shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                cwd=os.getcwd(),
            )
        entry = YunoEntry(
            id=yuno_id,
            yuno_role=role,
            yuno_name=name,
            config=files,
            pid=process.pid,
            running=True,
            launched=True,
            process=process,
            proc_start=proc_start_time(process.pid),
            started_at=time.time(),
            run_dir=str(run_dir),
            override=str(override_path),
            secret_file=str(secret_file),
        )
        self.registry.add(entry)
        self.attrs["yunos_launched"] += 1
        self.log(
            "info", "yuno launched", id=yuno_id, pid=process.pid, config=files, log=str(log_path)
        )
        wait = float(kw.get("wait") or 0.0)
        if wait <= 0:
            return envelope(
                0,
                f"yuno {entry.label} launched, pid {entry.pid} (not waited for)",
                YUNO_SCHEMA,
                [entry.row()],
            )
        return then(
            self.runtime.io_loop.run(_wait_connected(entry, wait)),
            lambda _: self._launch_answer(entry, log_path, wait),
        )

    def _launch_answer(self, entry: YunoEntry, log_path: Path, wait: float) -> dict:
        """Success only once the yuno is up: its link identifies itself after every service
        started (C_IEVENT_CLI connects on play)."""
        if entry.connected:
            return envelope(
                0, f"yuno {entry.label} running, pid {entry.pid}", YUNO_SCHEMA, [entry.row()]
            )
        code = entry.exited()
        if code is not False:
            self.registry.mark_exited(entry, code)
            self.log("error", "yuno exited at start", id=entry.id, exit_code=code)
            return envelope(
                -1,
                f"yuno {entry.label} exited at start with code {code}: {last_log_line(log_path)}"
                f" (log: {log_path})",
                YUNO_SCHEMA,
                [entry.row()],
            )
        return envelope(
            -1,
            f"yuno {entry.label} not up after {wait:g} s (pid {entry.pid} still starting; "
            f"log: {log_path})",
            YUNO_SCHEMA,
            [entry.row()],
        )

    def cmd_kill_yuno(self, cmd: str, kw: dict, src: Any) -> concurrent.futures.Future:
        if not any(kw.get(k) for k in ("id", "yuno_role", "yuno_name")):
            raise CommandError("kill-yuno: give id=, yuno_role= or yuno_name=")
        targets = self.match(kw, running_only=True)
        if not targets:
            raise CommandError("Yuno not found")
        grace = float(self.attrs["kill_grace"])
        assert self.runtime is not None
        return then(
            self.runtime.io_loop.run(
                _stop_all(targets, grace, self._shutdown_gate, self.registry.lock)
            ),
            lambda _: self._kill_answer(targets),
        )

    def cmd_delete_yuno(self, cmd: str, kw: dict, src: Any) -> dict:
        if not any(kw.get(k) for k in ("id", "yuno_role", "yuno_name")):
            raise CommandError("delete-yuno: give id=, yuno_role= or yuno_name=")
        targets = self.match(kw)
        if not targets:
            raise CommandError("Yuno not found")
        running = [e.label for e in targets if e.running]
        if running:
            raise CommandError(
                f"delete-yuno: still running (kill-yuno first): {', '.join(running)}"
            )
        self.registry.remove(targets)
        for e in targets:
            self.log("info", "yuno deleted", id=e.id, yuno_role=e.yuno_role, yuno_name=e.yuno_name)
        return envelope(
            0, f"{len(targets)} yuno(s) deleted", YUNO_SCHEMA, [e.row() for e in targets]
        )

    def _shutdown_gate(self, e: YunoEntry) -> ievent.Gate:
        return self._gate(e, "__yuno__")

    def _kill_answer(self, targets: list[YunoEntry]) -> dict:
        stopped: list[YunoEntry] = []
        alive: list[YunoEntry] = []
        for e in targets:
            (alive if e.running else stopped).append(e)
        for e in stopped:
            self.registry.mark_exited(e, e.exit_code)
        for e in stopped:
            self.log(
                "info",
                "yuno killed",
                id=e.id,
                yuno_role=e.yuno_role,
                yuno_name=e.yuno_name,
                pid=e.pid,
                exit_code=e.exit_code,
            )
        for e in alive:
            self.log(
                "error", "yuno did not stop", id=e.id, yuno_role=e.yuno_role, yuno_name=e.yuno_name
            )
        names = ", ".join(e.label for e in stopped)
        if alive:
            return envelope(
                -1,
                f"{len(alive)} yuno(s) did not stop: {', '.join(e.label for e in alive)}",
                YUNO_SCHEMA,
                [e.row() for e in targets],
            )
        return envelope(
            0, f"{len(stopped)} yuno(s) killed: {names}", YUNO_SCHEMA, [e.row() for e in targets]
        )

    def cmd_command_yuno(self, cmd: str, kw: dict, src: Any) -> concurrent.futures.Future:
        command = (kw.pop("command", "") or "").strip()
        if not command:
            raise CommandError("What command?")
        filters = {k: kw.pop(k, "") for k in ("id", "yuno_role", "yuno_name")}
        targets = [e for e in self.match(filters, running_only=True) if e.connected]
        if not targets:
            raise CommandError("Yuno not found")
        return self.command_yunos(targets, command, kw)

    def _gate(self, e: YunoEntry, service: str) -> ievent.Gate:
        assert self.runtime is not None and self.runtime.root is not None
        root = self.runtime.root.attrs
        return ievent.Gate(
            src_yuno=root["yuno_name"],
            src_role=root["yuno_role"],
            src_service=self.name,
            dst_yuno=e.yuno_name,
            dst_role=e.yuno_role,
            dst_service=service or DEFAULT_SERVICE,
        )

    def command_yunos(
        self, targets: list[YunoEntry], command: str, kw: dict
    ) -> concurrent.futures.Future:
        """Send `command` to every target at once; a Future of one envelope gathering one
        answer per yuno. The actor is free while the yunos answer."""
        service = kw.pop("service", "") or ""
        gobj = kw.pop("gobj", "") or ""
        params = dict(kw)
        if service:
            params["service"] = service
        if gobj:
            params["__gobj__"] = gobj
        assert self.runtime is not None
        calls = [(e.channel, self._gate(e, service)) for e in targets]
        verb = command.split(" ", 1)[0]
        pending = request_all(
            self.runtime.io_loop,
            calls,
            command,
            params,
            float(self.attrs["command_timeout"]),
            max_pending=self.attrs["max_yuno_inflight"],
        )
        return then(pending, lambda answers: self._gather(targets, answers, verb, service, gobj))

    def _gather(
        self, targets: list[YunoEntry], answers: list[dict], verb: str, service: str, gobj: str
    ) -> dict:
        data = [
            {
                "id": e.id,
                "yuno_role": e.yuno_role,
                "yuno_name": e.yuno_name,
                "result": a.get("result", -1),
                "comment": a.get("comment") or "",
                "schema": a.get("schema"),
                "data": a.get("data"),
            }
            for e, a in zip(targets, answers, strict=True)
        ]
        failed = sum(1 for d in data if d["result"] < 0)
        if len(data) == 1:
            label, own = f"{data[0]['yuno_role']}^{data[0]['yuno_name']}", data[0]["comment"]
            comment = own if own.startswith(label) else f"{label}: {own}"
        else:
            comment = f"{len(data)} yuno(s) answered, {failed} failed"
        self.log(
            "warning" if failed else "info",
            "command-yuno",
            command=verb,
            service=service,
            target_gobj=gobj,
            yunos=len(data),
            failed=failed,
        )
        return envelope(-1 if failed else 0, comment, None, data)

    def cmd_command_agent(self, cmd: str, kw: dict, src: Any) -> dict:
        command = (kw.pop("command", "") or "").strip()
        if not command:
            raise CommandError("What command?")
        service = kw.pop("service", "") or DEFAULT_SERVICE
        assert self.runtime is not None
        return self.runtime.route_command(command, kw, service=service, src=self)

    def cmd_view_agent_tree(self, cmd: str, kw: dict, src: Any) -> dict:
        # The built-in view-gobj-tree, from the root: tree_node only reads, any thread may.
        assert self.runtime is not None and self.runtime.root is not None
        return self.runtime.root.cmd_view_gobj_tree(cmd, kw, src)

    # ----- certificate sync (gclasses/cert_sync.py) -----------------------------------

    def ac_cert_sync_timer(self, event: str, kw: dict, src: Any) -> int:
        return self.cert_sync.on_timer()

    def ac_cert_store_changed(self, event: str, kw: dict, src: Any) -> int:
        return self.cert_sync.on_store_changed(kw.get("paths") or [])

    def ac_cert_sync_done(self, event: str, kw: dict, src: Any) -> int:
        return self.cert_sync.on_done(kw)

    def ac_cert_sync_yuno_connected(self, event: str, kw: dict, src: Any) -> int:
        return self.cert_sync.on_yuno_connected()

    def cmd_cert_sync_now(self, cmd: str, kw: dict, src: Any) -> concurrent.futures.Future:
        return self.cert_sync.cmd_now()

    def cmd_cert_sync_status(self, cmd: str, kw: dict, src: Any) -> dict:
        return self.cert_sync.status()

    def cert_sync_targets(self) -> list[YunoTarget]:
        """Every running, connected yuno, and the agent itself, as cert-sync can ask them."""
        assert self.runtime is not None and self.runtime.root is not None
        timeout = float(self.attrs["command_timeout"])
        targets = [
            YunoTarget(
                e.id, e.yuno_role, e.yuno_name, _channel_asker(e, self._gate(e, ""), timeout)
            )
            for e in self.match({}, running_only=True)
            if e.connected
        ]
        root = self.runtime.root.attrs
        own = YunoTarget(
            root["yuno_id"], root["yuno_role"], root["yuno_name"], _local_asker(self.runtime)
        )
        return [own, *targets]

    def mt_destroy(self) -> None:
        self.cert_sync.destroy()
        # Yunos outlive the agent on purpose (they reconnect to the next one, which re-adopts
        # them from the saved registry); only reap.
        self.registry.check(float(self.attrs["dead_retention"]))


async def _wait_connected(entry: YunoEntry, wait: float) -> None:
    """Until the launched yuno's link is up, its process has exited, or `wait` seconds."""
    deadline = time.monotonic() + max(0.0, wait)
    while time.monotonic() < deadline and not entry.connected:
        if entry.exited() is not False:
            return
        await asyncio.sleep(0.05)


async def _stop_all(
    targets: list[YunoEntry],
    grace: float,
    gate: Callable[[YunoEntry], ievent.Gate],
    lock: AbstractContextManager[Any],
) -> None:
    """Stop every target at once: SIGTERM (then SIGKILL) for the agent's own children;
    yunos started by hand are asked to shut down over their link. The agent never signals
    a pid it only heard of: an identity card's pid proves nothing. Runs on the I/O loop:
    entries are written under the registry's `lock`, as everywhere else."""

    async def stop(e: YunoEntry) -> None:
        if e.process is not None:
            e.process.terminate()
            loop = asyncio.get_running_loop()
            try:
                code = await loop.run_in_executor(None, e.process.wait, grace)
            except subprocess.TimeoutExpired:
                e.process.kill()
                code = await loop.run_in_executor(None, e.process.wait, grace)
            with lock:
                e.exit_code, e.running = code, False
            return
        channel = e.channel
        if channel is None:
            return
        await channel.request("shutdown", {"service": "__yuno__"}, gate(e), grace)
        deadline = time.monotonic() + grace
        while e.channel is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with lock:
            if e.channel is None:
                e.running = False

    await asyncio.gather(*(stop(e) for e in targets))


def _channel_asker(e: YunoEntry, gate: ievent.Gate, timeout: float) -> Any:
    """cert-sync's way to command one yuno over its link (runs in the I/O loop)."""
    channel = e.channel

    async def ask(command: str, kw: dict) -> dict:
        if channel is None:
            return envelope(-1, "Not connected")
        return await channel.request(command, kw, gate, timeout)

    return ask


def _local_asker(runtime: Any) -> Any:
    """cert-sync's way to command the agent's own yuno (a worker thread asks the actor)."""

    async def ask(command: str, kw: dict) -> dict:
        def call() -> dict:
            name = kw.get("__gobj__")
            if name:
                return runtime.route_command(command, gobj=name)
            return runtime.route_command(command, service="__yuno__")

        return await asyncio.get_running_loop().run_in_executor(None, call)

    return ask
