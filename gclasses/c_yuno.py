"""C_YUNO: the root gobj of every yuno, and its certificate duties.

Besides identity (role, name, id, start time, directories) and the services view, the
yuno owns two of the certificate life cycle's duties: `reload-certs`, which walks every
running TLS listener and runs the listener's own `reload-certs`, and the expiry monitor
(layer 3), which every `timeout_cert_check` seconds reads each listener's `view-cert`
and logs a warning or a critical line. The monitor only alerts; it never reloads.
"""

from __future__ import annotations

import time
from typing import Any

from gclasses.c_timer import CTimer
from gclasses.tls_listener import FORGET_SESSIONS, TlsListener
from yuneta.command import envelope
from yuneta.gclass import Attr, Command, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj, create_gobj

RW = Flag.RD | Flag.WR

GCLASS = GClassDef(
    name="C_YUNO",
    description="The yuno: root of the gobj tree",
    attrs=(
        Attr("str", "yuno_role", Flag.RD, "yuno", "Role of the yuno"),
        Attr("str", "yuno_name", Flag.RD, "", "Name of the yuno"),
        Attr("str", "yuno_id", Flag.RD, "", "Id of the yuno (given by the agent, or random)"),
        Attr("str", "yuno_version", Flag.RD, "", "Version of the yuno"),
        Attr("str", "realm_name", Flag.RD, "", "Realm the yuno belongs to"),
        Attr("int", "start_time", Flag.RD, 0, "Unix time the yuno started"),
        Attr("str", "work_dir", Flag.RD, "", "Work directory"),
        Attr("str", "store_dir", Flag.RD, "", "Store directory (persistent attributes)"),
        Attr("str", "log_dir", Flag.RD, "", "Log directory"),
        Attr("list", "config_files", Flag.RD, [], "Config files this yuno was started from"),
        Attr("str", "agent_url", Flag.RD, "", "URL of the agent to connect to; empty: none"),
        Attr("str", "agent_jwt", Flag.NONE, "", "Token presented to a wss:// agent (never shown)"),
        Attr(
            "str",
            "agent_secret_file",
            Flag.RD,
            "",
            "File with this yuno's secret, proving its yuno_id to the agent (0600)",
        ),
        Attr(
            "str",
            "agent_cafile",
            Flag.RD,
            "",
            "CA file to verify a wss:// agent (empty: system CAs)",
        ),
        Attr("int", "timeout_periodic", RW, 1000, "Milliseconds between periodic ticks"),
        Attr(
            "int",
            "timeout_cert_check",
            RW | Flag.PERSIST,
            3600,
            "Seconds between certificate expiry scans (0 disables)",
        ),
        Attr(
            "int",
            "cert_warn_days",
            RW | Flag.PERSIST,
            7,
            "days_remaining at or below this logs a warning",
        ),
        Attr(
            "int",
            "cert_critical_days",
            RW | Flag.PERSIST,
            2,
            "days_remaining at or below this logs critical",
        ),
        Attr("int", "last_cert_check", Flag.RSTATS, 0, "Unix time of the last expiry scan"),
        Attr("int", "periodic_ticks", Flag.RSTATS, 0, "Periodic ticks since start"),
    ),
    commands=(
        Command(
            "view-services",
            "cmd_view_services",
            (),
            "List the services of this yuno",
            ("services",),
        ),
        Command(
            "reload-certs",
            "cmd_reload_certs",
            (FORGET_SESSIONS,),
            "Reload the certificates of every running TLS listener",
        ),
        Command(
            "shutdown", "cmd_shutdown", (), "Stop this yuno: every gobj bottom-up, then exit 0"
        ),
        Command(
            "view-cert",
            "cmd_view_cert",
            (),
            "Certificates served by every TLS listener of this yuno",
        ),
        Command(
            "cert-expiry-status",
            "cmd_cert_expiry_status",
            (),
            "Certificate of every TLS listener with days remaining, and the minimum",
        ),
    ),
    input_events=("EV_TIMEOUT_PERIODIC",),
    states={
        "ST_IDLE": (("EV_TIMEOUT_PERIODIC", "ac_timeout_periodic", None),),
    },
)


