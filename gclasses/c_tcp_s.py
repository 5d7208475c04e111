"""C_TCP_S: a TCP or TLS listener whose certificates hot-reload with no dropped connection.

The listener gobj owns a `netio.TcpServer` on the yuno's I/O loop and, for `tcps://`, a
`ytls.Ytls`. Every accepted socket is handed to the protocol named by `protocol` (the
shipped one is `echo`); connections live in the I/O loop, never as actors. `reload-certs`
(and writing `crypto`) builds a fresh, validated context and swaps one reference: live
sessions keep the context they were wrapped with, new ones get the new one, and a bad
certificate changes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener, parse_url
from yuneta.errors import AttrError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
from yuneta.netio import EchoHandler, Handler, TcpServer

SCHEMES = ("tcp", "tcps", "ssl")

#: Protocols a listener can hand its connections to, by the name used in `protocol`.
#: A dotted `module:Class` naming a `netio.Handler` subclass works too.
PROTOCOLS: dict[str, Callable[[], Handler]] = {"echo": EchoHandler}

GCLASS = GClassDef(
    name="C_TCP_S",
    description="TCP/TLS server listener with hot certificate reload",
    attrs=(
        Attr(
            "str",
            "url",
            Flag.RD | Flag.REQUIRED,
            "",
            "tcp://host:port or tcps://host:port (port 0: any free port)",
        ),
        *TLS_ATTRS,
        Attr("str", "lHost", Flag.RD, "", "Host listening on"),
        Attr("int", "lPort", Flag.RD, 0, "Port listening on (the real one when url's port is 0)"),
        Attr("int", "backlog", Flag.RD, 511, "Listen backlog"),
        Attr(
            "list", "only_allowed_ips", Flag.RD, [], "IPs or CIDRs allowed to connect (empty: all)"
        ),
        Attr("str", "protocol", Flag.RD, "echo", "Protocol of accepted connections"),
        Attr("real", "handshake_timeout", Flag.RD, 10.0, "Seconds a TLS handshake may take"),
        Attr("int", "connxs", Flag.RSTATS, 0, "Connections open now"),
        Attr("int", "tconnxs", Flag.RSTATS, 0, "Connections accepted in total"),
        Attr("int", "handshake_failures", Flag.RSTATS, 0, "TLS handshakes that failed"),
        Attr("int", "rejected", Flag.RSTATS, 0, "Connections refused by only_allowed_ips"),
    ),
    commands=TLS_COMMANDS,
    input_events=("EV_HANDSHAKE_FAILED", "EV_CERT_FILES_CHANGED", "EV_CERT_RELOAD_RETRY"),
    states={
        "ST_STOPPED": (
            ("EV_HANDSHAKE_FAILED", None, None),
            ("EV_CERT_FILES_CHANGED", None, None),  # raced a stop: nothing to reload
            ("EV_CERT_RELOAD_RETRY", None, None),
        ),
        "ST_LISTENING": (
            ("EV_HANDSHAKE_FAILED", "ac_handshake_failed", None),
            ("EV_CERT_FILES_CHANGED", "ac_cert_files_changed", None),  # cert_watch
            ("EV_CERT_RELOAD_RETRY", "ac_cert_reload_retry", None),
        ),
    },
)


def find_protocol(name: str) -> Callable[[], Handler]:
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(
            f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)}, or module:Class)"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"protocol {name!r}: {exc}") from None


@register_gclass
class CTcpS(TlsListener, GObj):
    GCLASS = GCLASS

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        for name, check in (
            ("url", lambda: parse_url(attrs["url"], SCHEMES)),
            ("protocol", lambda: find_protocol(attrs["protocol"])),
        ):
            try:
                check()
            except ValueError as exc:
                raise AttrError(GCLASS.name, name, str(exc)) from None

    def mt_create(self) -> None:
        _scheme, host, port, use_ssl = parse_url(self.attrs["url"], SCHEMES)
        self.attrs.update(use_ssl=use_ssl, lHost=host, lPort=port)
        self.ytls = None
        self.server: TcpServer | None = None

    def mt_start(self) -> None:
        _scheme, host, port, use_ssl = parse_url(self.attrs["url"], SCHEMES)
        if use_ssl:
            # A bad certificate at start is a start failure, said clearly: nothing listens.
            self.build_ytls()
        assert self.runtime is not None, "a listener needs a yuno runtime (its I/O loop)"
        self.server = TcpServer(
            self.runtime.io_loop,
            host,
            port,
            handler=find_protocol(self.attrs["protocol"]),
            backlog=self.attrs["backlog"],
            only_allowed_ips=self.attrs["only_allowed_ips"] or None,
            tls=self.ytls.get_context if self.ytls else None,
            handshake_timeout=self.attrs["handshake_timeout"],
            on_handshake_failed=self._on_handshake_failed,
        )
        try:
            self.attrs["lPort"] = self.server.start_listening()
        except OSError as exc:  # in use, not ours, unresolvable: the operator's url
            raise AttrError(
                GCLASS.name, "url", f"cannot listen on {self.attrs['url']}: {exc.strerror or exc}"
            ) from None
        self.change_state("ST_LISTENING")
        self.start_cert_watch()
        self.log(
            "info",
            "listening",
            url=self.attrs["url"],
            port=self.attrs["lPort"],
            **self.cert_fields(),
        )

    def mt_stop(self) -> None:
        self.stop_cert_watch()
        if self.server is not None:
            self.server.stop_listening(close_connections=True)
            self.attrs.update(self.mt_stats())  # the last counts stay readable once stopped
            self.server = None
            self.log("info", "listener stopped", url=self.attrs["url"])
        self.change_state("ST_STOPPED")

    def mt_stats(self) -> dict[str, Any]:
        server = self.server
        if server is None:
            return {}
        return {
            "connxs": server.connxs,
            "tconnxs": server.tconnxs,
            "handshake_failures": server.handshake_failures,
            "rejected": server.rejected,
        }

    # ----- I/O loop callbacks (loop thread: cheap, post to the actor) -----------------

    def ac_handshake_failed(self, event: str, kw: dict, src: Any) -> int:
        # Any client can fail handshakes at will: past a few a window, one summary line.
        self.log(
            "warning",
            "TLS handshake failed",
            repeat=("handshake failures", kw.get("peer_ip") or "?"),
            peer=kw.get("peer"),
            reason=kw.get("reason"),
        )
        return 0
