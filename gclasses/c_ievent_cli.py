"""C_IEVENT_CLI: a yuno's link to its agent.

Created by C_YUNO when `agent_url` is set. It connects to the agent, presents an identity
card (role, name, yuno_id, pid), and answers the commands the agent routes to this yuno:
to a service (`service`, `__yuno__` for the root) or to any gobj by name (`gobj`). When
the agent goes away it reconnects with backoff, so an agent restart finds its yunos again.
"""

from __future__ import annotations

import os
import ssl

from yuneta import ievent
from yuneta.command import envelope
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
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
        Attr("bool", "connected", Flag.RD, False, "Identified with the agent now"),
        Attr("int", "commands_answered", Flag.RSTATS, 0, "Commands received from the agent"),
    ),
    states={"ST_IDLE": ()},
)


@register_gclass
class CIEventCli(GObj):
    GCLASS = GCLASS

    def mt_create(self) -> None:
        self.client: WsClient | None = None

    def mt_start(self) -> None:
        assert self.runtime is not None and self.runtime.root is not None
        root = self.runtime.root.attrs

        def session() -> ievent.ClientSession:
            return ievent.ClientSession(
                yuno_role=root["yuno_role"],
                yuno_name=root["yuno_name"],
                src_service=root["yuno_role"],
                dst_role=self.attrs["dst_role"],
                user=ievent.local_user(),
                pid=os.getpid(),
                jwt=self.attrs["jwt"] or None,
            )

        self.client = WsClient(
            self.runtime.io_loop,
            self.attrs["url"],
            owner=self.full_name,
            session_factory=session,
            card_extra={"yuno_id": root["yuno_id"], "config_files": root["config_files"]},
            md_yuno=ievent.md_yuno(
                root["realm_name"], root["yuno_role"], root["yuno_name"], root["yuno_id"]
            ),
            on_command=self._on_command,
            on_state=self._on_state,
            ssl_context=self._ssl_context(),
        )
        self.client.start()

    def mt_stop(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.attrs["url"].lower().startswith("wss://"):
            return None
        return ssl.create_default_context(cafile=self.attrs["cafile"] or None)

    def _on_state(self, connected: bool) -> None:
        self.attrs["connected"] = connected

    def _on_command(self, channel: Channel, line: str, kw: dict, service: str, extra: dict) -> dict:
        """Run a command from the agent on its target (worker thread; asks the target's actor)."""
        assert self.runtime is not None
        self.attrs["commands_answered"] += 1
        gobj_name = extra.get("gobj")
        if gobj_name:
            target = self.runtime.find_gobj(gobj_name)
            if target is None:
                return envelope(-1, f"gobj '{gobj_name}' not found in this yuno")
        else:
            target = self.runtime.find_service(service or "__default_service__")
            if target is None:
                return envelope(-1, f"Service not found: '{service}'")
        return target.command(line, kw, src=self)
