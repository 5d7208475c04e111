"""C_IEVENT_CLI: a yuno's link to its agent.

Created by C_YUNO when `agent_url` is set, and played once every service has started. It
connects to the agent, presents an identity card (role, name, yuno_id, pid, and the secret
read from `secret_file` that proves the yuno_id: see gclasses/yuno_identity.py), and
answers the commands the agent routes to this yuno: to a service (`service`, `__yuno__` for
the root) or to any gobj by name (`gobj`). When the agent goes away it reconnects with
backoff, so an agent restart finds its yunos again.

The link's callbacks run off this gobj's actor (the I/O loop, and a worker thread per
command), so they only post events; the actor alone writes the attributes.
"""

from __future__ import annotations

import os
from typing import Any

from gclasses.yuno_identity import SECRET_KEY, read_secret
from yuneta import ievent
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
from yuneta.tls_client import client_context
from yuneta.wsio import Channel, WsClient

AGENT_ROLE = "yuneta_agent"

GCLASS = GClassDef(
    name="C_IEVENT_CLI",
    description="Link from a yuno to its agent",
    attrs=(
        Attr("str", "url", Flag.RD | Flag.REQUIRED, "", "Agent URL (ws://127.0.0.1:1991)"),
        Attr("str", "dst_role", Flag.RD, AGENT_ROLE, "Role of the agent"),
        Attr("str", "jwt", Flag.NONE, "", "Token presented to the agent (never shown)"),
        Attr("str", "cafile", Flag.RD, "", "CA file to verify a wss:// agent (empty: system CAs)"),
        Attr("str", "secret_file", Flag.RD, "", "File with the secret proving our yuno_id"),
        Attr("bool", "connected", Flag.RD, False, "Identified with the agent now"),
        Attr("int", "commands_answered", Flag.RSTATS, 0, "Commands received from the agent"),
    ),
    input_events=("EV_ON_OPEN", "EV_ON_CLOSE", "EV_MT_COMMAND"),
    states={
        "ST_IDLE": (
            ("EV_ON_OPEN", "ac_on_open", None),
            ("EV_ON_CLOSE", "ac_on_close", None),
            ("EV_MT_COMMAND", "ac_count_command", None),
        ),
    },
)


@register_gclass
class CIEventCli(GObj):
    GCLASS = GCLASS

    def mt_create(self) -> None:
        self.client: WsClient | None = None

    def mt_play(self) -> None:
        # Played by C_YUNO once every service has started: the agent takes an identified link
        # for "the yuno is up", so it must not identify before (run-yuno's answer).
        assert self.runtime is not None and self.runtime.root is not None
        root = self.runtime.root.attrs

        def session() -> ievent.ClientSession:
            return ievent.ClientSession(
                yuno_role=root["yuno_role"],
                yuno_name=root["yuno_name"],
                src_service=root["yuno_role"],
                dst_role=self.attrs["dst_role"],
                user=ievent.CARD_USER,
                pid=os.getpid(),
                jwt=self.attrs["jwt"] or None,
            )

        self.client = WsClient(
            self.runtime.io_loop,
            self.attrs["url"],
            owner=self.full_name,
            session_factory=session,
            card_extra={
                "yuno_id": root["yuno_id"],
                "config_files": root["config_files"],
                **self._secret(),
            },
            md_yuno=ievent.md_yuno(
                root["realm_name"], root["yuno_role"], root["yuno_name"], root["yuno_id"]
            ),
            on_command=self._on_command,
            on_state=self._on_state,
            ssl_context=client_context(self.attrs["url"], self.attrs["cafile"]),
        )
        self.client.start()

    def mt_pause(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client = None

    def _secret(self) -> dict[str, str]:
        """The card's secret, when a file is configured; a bad file is logged (its path, not
        its content) and the yuno then connects unverified."""
        path = self.attrs["secret_file"]
        if not path:
            return {}
        try:
            secret = read_secret(path)
            if secret is None:
                raise ValueError(f"{path}: no such file")
        except (OSError, ValueError) as exc:
            self.log("error", "cannot read the yuno's agent secret", path=path, error=str(exc))
            return {}
        return {SECRET_KEY: secret}

    # ----- actions (on the actor) ----------------------------------------------------

    def ac_on_open(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["connected"] = True
        return 0

    def ac_on_close(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["connected"] = False
        return 0

    def ac_count_command(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["commands_answered"] += 1
        return 0

    # ----- link callbacks (off the actor: post only) ---------------------------------

    def _on_state(self, connected: bool) -> None:
        self.send_event("EV_ON_OPEN" if connected else "EV_ON_CLOSE")

    def _on_command(self, channel: Channel, line: str, kw: dict, service: str, extra: dict) -> dict:
        """Run a command from the agent on its target (worker thread; asks the target's actor)."""
        assert self.runtime is not None
        self.send_event("EV_MT_COMMAND")
        return self.runtime.route_command(
            line, kw, service=service, gobj=extra.get("gobj") or "", src=self
        )
