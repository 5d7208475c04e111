"""C_IEVENT_SRV: the inter-event server of a yuno (the agent's control port, ws://127.0.0.1:1991).

It accepts WebSocket connections speaking Yuneta's inter-event protocol, checks identity
cards (role, name, service, and a token when configured) and runs each command on the
service it names, answering with the envelope. Peers that identify themselves are
published to the parent as EV_ON_OPEN / EV_ON_CLOSE with their `Channel`, through which
the parent can command them (the agent commands its yunos this way).

Security: a plain `ws://` URL may only bind a loopback address. Any other address needs
`wss://` (a certificate, reloadable like any TLS listener) and at least one token in
`auth_tokens`, which clients present in the identity card's `jwt`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener, parse_url
from yuneta import ievent
from yuneta.errors import AttrError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
from yuneta.wsio import Channel, WsServer

GCLASS = GClassDef(
    name="C_IEVENT_SRV",
    description="Inter-event (WebSocket) server: identity cards, commands, answers",
    attrs=(
        Attr(
            "str",
            "url",
            Flag.RD | Flag.REQUIRED,
            "ws://127.0.0.1:1991",
            "ws://host:port or wss://host:port",
        ),
        *TLS_ATTRS,
        Attr(
            "list",
            "auth_tokens",
            Flag.NONE,
            [],
            "Tokens accepted in the identity card's jwt (never shown)",
        ),
        Attr("int", "max_frame_size", Flag.RD, 1048576, "Largest accepted frame, bytes"),
        Attr("str", "lHost", Flag.RD, "", "Host listening on"),
        Attr("int", "lPort", Flag.RD, 0, "Port listening on"),
        Attr("int", "clients", Flag.RSTATS, 0, "Connections open now"),
    ),
    commands=TLS_COMMANDS,
    input_events=("EV_CERT_FILES_CHANGED", "EV_CERT_RELOAD_RETRY"),
    states={
        "ST_IDLE": (
            ("EV_CERT_FILES_CHANGED", "ac_cert_files_changed", None),  # cert_watch on wss://
            ("EV_CERT_RELOAD_RETRY", "ac_cert_reload_retry", None),
        ),
    },
)


HIDDEN = "********"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register_gclass
class CIEventSrv(TlsListener, GObj):
    GCLASS = GCLASS

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        try:
            _scheme, host, _port, use_ssl = parse_url(attrs["url"], ("ws", "wss"))
        except ValueError as exc:
            raise AttrError(GCLASS.name, "url", str(exc)) from None
        if not _is_loopback(host):
            if not use_ssl:
                raise AttrError(
                    GCLASS.name,
                    "url",
                    f"{attrs['url']}: a non-loopback address needs wss:// (TLS) and auth_tokens",
                )
            if not attrs["auth_tokens"]:
                raise AttrError(
                    GCLASS.name,
                    "auth_tokens",
                    f"{attrs['url']}: a non-loopback address needs at least one token",
                )

    def mt_create(self) -> None:
        _scheme, host, port, use_ssl = parse_url(self.attrs["url"], ("ws", "wss"))
        self.attrs.update(lHost=host, lPort=port, use_ssl=use_ssl)
        # The tokens are secrets: keep them out of the attribute table (view-gobj-tree and
        # read_attr show any attribute asked for by name), leaving only placeholders.
        self._auth_tokens = tuple(str(token) for token in self.attrs["auth_tokens"])
        self.attrs["auth_tokens"] = [HIDDEN] * len(self._auth_tokens)
        self.server: WsServer | None = None
        self._listeners: list[tuple[Callable[[Channel], None], Callable[[Channel], None]]] = []

    def add_channel_listener(
        self, on_open: Callable[[Channel], None], on_close: Callable[[Channel], None]
    ) -> None:
        """Call on_open / on_close (in the I/O loop thread: thread-safe, cheap) for every peer
        whose identity card is accepted, and when it goes."""
        self._listeners.append((on_open, on_close))

    def _opened(self, channel: Channel) -> None:
        for on_open, _ in list(self._listeners):
            on_open(channel)

    def _closed(self, channel: Channel) -> None:
        for _, on_close in list(self._listeners):
            on_close(channel)

    def mt_start(self) -> None:
        assert self.runtime is not None and self.runtime.root is not None
        if self.attrs["use_ssl"]:
            self.build_ytls()
        root = self.runtime.root.attrs
        runtime = self.runtime

        def session() -> ievent.ServerSession:
            return ievent.ServerSession(
                yuno_role=root["yuno_role"],
                yuno_name=root["yuno_name"],
                yuno_id=root["yuno_id"],
                realm_name=root["realm_name"],
                services=lambda name: runtime.find_service(name) is not None,
                auth=self._auth if self._auth_tokens else None,
                channel_name=self.name,
                max_frame_size=self.attrs["max_frame_size"],
            )

        self.server = WsServer(
            self.runtime.io_loop,
            self.attrs["lHost"],
            self.attrs["lPort"],
            owner=self.full_name,
            session_factory=session,
            on_command=self._on_command,
            on_open=self._opened,
            on_close=self._closed,
            ssl_context=self.ytls.get_context if self.ytls else None,
            max_frame_size=self.attrs["max_frame_size"],
        )
        self.attrs["lPort"] = self.server.start()
        self.log(
            "info",
            "inter-event server listening",
            url=self.attrs["url"],
            port=self.attrs["lPort"],
            **self.cert_fields(),
        )
        self.start_cert_watch()

    def mt_stop(self) -> None:
        self.stop_cert_watch()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def mt_stats(self) -> None:
        server = self.server
        self.attrs["clients"] = len(server.channels) if server is not None else 0

    @property
    def real_url(self) -> str:
        scheme = "wss" if self.attrs["use_ssl"] else "ws"
        return f"{scheme}://{self.attrs['lHost']}:{self.attrs['lPort']}"

    def yuno_credential(self) -> str:
        """The token a yuno launched by this yuno's agent presents (the first one), or ""."""
        return self._auth_tokens[0] if self._auth_tokens else ""

    def _auth(self, card: Mapping[str, Any]) -> tuple[int, str]:
        token = card.get("jwt")
        if isinstance(token, str) and token:
            for accepted in self._auth_tokens:
                if hmac.compare_digest(token.encode(), accepted.encode()):
                    return 0, "Identity card accepted"
        return -1, "Authentication failed: a valid token is required"

    def _on_command(self, channel: Channel, line: str, kw: dict, service: str, extra: dict) -> dict:
        """Run a received command on its service (worker thread; asks the service's actor)."""
        assert self.runtime is not None
        return self.runtime.route_command(line, kw, service=service, src=self)
