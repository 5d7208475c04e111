"""The I/O layer of a yuno: one asyncio event loop thread owning every socket.

`IOLoop` runs an asyncio loop in its own thread; actors (gobjs living in pykka threads) drive
it through thread-safe calls (`run`, `run_sync`, `call_soon_threadsafe`). `TcpServer` listens
on that loop and turns each accepted socket into a `Connection`: a light `asyncio.Protocol`
object (not an actor, not a thread; reading into one receive buffer shared per server) that, for TLS, drives its own `ssl.SSLObject` over a pair
of `ssl.MemoryBIO`s. That replaces asyncio's `SSLProtocol`, whose 256 KiB per-connection
buffer makes an idle TLS connection cost ~280 KiB; here nothing per connection is sized
beyond what OpenSSL itself needs. TLS contexts come from a zero-arg provider called at
accept time, so a certificate reload (`yuneta.ytls.Ytls.reload`) affects new connections only
while live ones keep the `SSLObject` (and so the context) they were wrapped with. Bytes go
to a per-connection `Handler` (`on_open`, `on_data`, `on_close`); the listener learns of
opens, closes and handshake failures through cheap callbacks and plain counters. Every
`Connection` method and every callback runs in the loop thread; from another thread, use
`ioloop.call_soon_threadsafe(conn.write, data)`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# A TLS record carries at most 16 KiB of plaintext; reading more per call only grows the
# transient bytes object SSLObject.read allocates before it shrinks it.
_TLS_READ_SIZE = 16384

_RECV_BUFFER_SIZE = 256 * 1024

_HANDSHAKING, _OPEN, _CLOSING, _CLOSED = range(4)


class IOLoop:
    """An asyncio event loop in its own daemon thread.

    `start()` returns once the loop runs; `stop()` closes every server started on it
    (connections included), stops the loop and joins the thread.
    """

    def __init__(self, name: str = "yuneta-io") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: set[TcpServer] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running asyncio loop (RuntimeError before `start()`)."""
        if self._loop is None:
            raise RuntimeError(f"IOLoop {self.name} is not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def start(self) -> None:
        """Start the loop thread; idempotent while running."""
        if self.running:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Close all servers and their connections (gracefully, within `timeout`), then stop."""
        if not self.running:
            return
        if self._servers:
            self.run_sync(self._close_servers(timeout), timeout + 1.0)
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout + 1.0)
        self._thread = None
        self._loop = None

    async def _close_servers(self, timeout: float) -> None:
        await asyncio.gather(
            *(s.aclose(close_connections=True, timeout=timeout) for s in list(self._servers))
        )

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        """Schedule `fn(*args)` in the loop thread, from any thread."""
        return self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` in the loop from another thread; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` in the loop and wait for its result (never call from the loop thread)."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("run_sync() called from the IOLoop thread would deadlock")
        return self.run(coro).result(timeout)


class Handler:
    """Per-connection protocol logic; override what you need. Runs in the loop thread.

    `on_open` after the (TLS) connection is established, `on_data` for every received chunk
    of plaintext, `on_close` exactly once after `on_open`, with the error or None.
    """

    __slots__ = ()

    def on_open(self, conn: Connection) -> None:
        """The connection is ready (TLS handshake done)."""

    def on_data(self, conn: Connection, data: bytes) -> None:
        """`data` arrived (plaintext)."""

    def on_close(self, conn: Connection, exc: BaseException | None) -> None:
        """The connection is gone; `exc` is None for an orderly close."""


class EchoHandler(Handler):
    """Writes back every byte received."""

    __slots__ = ()

    def on_data(self, conn: Connection, data: bytes) -> None:
        conn.write(data)


class Connection(asyncio.BufferedProtocol):
    """One accepted socket, plain or TLS, living in the loop thread.

    `peername`, `user_data` (free for the listener), `write()`, `close()`; for TLS also
    `tls_version`, `cipher`, `cert_serial` (the serial of the certificate this session was
    served with), `peer_cert_serial` (client certificate under mTLS) and `context`.
    """

    __slots__ = (
        "_server",
        "_transport",
        "_handler",
        "_sslobj",
        "_in",
        "_out",
        "_state",
        "_timer",
        "peername",
        "user_data",
    )

    def __init__(self, server: TcpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._handler: Handler | None = None
        self._sslobj: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._state = _HANDSHAKING
        self._timer: asyncio.TimerHandle | None = None
        self.peername: Any = None
        self.user_data: Any = None

    # -- public API (loop thread only) -------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def is_tls(self) -> bool:
        return self._sslobj is not None

    def write(self, data: bytes) -> None:
        """Send `data` (encrypted for TLS). Ignored once the connection is closing."""
        if self._state != _OPEN or not data:
            return
        sslobj = self._sslobj
        if sslobj is None:
            self._transport.write(data)  # type: ignore[union-attr]
            return
        try:
            sslobj.write(data)
        except ssl.SSLError as exc:
            self._abort(exc)
            return
        self._transport.write(self._out.read())  # type: ignore[union-attr]

    def close(self) -> None:
        """Close: TLS close_notify then FIN, after pending writes. `on_close` follows."""
        state = self._state
        if state >= _CLOSING or self._transport is None:
            return
        if state == _HANDSHAKING:
            self._end_handshake()
            self._state = _CLOSED
        else:
            self._state = _CLOSING
            if self._sslobj is not None:
                try:
                    self._sslobj.unwrap()
                except ssl.SSLError:
                    pass  # WantRead: we do not wait for the peer's close_notify
                self._flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding unsent data."""
        if self._transport is not None and self._state < _CLOSED:
            if self._state == _HANDSHAKING:
                self._end_handshake()
                self._state = _CLOSED
            self._transport.abort()

    @property
    def context(self) -> ssl.SSLContext | None:
        return self._sslobj.context if self._sslobj is not None else None

    @property
    def tls_version(self) -> str | None:
        return self._sslobj.version() if self._sslobj is not None else None

    @property
    def cipher(self) -> str | None:
        c = self._sslobj.cipher() if self._sslobj is not None else None
        return c[0] if c else None

    @property
    def cert_serial(self) -> str | None:
        """Serial of our certificate in this session (set on contexts built by ytls)."""
        ctx = self.context
        return getattr(ctx, "yuneta_cert_serial", None) if ctx is not None else None

    @property
    def peer_cert_serial(self) -> str | None:
        """Upper-case hex serial of the client's certificate (mTLS), else None."""
        der = self._sslobj.getpeercert(binary_form=True) if self._sslobj is not None else None
        if not der:
            return None
        from cryptography import x509  # only needed when someone asks

        return format(x509.load_der_x509_certificate(der).serial_number, "X")

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        peer = transport.get_extra_info("peername")
        self.peername = peer
        if server._allowed is not None and not server._ip_allowed(peer[0]):
            server.rejected += 1
            self._state = _CLOSED
            transport.abort()
            return
        server._conns.add(self)
        provider = server._tls
        if provider is None:
            self._open()
            return
        try:
            self._in = ssl.MemoryBIO()
            self._out = ssl.MemoryBIO()
            # The context current *now*: a later reload does not touch this session.
            self._sslobj = provider().wrap_bio(self._in, self._out, server_side=True)
        except Exception as exc:  # a broken provider must not kill the accept loop
            server.handshaking += 1
            self._fail_handshake(f"no TLS context: {exc}")
            return
        server.handshaking += 1
        self._timer = server._loop.call_later(server.handshake_timeout, self._handshake_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        # One receive buffer per server, shared by its connections: the loop thread consumes
        # it synchronously in buffer_updated, so no connection owns a buffer and no recv
        # allocates (a plain Protocol's recv(256 KiB) costs an mmap/munmap per read).
        return self._server._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        sslobj = self._sslobj
        if sslobj is None:
            if self._state == _OPEN:
                self._handler.on_data(self, bytes(self._server._rbuf[:nbytes]))  # type: ignore[union-attr]
            return
        self._in.write(self._server._rbuf[:nbytes])  # type: ignore[union-attr]
        if self._state == _HANDSHAKING:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._flush()  # the alert tells the client why
                self._fail_handshake(exc.reason or str(exc))
                return
            self._flush()
            self._end_handshake()
            self._open()
        if self._state == _OPEN:
            self._read_tls(sslobj)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost reports

    def pause_writing(self) -> None:
        # Peer reads slower than we write: stop reading so echo-style handlers can't balloon.
        self._transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self._transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._state = _CLOSED
        server = self._server
        if state == _HANDSHAKING:
            self._end_handshake()
            server._handshake_failed(self, str(exc) if exc else "peer closed during handshake")
        server._conns.discard(self)
        # Drop the SSLObject now: it holds the context an old certificate lives in.
        self._sslobj = self._in = self._out = None
        if state in (_OPEN, _CLOSING):
            server.connxs -= 1
            try:
                self._handler.on_close(self, exc)  # type: ignore[union-attr]
            finally:
                if server.on_connection_close is not None:
                    server.on_connection_close(self, exc)
        self._handler = None

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> None:
        self._state = _OPEN
        server = self._server
        server.connxs += 1
        server.tconnxs += 1
        self._handler = server._handler_factory()
        if server.on_connection_open is not None:
            server.on_connection_open(self)
        self._handler.on_open(self)

    def _read_tls(self, sslobj: ssl.SSLObject) -> None:
        incoming = self._in
        handler = self._handler
        while True:
            try:
                chunk = sslobj.read(_TLS_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._abort(exc)
                return
            if not chunk:  # SSLObject.read returns b"" on the peer's close_notify
                self.close()  # answer it, then FIN
                return
            handler.on_data(self, chunk)  # type: ignore[union-attr]
            if self._state != _OPEN:
                return
            # Nothing buffered on either side means another read would only raise WantRead.
            if not incoming.pending and not sslobj.pending():  # type: ignore[union-attr]
                break
        if self._out.pending:  # type: ignore[union-attr]
            self._flush()  # e.g. a TLS 1.3 KeyUpdate answer

    def _flush(self) -> None:
        out = self._out
        if out is not None and out.pending:
            self._transport.write(out.read())  # type: ignore[union-attr]

    def _end_handshake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.handshaking -= 1

    def _fail_handshake(self, reason: str) -> None:
        self._end_handshake()
        self._state = _CLOSED
        self._server._handshake_failed(self, reason)
        self._transport.close()  # type: ignore[union-attr]

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKING:
            self._fail_handshake("handshake timeout")
            self._transport.abort()  # type: ignore[union-attr]

    def _abort(self, exc: BaseException) -> None:
        self._state = _CLOSING
        self._transport.abort()  # type: ignore[union-attr]


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
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[Connection] = set()
        self._rbuf = memoryview(bytearray(_RECV_BUFFER_SIZE))
        self.connxs = 0
        self.tconnxs = 0
        self.handshaking = 0
        self.handshake_failures = 0
        self.rejected = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

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
        if self._server is not None:
            return self.port
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(
            lambda: Connection(self),
            self.host,
            self.port,
            backlog=self.backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.ioloop._servers.add(self)
        return self.port

    async def aclose(self, close_connections: bool = False, timeout: float = 5.0) -> None:
        """Coroutine form of `stop_listening`."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.ioloop._servers.discard(self)
        if not close_connections:
            return
        for conn in list(self._conns):
            conn.close()
        deadline = time.monotonic() + timeout
        while self._conns and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.abort()

    # -- called by connections ---------------------------------------------------------------

    def _ip_allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allowed)  # type: ignore[union-attr]

    def _handshake_failed(self, conn: Connection, reason: str) -> None:
        self.handshake_failures += 1
        if self.on_handshake_failed is not None:
            self.on_handshake_failed(conn.peername, reason)