@register_gclass
class CYuno(GObj):
    GCLASS = GCLASS

    def mt_create(self) -> None:
        self._last_cert_check = 0.0
        self.timer = create_gobj("__periodic_timer__", CTimer, {}, self)
        self.agent_link: GObj | None = None
        if self.attrs["agent_url"]:
            self.agent_link = create_gobj(
                "__agent_link__",
                "C_IEVENT_CLI",
                {
                    "url": self.attrs["agent_url"],
                    "jwt": self.attrs["agent_jwt"],
                    "cafile": self.attrs["agent_cafile"],
                    "secret_file": self.attrs["agent_secret_file"],
                },
                self,
            )

    def mt_play(self) -> None:
        # The first scan comes with the first tick: a certificate that expires tomorrow
        # must not wait an hour to be reported.
        self._last_cert_check = float("-inf")
        self.timer.set_timeout_periodic(self.attrs["timeout_periodic"])
        if self.agent_link is not None:
            self.agent_link.play()  # the runtime plays the root after every service started

    def mt_pause(self) -> None:
        self.timer.clear_timeout()

    @property
    def role_name(self) -> str:
        return f"{self.attrs['yuno_role']}^{self.attrs['yuno_name']}"

    # ----- actions ------------------------------------------------------------------

    def ac_timeout_periodic(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["periodic_ticks"] += 1
        period = self.attrs["timeout_cert_check"]
        if period > 0 and time.monotonic() - self._last_cert_check >= period:
            self._last_cert_check = time.monotonic()
            self.check_cert_expiry()
        return 0

    # ----- certificates -------------------------------------------------------------

    def tls_listeners(self) -> list[GObj]:
        """Every running descendant listener with TLS enabled. A listener is one because its
        gclass mixes in `TlsListener`, so a new one (C_UDP_S) is found without a list here."""
        return [
            g
            for g in self.walk("top_to_bottom")
            if isinstance(g, TlsListener) and g.running and g.attrs.get("use_ssl")
        ]

    def check_cert_expiry(self) -> list[dict]:
        """Layer 3: log critical / warning for listeners whose certificate is near expiry.
        From any thread: it runs on the yuno's actor, which alone writes its attributes."""
        result: list[dict] = self._call(self._check_cert_expiry)
        return result

    def _check_cert_expiry(self) -> list[dict]:
        self.attrs["last_cert_check"] = int(time.time())
        warn, critical = self.attrs["cert_warn_days"], self.attrs["cert_critical_days"]
        details = []
        for listener in self.tls_listeners():
            answer = listener.command("view-cert")
            if answer["result"] < 0:
                self.log(
                    "error",
                    "cannot read listener certificate",
                    listener=listener.name,
                    comment=answer["comment"],
                )
                continue
            info = answer["data"]
            details.append({"gobj": listener.name, **info})
            days = info.get("days_remaining")
            fields = {
                "listener": listener.name,
                "subject": info.get("subject"),
                "not_after": info.get("not_after"),
                "days_remaining": days,
            }
            if days is None:
                continue
            if days <= critical:
                self.log("critical", "TLS certificate expires soon (critical)", **fields)
            elif days <= warn:
                self.log("warning", "TLS certificate expires soon (warning)", **fields)
        return details

    def cmd_reload_certs(self, cmd: str, kw: dict, src: Any) -> dict:
        details = []
        for listener in self.tls_listeners():
            answer = listener.command(
                "reload-certs", {"forget-sessions": bool(kw.get("forget-sessions"))}, src=self
            )
            details.append(
                {"gobj": listener.name, "result": answer["result"], "comment": answer["comment"]}
            )
        reloaded = sum(1 for d in details if d["result"] >= 0)
        failed = len(details) - reloaded
        comment = f"{self.role_name}: reloaded {reloaded} TLS listener(s), {failed} failed"
        self.log("warning" if failed else "info", "reload-certs", reloaded=reloaded, failed=failed)
        return envelope(
            -1 if failed else 0,
            comment,
            None,
            {"reloaded": reloaded, "failed": failed, "details": details},
        )

    def listener_certs(self) -> list[dict]:
        """`view-cert` data of every running TLS listener, with the listener's name."""
        details = []
        for listener in self.tls_listeners():
            answer = listener.command("view-cert", src=self)
            if answer["result"] >= 0 and isinstance(answer["data"], dict):
                details.append({"gobj": listener.name, **answer["data"]})
        return details

    def cmd_view_cert(self, cmd: str, kw: dict, src: Any) -> dict:
        details = self.listener_certs()
        schema = [
            {"id": "gobj", "header": "Listener", "fillspace": 16},
            {"id": "subject", "header": "Subject", "fillspace": 30},
            {"id": "serial", "header": "Serial", "fillspace": 42},
            {"id": "not_after", "header": "Not after", "fillspace": 21},
            {"id": "days_remaining", "header": "Days", "fillspace": 6},
        ]
        return envelope(0, f"{self.role_name}: {len(details)} TLS listener(s)", schema, details)

    def cmd_cert_expiry_status(self, cmd: str, kw: dict, src: Any) -> dict:
        details = self.listener_certs()
        days = [d["days_remaining"] for d in details if isinstance(d.get("days_remaining"), int)]
        data = {
            "listeners": len(details),
            "min_days_remaining": min(days) if days else -1,
            "warn_threshold": self.attrs["cert_warn_days"],
            "critical_threshold": self.attrs["cert_critical_days"],
            "details": details,
        }
        return envelope(0, f"{self.role_name}: {len(details)} TLS listener(s)", None, data)

    def cmd_shutdown(self, cmd: str, kw: dict, src: Any) -> dict:
        if self.runtime is None:
            return envelope(-1, "this yuno has no runtime to stop")
        self.log("info", "shutdown requested", by=src.full_name if src else "")
        self.runtime.stopping.set()
        return envelope(0, f"{self.role_name}: stopping")

    # ----- services -----------------------------------------------------------------

    def cmd_view_services(self, cmd: str, kw: dict, src: Any) -> dict:
        rt = self.runtime
        rows = []
        if rt is not None:
            default = rt.default_service
            for svc in list(rt.services.values()):
                rows.append(
                    {
                        "service": svc.name,
                        "gclass": svc.gclass.name,
                        "state": svc.state,
                        "running": svc.running,
                        "default": svc is default,
                    }
                )
        schema = [
            {"id": "service", "header": "Service", "fillspace": 24},
            {"id": "gclass", "header": "GClass", "fillspace": 14},
            {"id": "state", "header": "State", "fillspace": 14},
            {"id": "running", "header": "Running", "fillspace": 8},
            {"id": "default", "header": "Default", "fillspace": 8},
        ]
        return envelope(0, f"{len(rows)} service(s)", schema, rows)
