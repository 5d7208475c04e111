"""C_IEVENT_SRV: the inter-event server of a yuno (the agent's control port, ws://127.0.0.1:1991).

It accepts WebSocket connections speaking Yuneta's inter-event protocol, checks identity
cards (role, name, service, and a token when configured) and runs each command on the
service it names, answering with the envelope. Peers that identify themselves are
published to the parent as EV_ON_OPEN / EV_ON_CLOSE with their `Channel`, through which
the parent can command them (the agent commands its yunos this way).

Security: a plain `ws://` URL may only bind a loopback address. Any other address needs
`wss://` (a certificate, reloadable like any TLS listener) and at least one token in
`auth_tokens`, which clients present in the identity card's `jwt`: at least
`min_token_length` characters, compared in constant time, and an address that keeps failing
waits longer and longer before its next attempt is even checked (`yuneta.backoff`).

On a loopback URL the identity card's `user` is never believed: the kernel says which local
UID owns the client's socket (`yuneta.peercred`), and only this process's own UID, root,
members of `allowed_groups` and `allowed_uids` get a positive ACK. A refusal is answered
(-1 and the reason) and logged once per connection, at most once a minute per UID (wsio).
The parent may add its own checks on cards (`add_card_check`): they run before the ACK.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener, parse_url
from gclasses.token_auth import check_auth_tokens, is_loopback, token_matches
from yuneta import ievent, peercred
from yuneta.backoff import FailureBackoff
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
        Attr("int", "min_token_length", Flag.RD, 16, "Shortest token accepted in auth_tokens"),
        Attr(
            "list",
            "allowed_groups",
            Flag.RD,
            ["yuneta"],
            "Local groups whose members may command (loopback URL); plus root and our own UID",
        ),
        Attr("list", "allowed_uids", Flag.RD, [], "Other local UIDs that may command (loopback)"),
        Attr("int", "max_frame_size", Flag.RD, 1048576, "Largest accepted frame, bytes"),
        Attr(
            "int",
            "max_inflight",
            Flag.RD,
            64,
            "Commands in flight per connection; beyond, the connection is not read until "
            "answers drain",
        ),
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

#: A parent's check of an accepted card: (channel, card) -> (result, comment).
CardCheck = Callable[[Channel, Mapping[str, Any]], tuple[int, str]]


@register_gclass
class CIEventSrv(TlsListener, GObj):
    GCLASS = GCLASS

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        check_auth_tokens(GCLASS.name, attrs)
        for uid in attrs["allowed_uids"]:
            if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
                raise AttrError(GCLASS.name, "allowed_uids", f"{uid!r} is not a UID")
        for group in attrs["allowed_groups"]:
            if not isinstance(group, (str, int)) or isinstance(group, bool):
                raise AttrError(GCLASS.name, "allowed_groups", f"{group!r} is not a group")
        try:
            _scheme, host, _port, use_ssl = parse_url(attrs["url"], ("ws", "wss"))
        except ValueError as exc:
            raise AttrError(GCLASS.name, "url", str(exc)) from None
        if not is_loopback(host):
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
        self._auth_tokens = tuple(str(token).encode() for token in self.attrs["auth_tokens"])
        self.attrs["auth_tokens"] = [HIDDEN] * len(self._auth_tokens)
        self.server: WsServer | None = None
        self._listeners: list[tuple[Callable[[Channel], None], Callable[[Channel], None]]] = []
        self._card_checks: list[CardCheck] = []
        self._loopback = is_loopback(host)
        self._admission = peercred.Admission.of(
            self.attrs["allowed_groups"], self.attrs["allowed_uids"]
        )
        self._backoff = FailureBackoff()

    def add_channel_listener(
        self, on_open: Callable[[Channel], None], on_close: Callable[[Channel], None]
    ) -> None:
        """Call on_open / on_close (in the I/O loop thread: thread-safe, cheap) for every peer
        whose identity card is accepted, and when it goes."""
        self._listeners.append((on_open, on_close))

    def add_card_check(self, check: CardCheck) -> None:
        """Run `check(channel, card) -> (result, comment)` on every card that passed the
        listener's own checks, before the ACK (I/O loop thread); a negative result refuses it."""
        self._card_checks.append(check)

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

        def session(channel: Channel) -> ievent.ServerSession:
            return ievent.ServerSession(
                yuno_role=root["yuno_role"],
                yuno_name=root["yuno_name"],
                yuno_id=root["yuno_id"],
                realm_name=root["realm_name"],
                services=lambda name: runtime.find_service(name) is not None,
                auth=lambda card: self._admit(channel, card),
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
            max_inflight=self.attrs["max_inflight"],
        )
        try:
            self.attrs["lPort"] = self.server.start()
        except OSError as exc:  # in use, not ours, unresolvable: the operator's url
            raise AttrError(
                GCLASS.name, "url", f"cannot listen on {self.attrs['url']}: {exc.strerror or exc}"
            ) from None
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

    def mt_stats(self) -> dict[str, Any]:
        server = self.server
        return {"clients": len(server.channels) if server is not None else 0}

    @property
    def real_url(self) -> str:
        scheme = "wss" if self.attrs["use_ssl"] else "ws"
        return f"{scheme}://{self.attrs['lHost']}:{self.attrs['lPort']}"

    def yuno_credential(self) -> str:
        """The token a yuno launched by this yuno's agent presents (the first one), or ""."""
        return self._auth_tokens[0].decode() if self._auth_tokens else ""

    def _admit(self, channel: Channel, card: Mapping[str, Any]) -> tuple[int, str]:
        """The last check of a card (I/O loop thread): who the peer is, then its token, then
        the parent's checks. On success the card is the channel's (its close is reported)."""
        if self._loopback:
            result, comment = self._admit_local(channel)
            if result < 0:
                return result, comment
        if self._auth_tokens:
            result, comment = self._check_token(channel, card)
            if result < 0:
                return result, comment
        for check in self._card_checks:
            result, comment = check(channel, card)
            if result < 0:
                return result, comment
        channel.card = dict(card)
        return 0, "Identity card accepted"

    def _admit_local(self, channel: Channel) -> tuple[int, str]:
        ws = channel.ws
        try:
            uid = peercred.socket_uid(ws.remote_address[:2], ws.local_address[:2])
        except (OSError, TypeError, ValueError) as exc:
            return -1, f"Permission denied: cannot tell which local user is connecting ({exc})"
        channel.uid = uid
        if self._admission.admits(uid):
            return 0, ""
        user = peercred.user_name(uid)
        return -1, f"Permission denied: local user '{user}' (uid {uid}) may not command this yuno"

    def _check_token(self, channel: Channel, card: Mapping[str, Any]) -> tuple[int, str]:
        address = channel.peer.rsplit(":", 1)[0]
        wait = self._backoff.wait_left(address)
        if wait > 0:
            return -1, f"Too many failed attempts from {address}: next one checked in {wait:.1f} s"
        token = card.get("jwt")
        if isinstance(token, str) and token:
            if token_matches(token.encode(), self._auth_tokens):
                self._backoff.succeeded(address)
                return 0, ""
        self._backoff.failed(address)
        return -1, "Authentication failed: a valid token is required"

    def _on_command(
        self, channel: Channel, line: str, kw: dict, service: str, extra: dict
    ) -> dict | concurrent.futures.Future:
        """Run a received command on its service (worker thread; asks the service's actor).
        A handler's Future goes back to the loop to be awaited there, not in this thread."""
        assert self.runtime is not None
        return self.runtime.submit_routed_command(line, kw, service=service, src=self)
