"""A TCP (optionally TLS) listener on an `IOLoop`: accept, filter, count, time out handshakes.

`TcpServer` owns its listening sockets (registered with the loop's selector), the set of its
`Connection`s, one receive buffer they share, and the handshake deadlines, enforced by one
periodic sweep instead of a timer per connection. TLS contexts come from a zero-arg provider
called at accept time, so a certificate reload (`yuneta.ytls.Ytls.reload`) affects new
connections only while live ones keep the session (and so the context) they started with.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from yuneta import sslcompat
from yuneta.netio.connection import DONTWAIT, Connection, EchoHandler, Handler
from yuneta.netio.loop import READ, FdSelector, IOLoop
from yuneta.netio.tls_connection import SocketTlsConnection

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_RECV_BUFFER_SIZE = 256 * 1024
# Connections accepted per readiness event of a listening socket. One, as nginx does without
# `multi_accept`: the poll is level-triggered, so the next wakeup (which serves the other
# ready sockets too) takes the next one, and no accept per wakeup ends in EAGAIN.
_ACCEPT_BATCH = 1
_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_monotonic = time.monotonic


def _networks(items: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(str(item).strip(), strict=False) for item in items]


class TcpServer:
    """A TCP (optionally TLS) listener on an `IOLoop`.

    Thread model: construct anywhere; `start_listening()` / `stop_listening()` block and
    must be called from outside the loop thread (inside it, await `listen()` / `aclose()`).
    `tls` is a zero-arg callable returning the current `SSLContext` (e.g. `Ytls.get_context`).
    Callbacks run in the loop thread and must be cheap: `on_connection_open(conn)`,
    `on_connection_close(conn, exc)`, `on_handshake_failed(peername, reason)`.
    Counters (plain ints, readable from any thread): `connxs` (open now), `tconnxs` (opened
    in total), `handshaking` (TLS handshakes in progress), `handshake_failures`, `rejected`
    (closed at accept by `only_allowed_ips`).
    """

    def __init__(
        self,
        ioloop: IOLoop,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler: Callable[[], Handler] = EchoHandler,
        backlog: int = 511,
        only_allowed_ips: Iterable[str] | None = None,
        tls: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        on_connection_open: Callable[[Connection], None] | None = None,
        on_connection_close: Callable[[Connection, BaseException | None], None] | None = None,
        on_handshake_failed: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.ioloop = ioloop
        self.host = host
        self.port = port
        self.backlog = backlog
        self.handshake_timeout = handshake_timeout
        self.on_connection_open = on_connection_open
        self.on_connection_close = on_connection_close
        self.on_handshake_failed = on_handshake_failed
        self._handler_factory = handler
        self._tls = tls
        self._allowed = _networks(only_allowed_ips) if only_allowed_ips else None
        self._socks: list[socket.socket] = []  # listening sockets, registered with the loop
        self._conns: set[Connection] = set()
        self._handshakes: set[Connection] = set()  # TLS handshakes in progress
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_paused: set[int] = set()
        #: The loop's selector (set by `listen`); connections register their sockets here.
        self.selector: FdSelector = None  # type: ignore[assignment]
        #: One receive buffer per server, shared by its connections (consumed synchronously).
        self.recv_buffer = memoryview(bytearray(_RECV_BUFFER_SIZE))
        self.connxs = 0
        self.tconnxs = 0
        self.handshake_failures = 0
        self.rejected = 0

    @property
    def handshaking(self) -> int:
        """TLS handshakes in progress."""
        return len(self._handshakes)

    @property
    def listening(self) -> bool:
        return bool(self._socks)

    @property
    def is_tls(self) -> bool:
        return self._tls is not None

    def connections(self) -> list[Connection]:
        """Snapshot of live connections (loop thread; elsewhere it may be slightly stale)."""
        return list(self._conns)

    def stats(self) -> dict[str, Any]:
        return {
            "listening": self.listening,
            "port": self.port,
            "connxs": self.connxs,
            "tconnxs": self.tconnxs,
            "handshaking": self.handshaking,
            "handshake_failures": self.handshake_failures,
            "rejected": self.rejected,
        }

    def start_listening(self, timeout: float = 10.0) -> int:
        """Bind and listen (from outside the loop thread); returns the real port."""
        return self.ioloop.run_sync(self.listen(), timeout)

    def stop_listening(self, close_connections: bool = False, timeout: float = 5.0) -> None:
        """Stop accepting; optionally close live connections, waiting up to `timeout`."""
        if self.ioloop.running:
            self.ioloop.run_sync(self.aclose(close_connections, timeout), timeout + 1.0)

    async def listen(self) -> int:
        """Coroutine form of `start_listening`, for the loop thread."""
        if self._socks:
            return self.port
        loop = asyncio.get_running_loop()
        self.selector = self.ioloop.selector
        infos = await loop.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        socks: list[socket.socket] = []
        try:
            seen = set()
            for family, type_, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                sock.bind(addr)
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        for sock in socks:
            self.selector.add_fd(
                sock.fileno(), READ, functools.partial(self._on_accept, sock, int(sock.family))
            )
        self._socks = socks
        self.port = socks[0].getsockname()[1]
        self.ioloop.add_server(self)
        return self.port

    async def aclose(self, close_connections: bool = False, timeout: float = 5.0) -> None:
        """Coroutine form of `stop_listening`."""
        self._stop_accepting()
        if not close_connections:
            # Connections stay; IOLoop.stop() still closes them (the last one to go, or
            # a later aclose(True), forgets the server).
            if not self._conns:
                self.ioloop.discard_server(self)
            return
        self.ioloop.discard_server(self)
        for conn in list(self._conns):
            conn.close()
        deadline = time.monotonic() + timeout
        while self._conns and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.abort()
        if self._conns:
            await asyncio.sleep(0)  # let the aborts report

    def _stop_accepting(self) -> None:
        socks, self._socks = self._socks, []
        for sock in socks:
            if sock.fileno() in self._accept_paused:
                self._accept_paused.discard(sock.fileno())
            else:
                self.selector.remove_fd(sock.fileno())
            sock.close()

    def _on_accept(self, lsock: socket.socket, family: int, events: int) -> None:
        # Our own accept: a bare socket object and a Connection, no transport, task or future.
        accept = sslcompat.accept
        # TLS on the socket itself where sslcompat has it (no idle buffers), else a
        # TlsSession over memory; the former holds a weak reference to its socket.
        direct = self._tls is not None and sslcompat.PRIVATE.get("socket_bio", False)
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = accept(lsock, direct)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise  # the loop logs it and keeps going
                # Out of descriptors or memory: pause accepting for a while (like asyncio).
                self.selector.remove_fd(lsock.fileno())
                self._accept_paused.add(lsock.fileno())
                self.ioloop.loop.call_later(1.0, self._resume_accept, lsock)
                return
            try:
                # The descriptor stays in blocking mode: every recv/send passes MSG_DONTWAIT
                # (one syscall less per connection than setting O_NONBLOCK). A socket born
                # with a timeout (socket.setdefaulttimeout) would wait in poll(): no timeout.
                if DONTWAIT == 0 or sock.gettimeout() is not None:
                    sock.setblocking(False)
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            if self._allowed is not None and not self._ip_allowed(addr[0]):
                self.rejected += 1
                sock.close()
                continue
            try:
                context = self._tls() if self._tls is not None else None
            except Exception as exc:  # a broken provider must not kill the accept loop
                self.handshake_failures += 1
                sock.close()
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed(addr, f"no TLS context: {exc}")
                continue
            if direct:
                conn: Connection = SocketTlsConnection(self, sock, addr)
            else:
                conn = Connection(self, sock, addr)
            self._conns.add(conn)
            try:
                conn.start(context)
            except Exception as exc:  # e.g. a plain connection's on_open
                conn.fatal(exc)

    def _resume_accept(self, lsock: socket.socket) -> None:
        if lsock.fileno() in self._accept_paused:
            self._accept_paused.discard(lsock.fileno())
            self.selector.add_fd(
                lsock.fileno(), READ, functools.partial(self._on_accept, lsock, int(lsock.family))
            )

    def _schedule_sweep(self) -> None:
        interval = min(1.0, max(0.05, self.handshake_timeout / 4))
        self._sweeper = self.ioloop.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Drop TLS handshakes past their deadline; reschedules itself while any are left.

        A handshake times out between `handshake_timeout` and that plus the sweep interval
        (a quarter of the timeout, at most 1 s).
        """
        self._sweeper = None
        if not self._handshakes:
            return
        now = _monotonic()
        for conn in [c for c in self._handshakes if c.deadline <= now]:
            if conn.handshaking:
                conn.timeout_handshake()
        if self._handshakes:
            self._schedule_sweep()

    def _ip_allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allowed)  # type: ignore[union-attr]

    # -- called by connections ---------------------------------------------------------------

    def handshake_started(self, conn: Connection) -> None:
        # One periodic sweep per server enforces the deadline: no timer per connection.
        conn.deadline = _monotonic() + self.handshake_timeout
        self._handshakes.add(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def handshake_ended(self, conn: Connection) -> None:
        self._handshakes.discard(conn)
        conn.deadline = 0.0  # the shared constant: no float kept per idle connection

    def handshake_failed(self, conn: Connection, reason: str) -> None:
        self._handshakes.discard(conn)
        self.handshake_failures += 1
        if self.on_handshake_failed is not None:
            self.on_handshake_failed(conn.peername, reason)

    def connection_opened(self, conn: Connection) -> Handler:
        """`conn` is established: count it, tell the listener; returns its handler."""
        self.connxs += 1
        self.tconnxs += 1
        handler = self._handler_factory()
        if self.on_connection_open is not None:
            self.on_connection_open(conn)
        return handler

    def connection_lost(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if not self._conns and not self._socks:
            self.ioloop.discard_server(self)  # stopped and empty: IOLoop.stop is done

    def connection_closed(
        self, conn: Connection, handler: Handler, exc: BaseException | None
    ) -> None:
        self.connxs -= 1
        try:
            handler.on_close(conn, exc)
        finally:
            if self.on_connection_close is not None:
                self.on_connection_close(conn, exc)
