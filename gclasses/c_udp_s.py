"""C_UDP_S: a UDP or DTLS 1.2 listener whose certificates hot-reload with no dropped session.

The listener gobj owns a `udpio.UdpServer` on the yuno's I/O loop and, for `udps://`, a
`Ydtls` (the DTLS twin of C_TCP_S's `Ytls`: the same validated material, a pyOpenSSL
context). Peers are keyed by source address and handed to the datagram protocol named by
`protocol` (the shipped one is `echo`); they live in the I/O loop, never as actors, and all
share the one socket. A ClientHello must echo a stateless cookie before any per-peer state
exists, so spoofed hellos cost one datagram each. `reload-certs` (and writing `crypto`)
validates the files once, builds a fresh context and swaps one reference: live sessions keep
the context they were born with, new ones get the new one, a bad certificate changes nothing,
and the answers are C_TCP_S's word for word. Silent peers are dropped after `idle_timeout`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener, parse_url
from yuneta.dtls import DEFAULT_MTU, MIN_MTU
from yuneta.dtls_context import Ydtls
from yuneta.dtls_context import check_crypto as dtls_check_crypto
from yuneta.errors import AttrError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
from yuneta.udpio import DatagramHandler, EchoDatagramHandler, UdpServer

SCHEMES = ("udp", "udps")
MAX_MTU = 65507  # the largest UDP payload over IPv4

#: Datagram protocols a listener can hand its peers to, by the name used in `protocol`.
#: A dotted `module:Class` naming a `udpio.DatagramHandler` subclass works too.
PROTOCOLS: dict[str, Callable[[], DatagramHandler]] = {"echo": EchoDatagramHandler}

GCLASS = GClassDef(
    name="C_UDP_S",
    description="UDP/DTLS server listener with hot certificate reload",
    attrs=(
        Attr(
            "str",
            "url",
            Flag.RD | Flag.REQUIRED,
            "",
            "udp://host:port or udps://host:port (DTLS 1.2; port 0: any free port)",
        ),
        *TLS_ATTRS,
        Attr("str", "lHost", Flag.RD, "", "Host listening on"),
        Attr("int", "lPort", Flag.RD, 0, "Port listening on (the real one when url's port is 0)"),
        Attr("int", "mtu", Flag.RD, DEFAULT_MTU, "Largest datagram sent (UDP payload bytes)"),
        Attr("real", "idle_timeout", Flag.RD, 300.0, "Seconds of silence before a peer is dropped"),
        Attr("real", "handshake_timeout", Flag.RD, 15.0, "Seconds a DTLS handshake may take"),
        Attr("list", "only_allowed_ips", Flag.RD, [], "IPs or CIDRs allowed to talk (empty: all)"),
        Attr(
            "int",
            "max_sessions",
            Flag.RD,
            20000,
            "Most peers (DTLS: with handshakes) at once; more are refused (0: no limit)",
        ),
        Attr("str", "protocol", Flag.RD, "echo", "Protocol of the peers' datagrams"),
        Attr("int", "sessions", Flag.RSTATS, 0, "Peers (DTLS sessions) live now"),
        Attr("int", "tsessions", Flag.RSTATS, 0, "Peers (DTLS sessions) established in total"),
        Attr("int", "handshake_failures", Flag.RSTATS, 0, "DTLS handshakes that failed"),
        Attr(
            "int",
            "cookie_rejections",
            Flag.RSTATS,
            0,
            "ClientHellos without a valid cookie, answered statelessly",
        ),
        Attr("int", "rejected", Flag.RSTATS, 0, "Datagrams refused by only_allowed_ips"),
        Attr("int", "refused", Flag.RSTATS, 0, "Datagrams of new peers refused at max_sessions"),
        Attr("int", "dropped", Flag.RSTATS, 0, "Datagrams from unknown peers that opened nothing"),
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


def find_protocol(name: str) -> Callable[[], DatagramHandler]:
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


def _check_mtu(mtu: int) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"{mtu} is not between {MIN_MTU} and {MAX_MTU}")


@register_gclass
class CUdpS(TlsListener, GObj):
    GCLASS = GCLASS
    check_crypto = staticmethod(dtls_check_crypto)

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        for name, check in (
            ("url", lambda: parse_url(attrs["url"], SCHEMES)),
            ("protocol", lambda: find_protocol(attrs["protocol"])),
            ("mtu", lambda: _check_mtu(attrs["mtu"])),
        ):
            try:
                check()
            except ValueError as exc:
                raise AttrError(GCLASS.name, name, str(exc)) from None

    def mt_create(self) -> None:
        _scheme, host, port, use_ssl = parse_url(self.attrs["url"], SCHEMES)
        self.attrs.update(use_ssl=use_ssl, lHost=host, lPort=port)
        self.ytls = None
        self.server: UdpServer | None = None

    def build_ytls(self) -> Ydtls:
        """The listener's DTLS contexts from its `crypto` (raises TlsError: a start failure)."""
        self.ytls = Ydtls(self.attrs["crypto"])
        return self.ytls

    def mt_start(self) -> None:
        _scheme, host, port, use_ssl = parse_url(self.attrs["url"], SCHEMES)
        # A bad certificate at start is a start failure, said clearly: nothing listens.
        ydtls = self.build_ytls() if use_ssl else None
        assert self.runtime is not None, "a listener needs a yuno runtime (its I/O loop)"
        self.server = UdpServer(
            self.runtime.io_loop,
            host,
            port,
            handler=find_protocol(self.attrs["protocol"]),
            tls=ydtls.dtls_context if ydtls else None,
            mtu=self.attrs["mtu"],
            idle_timeout=self.attrs["idle_timeout"],
            handshake_timeout=self.attrs["handshake_timeout"],
            only_allowed_ips=self.attrs["only_allowed_ips"] or None,
            max_sessions=self.attrs["max_sessions"],
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
            mtu=self.attrs["mtu"],
            **self.cert_fields(),
        )

    def mt_stop(self) -> None:
        self.stop_cert_watch()
        if self.server is not None:
            self.server.stop_listening()
            self.attrs.update(self.mt_stats())  # the last counts stay readable once stopped
            self.server = None
            self.log("info", "listener stopped", url=self.attrs["url"])
        self.change_state("ST_STOPPED")

    def mt_stats(self) -> dict[str, Any]:
        server = self.server
        if server is None:
            return {}
        return {
            "sessions": server.sessions,
            "tsessions": server.tsessions,
            "handshake_failures": server.handshake_failures,
            "cookie_rejections": server.cookie_rejections,
            "rejected": server.rejected,
            "refused": server.refused,
            "dropped": server.dropped,
        }

    # ----- I/O loop callbacks (loop thread: cheap, post to the actor) -----------------

    def ac_handshake_failed(self, event: str, kw: dict, src: Any) -> int:
        # A peer that passed the cookie can still fail handshakes at will: past a few a
        # window, one summary line per source.
        self.log(
            "warning",
            "DTLS handshake failed",
            repeat=("DTLS handshake failures", kw.get("peer_ip") or "?"),
            peer=kw.get("peer"),
            reason=kw.get("reason"),
        )
        return 0
