"""The I/O layer of a yuno: one asyncio event loop thread owning every socket.

`IOLoop` runs an asyncio loop in its own thread; actors (gobjs living in pykka threads) drive
it through thread-safe calls (`run`, `run_sync`, `call_soon_threadsafe`). `TcpServer` listens
on that loop and turns each accepted socket into a `Connection`: a light object (not an
actor, not a thread, not an asyncio transport; reading into one receive buffer shared per
server) that does its own non-blocking socket I/O and, for TLS, drives its own SSL object over
a pair of `ssl.MemoryBIO`s. That replaces asyncio's `SSLProtocol`, whose 256 KiB per-connection
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
import errno
import functools
import ipaddress
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from yuneta import sslcompat

T = TypeVar("T")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# A TLS record carries at most 16 KiB of plaintext; reading more per call only grows the
# transient bytes object SSLObject.read allocates before it shrinks it.
_TLS_READ_SIZE = 16384

_RECV_BUFFER_SIZE = 256 * 1024
# Flow control of a connection's unsent bytes (asyncio's transport defaults).
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024
# Accept at most this many connections per readiness event of a listening socket.
_ACCEPT_BATCH = 100
_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# After we close (all sent, FIN out) we keep reading, and dropping, until the peer's EOF, at
# most this long: closing with its data unread, or getting more after close, makes the
# kernel answer with a RST, which destroys whatever we sent that the peer has not read yet.
_LINGER_TIMEOUT = 5.0
_DISCARD = bytearray(65536)  # what a lingering socket still receives goes here, unread

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
                poller = _pollers.pop(loop, None)
                if poller is not None:
                    poller.close(loop)  # its epoll descriptor, now, not when gc gets to it
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


# Non-blocking per call; where the flag does not exist, sockets are made non-blocking instead.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_monotonic = time.monotonic  # handshake deadlines and their sweep
_READ, _WRITE = 1, 4  # select.EPOLLIN, select.EPOLLOUT (also used by the fallback poller)


class _EpollPoller:
    """Readiness of every socket of one loop, through one epoll registered with that loop.

    asyncio's own readiness path costs, per socket event, a selector key lookup, a `Handle`
    and a trip through the ready queue, and `add_reader`/`remove_reader` per connection
    about 5 us; here one loop callback drains the epoll and calls each socket's callback
    directly (a dict lookup per event), and registration is one epoll_ctl. The loop still
    owns the thread: the epoll's own descriptor is just one more reader in it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ep = select.epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self.lingering: dict[int, socket.socket] = {}
        loop.add_reader(self._ep.fileno(), self._dispatch)

    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._ep.register(fd, events)
        self._callbacks[fd] = callback

    def modify(self, fd: int, events: int) -> None:
        self._ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            self._ep.unregister(fd)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        _close_lingering(self)
        self._callbacks.clear()
        loop.remove_reader(self._ep.fileno())
        self._ep.close()

    def _dispatch(self) -> None:
        callbacks = self._callbacks
        # Descriptors are unregistered before they are closed, never left for close() to
        # drop: a copy of the socket elsewhere (a child forked while it was open) would keep
        # the registration alive, firing for a number that is no longer, or no longer that,
        # socket. Each fd appears once per poll, so no event of a closed one is still queued.
        for fd, events in self._ep.poll(0, 512):
            callback = callbacks.get(fd)
            if callback is not None:
                callback(events)


