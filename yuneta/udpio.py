"""The UDP endpoint of a yuno: one datagram socket on the I/O loop, one light peer per address.

`UdpServer` binds one socket on the yuno's `IOLoop` (through its public `loop`: a reader and
timers, nothing else) and keys peers by source address. For `udp://` a peer is just its
address and an idle deadline; for `udps://` every datagram goes through a sans-I/O
`yuneta.dtls.DtlsServer`, which answers cookie-less ClientHellos statelessly and owns the
per-peer DTLS sessions, their retransmissions and their idle reaping. Either way each peer
gets a `DatagramHandler` (`on_open`, `on_data` with one message, `on_close`) and a `UdpPeer`
to `write()` to, all in the loop thread. A peer is never an actor, a thread or a socket:
thousands share the one socket. Peers that go silent are closed after `idle_timeout`, since
a datagram peer never says it left (and a DTLS close_notify can be lost).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from OpenSSL import SSL

from yuneta.dtls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MTU,
    DataReceived,
    DtlsServer,
    DtlsSession,
    HandshakeDone,
    SessionClosed,
)

__all__ = ["DatagramHandler", "EchoDatagramHandler", "UdpPeer", "UdpServer"]

_RECV_SIZE = 65535  # the largest UDP payload: nothing is ever truncated
_RECV_BATCH = 64  # datagrams read per readiness event before flushing and yielding


class DatagramHandler:
    """Per-peer protocol logic; override what you need. Runs in the loop thread.

    `on_open` when the peer is established (first datagram for udp://, handshake done for
    udps://), `on_data` once per message (a datagram, or a DTLS record's plaintext),
    `on_close` exactly once after `on_open` with the reason.
    """

    __slots__ = ()

    def on_open(self, peer: UdpPeer) -> None:
        """The peer is established."""

    def on_data(self, peer: UdpPeer, data: bytes) -> None:
        """One message arrived (plaintext)."""

    def on_close(self, peer: UdpPeer, reason: str) -> None:
        """The peer is gone (idle timeout, close_notify, listener stopped...)."""


class EchoDatagramHandler(DatagramHandler):
    """Sends every message back to its peer."""

    __slots__ = ()

    def on_data(self, peer: UdpPeer, data: bytes) -> None:
        peer.write(data)


class UdpPeer:
    """One remote address of a `UdpServer`: `peername`, `write()`, `close()`, `user_data`.

    For udps:// also `cert_serial` (the serial of the certificate its session was served with).
    Loop thread only; from another thread use `ioloop.call_soon_threadsafe(peer.write, data)`.
    """

    __slots__ = ("_server", "_session", "handler", "peername", "last_activity", "user_data")

    def __init__(self, server: UdpServer, peername: Any, session: DtlsSession | None) -> None:
        self._server = server
        self._session = session
        self.handler: DatagramHandler | None = None
        self.peername = peername
        self.last_activity = 0.0
        self.user_data: Any = None

    @property
    def is_tls(self) -> bool:
        return self._session is not None

    @property
    def cert_serial(self) -> str:
        return self._session.cert_serial if self._session is not None else ""

    @property
    def is_open(self) -> bool:
        return self._server._peers.get(self.peername) is self

    def write(self, data: bytes) -> None:
        """Send one message (encrypted for udps://). Ignored once the peer is closed."""
        self._server._write(self, data)

    def close(self) -> None:
        """Forget this peer (udps://: after a close_notify); `on_close` says "closed"."""
        self._server._close_peer(self, "closed")


def _networks(items: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(str(item).strip(), strict=False) for item in items]


class UdpServer:
    """A UDP (optionally DTLS) listener on an `IOLoop`.

    Thread model as `netio.TcpServer`: construct anywhere; `start_listening()` /
    `stop_listening()` block and are called from outside the loop thread. `tls` is a zero-arg
    provider of the current DTLS server context (see `yuneta.dtls.enable_cookies`), read for
    every new session, so a reload reaches new peers while live ones keep theirs. Callbacks run
    in the loop thread and must be cheap: `on_handshake_failed(peername, reason)`. Counters
    (plain ints, readable from any thread): `sessions` (peers now), `tsessions`,
    `handshake_failures`, `cookie_rejections`, `rejected` (datagrams from addresses outside
    `only_allowed_ips`), `refused` (datagrams from new peers while `max_sessions` peers and
    handshakes exist; 0: no limit), `dropped` (undecodable or unsolicited datagrams).
    """

    def __init__(
        self,
        ioloop: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler: Callable[[], DatagramHandler] = EchoDatagramHandler,
        tls: Callable[[], SSL.Context] | None = None,
        mtu: int = DEFAULT_MTU,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        only_allowed_ips: Iterable[str] | None = None,
        max_sessions: int = 0,
        on_handshake_failed: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.ioloop = ioloop
        self.host = host
        self.port = port
        self.mtu = mtu
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.on_handshake_failed = on_handshake_failed
        self._handler_factory = handler
        self._dtls = (
            DtlsServer(tls, mtu=mtu, idle_timeout=idle_timeout, handshake_timeout=handshake_timeout)
            if tls is not None
            else None
        )
        self._allowed = _networks(only_allowed_ips) if only_allowed_ips else None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[Any, UdpPeer] = {}
        self._out: list[tuple[bytes, Any]] = []  # plain datagrams waiting for the flush
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rbuf = bytearray(_RECV_SIZE)
        self._tsessions = 0
        self.rejected = 0
        self.refused = 0
        self._dropped = 0

    # -- counters ---------------------------------------------------------------------

    @property
    def is_tls(self) -> bool:
        return self._dtls is not None

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def sessions(self) -> int:
        return len(self._peers)

    @property
    def tsessions(self) -> int:
        return self._dtls.tsessions if self._dtls is not None else self._tsessions

    @property
    def handshake_failures(self) -> int:
        return self._dtls.handshake_failures if self._dtls is not None else 0

    @property
    def cookie_rejections(self) -> int:
        return self._dtls.cookie_rejections if self._dtls is not None else 0

    @property
    def dropped(self) -> int:
        return self._dropped + (self._dtls.dropped if self._dtls is not None else 0)

    def peers(self) -> list[UdpPeer]:
        """Snapshot of the established peers (loop thread; elsewhere it may be stale)."""
        return list(self._peers.values())

    def stats(self) -> dict[str, Any]:
        return {
            "listening": self.listening,
            "port": self.port,
            "sessions": self.sessions,
            "tsessions": self.tsessions,
            "handshake_failures": self.handshake_failures,
            "cookie_rejections": self.cookie_rejections,
            "rejected": self.rejected,
            "refused": self.refused,
            "dropped": self.dropped,
        }

    # -- start / stop -----------------------------------------------------------------

    def start_listening(self, timeout: float = 10.0) -> int:
        """Bind (from outside the loop thread); returns the real port."""
        return self.ioloop.run_sync(self.listen(), timeout)

    def stop_listening(self, timeout: float = 5.0) -> None:
        """Close every peer (close_notify for DTLS) and the socket."""
        if self.ioloop.running:
            self.ioloop.run_sync(self.aclose(), timeout)

    async def listen(self) -> int:
        """Coroutine form of `start_listening`, for the loop thread."""
        if self._sock is not None:
            return self.port
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
            sock.bind(addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._loop = loop
        self._sock = sock
        self.port = sock.getsockname()[1]
        loop.add_reader(sock.fileno(), self._on_readable)
        return self.port

    async def aclose(self) -> None:
        """Coroutine form of `stop_listening`."""
        sock = self._sock
        if sock is None:
            return
        for peer in list(self._peers.values()):
            self._close_peer(peer, "listener stopped")
        self._flush()
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        self._sock = None
        sock.close()

    # -- input ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buf = self._rbuf
        now = self._loop.time()  # type: ignore[union-attr]  # monotonic, as the deadlines
        for _ in range(_RECV_BATCH):
            try:
                n, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket: nothing to read for it
                continue
            if addr not in self._peers:
                if self._allowed is not None and not self._allow(addr):
                    self.rejected += 1
                    continue
                if self.max_sessions and self._full(addr):
                    self.refused += 1
                    continue
            datagram = bytes(buf[:n])
            if self._dtls is not None:
                self._dispatch(self._dtls.receive(addr, datagram, now))
            else:
                self._receive_plain(addr, datagram, now)
        self._flush()
        self._rearm()

    def _receive_plain(self, addr: Any, datagram: bytes, now: float) -> None:
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._open_peer(addr, None)
            self._tsessions += 1
        peer.last_activity = now
        if peer.handler is not None:
            self._call(peer, peer.handler.on_data, datagram)

    def _dispatch(self, results: list[tuple[DtlsSession, Any]]) -> None:
        for session, event in results:
            if isinstance(event, DataReceived):
                peer = session.user_data
                if peer is not None and peer.handler is not None:
                    self._call(peer, peer.handler.on_data, event.data)
            elif isinstance(event, HandshakeDone):
                session.user_data = self._open_peer(session.peer, session)
            elif isinstance(event, SessionClosed):
                peer = session.user_data
                if peer is not None:
                    self._forget_peer(peer, event.reason)
                elif event.handshake_failed and self.on_handshake_failed is not None:
                    self.on_handshake_failed(session.peer, event.reason)

    def _open_peer(self, addr: Any, session: DtlsSession | None) -> UdpPeer:
        peer = UdpPeer(self, addr, session)
        self._peers[addr] = peer
        peer.handler = self._handler_factory()
        self._call(peer, peer.handler.on_open)
        return peer

    def _call(self, peer: UdpPeer, fn: Callable[..., None], *args: Any) -> None:
        # A failing handler ends its own peer, never the loop or other peers.
        try:
            fn(peer, *args)
        except Exception as exc:
            self._loop.call_exception_handler(  # type: ignore[union-attr]
                {"message": "datagram handler failed", "exception": exc, "peer": peer.peername}
            )
            self._close_peer(peer, f"handler error: {exc!r}")

    # -- output -----------------------------------------------------------------------

    def _write(self, peer: UdpPeer, data: bytes) -> None:
        if not data or not peer.is_open:
            return
        if peer._session is not None:
            self._dispatch(self._dtls.send(peer._session, data))  # type: ignore[union-attr]
        else:
            self._out.append((bytes(data), peer.peername))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._flush_scheduled = False
        sock = self._sock
        out, self._out = self._out, []
        if self._dtls is not None:
            out += self._dtls.datagrams_to_send()
        if sock is None:
            return
        for datagram, addr in out:
            try:
                sock.sendto(datagram, addr)
            except OSError:
                # UDP is lossy anyway: a full socket buffer or an ICMP error drops this one;
                # DTLS retransmits handshake flights, protocols above retry their messages.
                pass

    # -- closing and timers -----------------------------------------------------------

    def _close_peer(self, peer: UdpPeer, reason: str) -> None:
        if not peer.is_open:
            return
        if peer._session is not None:
            self._dtls.close(peer._session)  # type: ignore[union-attr]
        self._forget_peer(peer, reason)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _forget_peer(self, peer: UdpPeer, reason: str) -> None:
        if self._peers.get(peer.peername) is peer:
            del self._peers[peer.peername]
        handler, peer.handler = peer.handler, None
        if handler is not None:
            try:
                handler.on_close(peer, reason)
            except Exception as exc:
                self._loop.call_exception_handler(  # type: ignore[union-attr]
                    {"message": "datagram handler failed", "exception": exc}
                )

    def _rearm(self) -> None:
        if self._sock is None:
            return
        if self._dtls is not None:
            deadline = self._dtls.next_deadline()
            if deadline != self._timer_at:
                self._set_timer(deadline)
        elif self._timer is None and self._peers:
            # udp:// idle sweep: one O(peers) pass when the oldest peer may be due, at most
            # every quarter idle timeout (at most 1 s); a pass that reaps nothing re-plans.
            now = self._loop.time()  # type: ignore[union-attr]
            oldest = min(p.last_activity for p in self._peers.values())
            grain = min(1.0, self.idle_timeout / 4)
            self._set_timer(max(oldest + self.idle_timeout, now + grain))

    def _set_timer(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = (
            None if deadline is None else self._loop.call_at(deadline, self._on_timer)  # type: ignore[union-attr]
        )

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self._loop.time()  # type: ignore[union-attr]
        if self._dtls is not None:
            self._dispatch(self._dtls.handle_timeout(now))
        else:
            for peer in list(self._peers.values()):
                if now >= peer.last_activity + self.idle_timeout:
                    self._forget_peer(peer, "idle timeout")
        self._flush()
        self._rearm()

    def _full(self, addr: Any) -> bool:
        # Handshakes in progress count: each holds a DTLS session's memory already.
        if self._dtls is None:
            return len(self._peers) >= self.max_sessions
        return addr not in self._dtls.sessions and len(self._dtls.sessions) >= self.max_sessions

    def _allow(self, addr: Any) -> bool:
        try:
            ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allowed)  # type: ignore[union-attr]