class _LoopPoller:
    """The same interface over `loop.add_reader`/`add_writer`, where there is no epoll."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[int, int] = {}
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self.lingering: dict[int, socket.socket] = {}

    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._events[fd] = 0
        self._callbacks[fd] = callback
        self.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        old = self._events[fd]
        callback = self._callbacks[fd]
        if events & _READ and not old & _READ:
            self._loop.add_reader(fd, callback, _READ)
        elif old & _READ and not events & _READ:
            self._loop.remove_reader(fd)
        if events & _WRITE and not old & _WRITE:
            self._loop.add_writer(fd, callback, _WRITE)
        elif old & _WRITE and not events & _WRITE:
            self._loop.remove_writer(fd)
        self._events[fd] = events

    def unregister(self, fd: int) -> None:
        if fd in self._events:
            self.modify(fd, 0)
            del self._events[fd], self._callbacks[fd]

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        _close_lingering(self)
        self._events.clear()
        self._callbacks.clear()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _poller(loop: asyncio.AbstractEventLoop) -> Any:
    """The poller of `loop` (one per loop, created on first use, gone with the loop)."""
    poller = _pollers.get(loop)
    if poller is None:
        use_epoll = hasattr(select, "epoll") and isinstance(loop, asyncio.SelectorEventLoop)
        poller = _pollers[loop] = (_EpollPoller if use_epoll else _LoopPoller)(loop)
    return poller


def _linger(loop: asyncio.AbstractEventLoop, poller: Any, sock: socket.socket) -> None:
    """Everything is sent: FIN, then drop what still arrives until the peer's EOF (or
    `_LINGER_TIMEOUT`), then close. Only for closes we start, so off the hot path."""
    fd = sock.fileno()
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # not connected any more
        sock.close()
        return

    def done() -> None:
        if poller.lingering.get(fd) is sock:
            del poller.lingering[fd]
            timer.cancel()
            poller.unregister(fd)
            sock.close()

    def on_event(events: int) -> None:
        try:
            if sock.recv_into(_DISCARD, 0, _DONTWAIT):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        done()  # EOF or an error

    poller.lingering[fd] = sock
    poller.register(fd, _READ, on_event)
    timer = loop.call_later(_LINGER_TIMEOUT, done)


def _close_lingering(poller: Any) -> None:
    """The loop is ending: close what still lingers."""
    for fd, sock in list(poller.lingering.items()):
        poller.unregister(fd)
        sock.close()
    poller.lingering.clear()


def _chain_too_deep(sslobj: Any) -> str | None:
    """Why a finished handshake is refused by the context's `ssl_verify_depth`, or None.

    OpenSSL's meaning: the most intermediate CAs between the peer's leaf and the trust
    anchor (Python's `ssl` cannot set it on the context, so it is checked here).
    """
    depth = getattr(sslobj.context, "yuneta_verify_depth", None)
    if depth is None:
        return None
    intermediates = sslcompat.verified_chain_length(sslobj) - 2
    if intermediates <= depth:
        return None
    return (
        f"client certificate chain has {intermediates} intermediate CA(s), ssl_verify_depth {depth}"
    )


class Connection:
    """One accepted socket, plain or TLS, living in the loop thread.

    `peername`, `user_data` (free for the listener), `write()`, `close()`; for TLS also
    `tls_version`, `cipher`, `cert_serial` (the serial of the certificate this session was
    served with), `peer_cert_serial` (client certificate under mTLS) and `context`.

    No asyncio transport: the connection registers its socket with the loop's poller (one
    epoll per loop, itself a reader of the asyncio loop) and does its own non-blocking
    `recv_into`/`send`, which keeps per-connection objects and per-event Python work to a
    minimum (a transport costs a task, a future, several callbacks and a getsockname per
    accept). An exception from a handler aborts that connection (`on_close` gets it) and is
    reported to the loop's exception handler, as asyncio does for a failing protocol. Writes go straight to the
    socket; what the kernel does not take is buffered, and above `_HIGH_WATER` buffered bytes
    reading pauses until the peer drains below `_LOW_WATER` (so echo-style handlers cannot
    balloon).
    """

    __slots__ = (
        "_server",
        "_sock",
        "_fd",
        "_handler",
        "_sslobj",
        "_in",
        "_out",
        "_state",
        "_deadline",
        "_wbuf",
        "_reading",
        "peername",
        "user_data",
    )

    def __init__(self, server: TcpServer, sock: socket.socket, peername: Any) -> None:
        self._server = server
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._handler: Handler | None = None
        self._sslobj: Any = None  # the C-level SSL object behind ssl.SSLObject
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._state = _HANDSHAKING
        self._deadline = 0.0
        self._wbuf: bytearray | None = None  # unsent bytes, allocated only when needed
        self._reading = False
        self.peername: Any = peername
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
            self._send(data)
            return
        try:
            sslobj.write(data)
        except ssl.SSLError as exc:
            self._abort(exc)
            return
        self._send(self._out.read())  # type: ignore[union-attr]

    def close(self) -> None:
        """Close: TLS close_notify then FIN, after pending writes. `on_close` follows."""
        state = self._state
        if state >= _CLOSING or self._sock is None:
            return
        if state == _HANDSHAKING:
            self._end_handshake()
            self._state = _CLOSED
        else:
            self._state = _CLOSING
            if self._sslobj is not None:
                try:
                    self._sslobj.shutdown()
                except ssl.SSLError:
                    pass  # WantRead: we do not wait for the peer's close_notify
                self._flush()
        self._close_socket(None)

    def abort(self) -> None:
        """Drop the connection now, discarding unsent data; later writes are ignored."""
        if self._sock is None:
            return
        state = self._state
        if state == _HANDSHAKING:
            self._end_handshake()
            self._state = _CLOSED
        elif state == _OPEN:
            self._state = _CLOSING  # no more on_data, write() ignored, is_open False
        # _CLOSING/_CLOSED: possibly still flushing (close(), a failed handshake's alert)
        self._force_close(None)

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
        der = self._sslobj.getpeercert(True) if self._sslobj is not None else None
        if not der:
            return None
        from cryptography import x509  # only needed when someone asks

        return format(x509.load_der_x509_certificate(der).serial_number, "X")

    # -- socket events -----------------------------------------------------------------------

    def _start(self) -> None:
        """Just accepted: filter, wrap for TLS, start reading."""
        server = self._server
        if server._allowed is not None and not server._ip_allowed(self.peername[0]):
            server.rejected += 1
            self._state = _CLOSED
            self._sock.close()  # type: ignore[union-attr]
            self._sock = None
            return
        server._conns.add(self)
        server._poller.register(self._fd, _READ, self._on_event)
        self._reading = True
        provider = server._tls
        if provider is None:
            self._open()
            return
        server.handshaking += 1
        try:
            self._in = incoming = ssl.MemoryBIO()
            self._out = outgoing = ssl.MemoryBIO()
            # The context current *now*: a later reload does not touch this session.
            self._sslobj = sslcompat.wrap_server(provider(), incoming, outgoing)
        except Exception as exc:  # a broken provider must not kill the accept loop
            self._fail_handshake(f"no TLS context: {exc}")
            return
        # One periodic sweep per server enforces the deadline: no timer per connection.
        self._deadline = _monotonic() + server.handshake_timeout
        server._handshakes.add(self)
        if server._sweeper is None:
            server._schedule_sweep()

    def _on_event(self, events: int) -> None:
        try:
            if events & _WRITE:
                self._on_writable()
            if self._reading:  # readable, or hung up / in error: recv tells which
                self._on_readable()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        self._server._loop.call_exception_handler(  # type: ignore[union-attr]
            {"message": "netio: connection callback failed", "exception": exc, "connection": self}
        )
        if self._state == _OPEN:
            self._state = _CLOSING
        self._force_close(exc)  # during a handshake, _lost reports it as a failed one

    def _on_readable(self) -> None:
        server = self._server
        try:
            nbytes = self._sock.recv_into(server._rbuf, 0, _DONTWAIT)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. reset by the peer: nothing left to send anyway
            self._lost(exc)  # now, no extra callback (no user code is on the stack here)
            return
        if not nbytes:  # EOF: the peer is gone; finish sending what we have, then close
            if self._state == _HANDSHAKING:
                self._end_handshake()
                self._state = _CLOSED
                server._handshake_failed(self, "peer closed during handshake")
            if self._wbuf is None:
                self._lost(None)  # nothing left to send: done now, no extra callback
            else:
                self._close_socket(None)
            return
        sslobj = self._sslobj
        if sslobj is None:
            if self._state == _OPEN:
                # One receive buffer per server, shared by its connections: consumed here,
                # synchronously, so no connection owns a buffer and no recv allocates.
                self._handler.on_data(self, bytes(server._rbuf[:nbytes]))  # type: ignore[union-attr]
            return
        incoming = self._in
        incoming.write(server._rbuf[:nbytes])  # type: ignore[union-attr]
        if self._state == _HANDSHAKING:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                out = self._out
                if out.pending:  # type: ignore[union-attr]
                    self._send(out.read())  # type: ignore[union-attr]
                return
            except ssl.SSLError as exc:
                self._flush()  # the alert tells the client why
                self._fail_handshake(exc.reason or str(exc))
                return
            self._flush()  # our last flight and the session tickets, in one send
            refused = _chain_too_deep(sslobj)
            if refused is not None:
                self._fail_handshake(refused)
                return
            self._end_handshake()
            self._open()
            # Application data may have come with the client's Finished; else nothing to read.
            if not incoming.pending and not sslobj.pending():  # type: ignore[union-attr]
                return
        if self._state == _OPEN:
            self._read_tls(sslobj)

    def _on_writable(self) -> None:
        buf = self._wbuf
        sock = self._sock
        if buf is None or sock is None:
            return
        try:
            n = sock.send(buf, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del buf[:n]
        if buf:
            if not self._reading and len(buf) <= _LOW_WATER and self._state == _OPEN:
                self._reading = True  # the peer caught up: read again
                self._server._poller.modify(self._fd, _READ | _WRITE)
            return
        self._wbuf = None
        if self._state >= _CLOSING and not self._reading:
            self._lost(None, True)  # close() was waiting for the buffer to drain
            return
        if self._state == _OPEN:
            self._reading = True
        self._server._poller.modify(self._fd, _READ if self._reading else 0)

    # -- internals -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        buf = self._wbuf
        if buf is not None:  # already waiting for the socket: keep the order
            buf += data
            if self._reading and len(buf) > _HIGH_WATER:
                self._reading = False  # the peer reads slower than we write: stop reading
                self._server._poller.modify(self._fd, _WRITE)
            return
        try:
            n = self._sock.send(data, _DONTWAIT)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._force_close(exc)
            return
        if n == len(data):
            return
        self._wbuf = buf = bytearray(data[n:])
        if self._reading and len(buf) > _HIGH_WATER:
            self._reading = False
        self._server._poller.modify(self._fd, (_READ if self._reading else 0) | _WRITE)

    def _open(self) -> None:
        self._state = _OPEN
        server = self._server
        server.connxs += 1
        server.tconnxs += 1
        self._handler = server._handler_factory()
        if server.on_connection_open is not None:
            server.on_connection_open(self)
        self._handler.on_open(self)

    def _read_tls(self, sslobj: Any) -> None:
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
            if not chunk:  # read returns b"" on the peer's close_notify
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
        if out is not None and out.pending and self._sock is not None:
            self._send(out.read())

    def _end_handshake(self) -> None:
        server = self._server
        server._handshakes.discard(self)
        server.handshaking -= 1

    def _fail_handshake(self, reason: str) -> None:
        self._end_handshake()
        self._state = _CLOSED
        self._server._handshake_failed(self, reason)
        self._close_socket(None)

    def _timeout_handshake(self) -> None:
        self._end_handshake()
        self._state = _CLOSED
        self._server._handshake_failed(self, "handshake timeout")
        self._force_close(None)

    def _abort(self, exc: BaseException) -> None:
        self._state = _CLOSING
        self._force_close(exc)

    def _close_socket(self, exc: BaseException | None) -> None:
        """Stop reading; once unsent bytes are out, FIN and linger (`on_close` then)."""
        if self._sock is None:
            return
        if self._reading:
            self._reading = False
            self._server._poller.modify(self._fd, _WRITE if self._wbuf is not None else 0)
        if self._wbuf is None:
            self._server._loop.call_soon(self._lost, exc, True)  # type: ignore[union-attr]
        # else _on_writable calls _lost once the buffer is empty

    def _force_close(self, exc: BaseException | None) -> None:
        """Discard unsent bytes and close now (`on_close` in a later callback)."""
        if self._sock is None:
            return
        if self._reading or self._wbuf is not None:
            self._reading = False
            self._wbuf = None
            self._server._poller.modify(self._fd, 0)
        self._server._loop.call_soon(self._lost, exc)  # type: ignore[union-attr]

    def _lost(self, exc: BaseException | None, linger: bool = False) -> None:
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._reading = False
        self._wbuf = None
        server = self._server
        server._poller.unregister(self._fd)
        if linger:
            _linger(server._loop, server._poller, sock)  # type: ignore[arg-type]
        else:
            sock.close()
        state = self._state
        self._state = _CLOSED
        # Bookkeeping first: a callback that raises below must not leave us registered.
        server._conns.discard(self)
        if not server._conns and not server._socks:
            server.ioloop._servers.discard(server)  # stopped and empty: IOLoop.stop is done
        # Drop the SSL object now: it holds the context an old certificate lives in.
        self._sslobj = self._in = self._out = None
        handler, self._handler = self._handler, None
        if state == _HANDSHAKING:
            self._end_handshake()
            server._handshake_failed(self, str(exc) if exc else "peer closed during handshake")
        elif state != _CLOSED:  # _OPEN or _CLOSING: on_open ran
            server.connxs -= 1
            try:
                handler.on_close(self, exc)  # type: ignore[union-attr]
            finally:
                if server.on_connection_close is not None:
                    server.on_connection_close(self, exc)


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[Connection] = set()
        self._handshakes: set[Connection] = set()  # TLS handshakes in progress
        self._sweeper: asyncio.TimerHandle | None = None
        self._poller: Any = None
        self._accept_paused: set[int] = set()
        self._rbuf = memoryview(bytearray(_RECV_BUFFER_SIZE))
        self.connxs = 0
        self.tconnxs = 0
        self.handshaking = 0
        self.handshake_failures = 0
        self.rejected = 0

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
        self._loop = loop
        self._poller = _poller(loop)
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
            self._poller.register(
                sock.fileno(), _READ, functools.partial(self._on_accept, sock, int(sock.family))
            )
        self._socks = socks
        self.port = socks[0].getsockname()[1]
        self.ioloop._servers.add(self)
        return self.port

    async def aclose(self, close_connections: bool = False, timeout: float = 5.0) -> None:
        """Coroutine form of `stop_listening`."""
        self._stop_accepting()
        if not close_connections:
            # Connections stay; IOLoop.stop() still closes them (the last one to go, or
            # a later aclose(True), forgets the server).
            if not self._conns:
                self.ioloop._servers.discard(self)
            return
        self.ioloop._servers.discard(self)
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
                self._poller.unregister(sock.fileno())
            sock.close()

    def _on_accept(self, lsock: socket.socket, family: int, events: int) -> None:
        # Our own accept: a bare socket object and a Connection, no transport, task or future.
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = sslcompat.accept(lsock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise  # the loop logs it and keeps going
                # Out of descriptors or memory: pause accepting for a while (like asyncio).
                self._poller.unregister(lsock.fileno())
                self._accept_paused.add(lsock.fileno())
                self._loop.call_later(1.0, self._resume_accept, lsock)  # type: ignore[union-attr]
                return
            try:
                # The descriptor stays in blocking mode: every recv/send passes MSG_DONTWAIT
                # (one syscall less per connection than setting O_NONBLOCK). A socket born
                # with a timeout (socket.setdefaulttimeout) would wait in poll(): no timeout.
                if _DONTWAIT == 0 or sock.gettimeout() is not None:
                    sock.setblocking(False)
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                continue
            conn = Connection(self, sock, addr)
            try:
                conn._start()
            except Exception as exc:  # e.g. a plain connection's on_open
                conn._fatal(exc)

    def _resume_accept(self, lsock: socket.socket) -> None:
        if lsock.fileno() in self._accept_paused:
            self._accept_paused.discard(lsock.fileno())
            self._poller.register(
                lsock.fileno(), _READ, functools.partial(self._on_accept, lsock, int(lsock.family))
            )

    def _schedule_sweep(self) -> None:
        interval = min(1.0, max(0.05, self.handshake_timeout / 4))
        self._sweeper = self._loop.call_later(interval, self._sweep)  # type: ignore[union-attr]

    def _sweep(self) -> None:
        """Drop TLS handshakes past their deadline; reschedules itself while any are left.

        A handshake times out between `handshake_timeout` and that plus the sweep interval
        (a quarter of the timeout, at most 1 s).
        """
        self._sweeper = None
        if not self._handshakes:
            return
        now = _monotonic()
        for conn in [c for c in self._handshakes if c._deadline <= now]:
            if conn._state == _HANDSHAKING:
                conn._timeout_handshake()
        if self._handshakes:
            self._schedule_sweep()

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
