"""One accepted socket, plain or TLS, and the per-connection protocol logic (`Handler`).

A `Connection` is a light object (not an actor, not a thread, not an asyncio transport) that
does its own non-blocking `recv_into`/`send` on a socket registered with the loop's selector
(`IOLoop.add_fd`) and, for TLS, drives a sans-I/O `TlsSession`. A transport would cost a
task, a future, several callbacks and a getsockname per accept, and asyncio's `SSLProtocol`
a 256 KiB buffer per connection; here nothing per connection is sized beyond what OpenSSL
itself needs, and received bytes land in one buffer shared by the listener's connections.
Bytes go to a per-connection `Handler`; the owning `TcpServer` learns of opens, closes and
handshake failures through the methods listed under "called by connections" there.
Everything here runs in the loop thread; from another thread, `ioloop.post(conn.write, data)`.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any

from yuneta.netio.loop import READ, WRITE
from yuneta.netio.tls_session import HANDSHAKE_DONE, TlsFailed, TlsSession

if TYPE_CHECKING:
    from yuneta.netio.server import TcpServer

# Flow control of a connection's unsent bytes (asyncio's transport defaults).
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
# Non-blocking per call (one syscall less per connection than setting O_NONBLOCK).
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

_HANDSHAKING, _OPEN, _CLOSING, _CLOSED = range(4)


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


class TlsSessionError(Exception):
    """A TLS session failed after its handshake (`on_close` gets it)."""


class Connection:
    """One accepted socket, plain or TLS, living in the loop thread.

    `peername`, `user_data` (free for the listener), `write()`, `close()`, `abort()`; for
    TLS also `tls_version`, `cipher`, `cert_serial` (the serial of the certificate this
    session was served with), `peer_cert_serial` (client certificate under mTLS),
    `session_reused` and `context`. An exception from a handler aborts that connection
    (`on_close` gets it) and is reported to the loop's exception handler, as asyncio does for a
    failing protocol. Writes go straight to the socket; what the kernel does not take is
    buffered, and above `HIGH_WATER` buffered bytes reading pauses until the peer drains below
    `LOW_WATER` (so echo-style handlers cannot balloon).
    """

    __slots__ = (
        "_server",
        "_sock",
        "_fd",
        "_handler",
        "_tls",
        "_state",
        "_wbuf",
        "_reading",
        "deadline",
        "peername",
        "user_data",
    )

    def __init__(self, server: TcpServer, sock: Any, peername: Any) -> None:
        self._server = server
        self._sock: Any = sock
        self._fd = sock.fileno()
        self._handler: Handler | None = None
        self._tls: TlsSession | None = None
        self._state = _HANDSHAKING
        self._wbuf: bytearray | None = None  # unsent bytes, allocated only when needed
        self._reading = False
        self.deadline = 0.0  # of the TLS handshake (the server sweeps)
        self.peername: Any = peername
        self.user_data: Any = None

    # -- public API (loop thread only) -------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def is_tls(self) -> bool:
        return self._tls is not None

    @property
    def handshaking(self) -> bool:
        return self._state == _HANDSHAKING

    def write(self, data: bytes) -> None:
        """Send `data` (encrypted for TLS). Ignored once the connection is closing."""
        if self._state != _OPEN or not data:
            return
        tls = self._tls
        if tls is None:
            self._send(data)
            return
        failed = tls.send(data)
        if failed is not None:
            self._abort(TlsSessionError(failed.reason))
            return
        self._send(tls.data_to_send())

    def close(self) -> None:
        """Close: TLS close_notify then FIN, after pending writes. `on_close` follows."""
        state = self._state
        if state >= _CLOSING or self._sock is None:
            return
        if state == _HANDSHAKING:
            self._server.handshake_ended(self)
            self._state = _CLOSED
        else:
            self._state = _CLOSING
            if self._tls is not None:
                self._tls.close()
                self._flush()
        self._close_socket(None)

    def abort(self) -> None:
        """Drop the connection now, discarding unsent data; later writes are ignored."""
        if self._sock is None:
            return
        state = self._state
        if state == _HANDSHAKING:
            self._server.handshake_ended(self)
            self._state = _CLOSED
        elif state == _OPEN:
            self._state = _CLOSING  # no more on_data, write() ignored, is_open False
        # _CLOSING/_CLOSED: possibly still flushing (close(), a failed handshake's alert)
        self._force_close(None)

    @property
    def context(self) -> ssl.SSLContext | None:
        return self._tls.context if self._tls is not None else None

    @property
    def tls_version(self) -> str | None:
        return self._tls.version() if self._tls is not None else None

    @property
    def cipher(self) -> str | None:
        return self._tls.cipher() if self._tls is not None else None

    @property
    def session_reused(self) -> bool:
        return self._tls is not None and self._tls.session_reused()

    @property
    def cert_serial(self) -> str | None:
        """Serial of our certificate in this session (set on contexts built by ytls)."""
        ctx = self.context
        return getattr(ctx, "yuneta_cert_serial", None) if ctx is not None else None

    @property
    def peer_cert_serial(self) -> str | None:
        """Upper-case hex serial of the client's certificate (mTLS), else None."""
        der = self._peer_der()
        if not der:
            return None
        from cryptography import x509  # only needed when someone asks

        return format(x509.load_der_x509_certificate(der).serial_number, "X")

    # -- socket events (called by the server and the selector) ---------------------------------

    def start(self, context: ssl.SSLContext | None) -> None:
        """Just accepted: start reading; wrap for TLS with `context` (None: plain)."""
        server = self._server
        server.selector.add_fd(self._fd, READ, self)
        self._reading = True
        if context is None:
            self._open()
            return
        self._tls = TlsSession(context)
        server.handshake_started(self)

    def __call__(self, events: int) -> None:
        """The selector's callback: the connection itself, not a bound method object per
        connection (64 bytes each, for the life of the connection)."""
        try:
            if events & WRITE:
                self._on_writable()
            if self._reading:  # readable, or hung up / in error: recv tells which
                self._on_readable()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal(exc)

    def fatal(self, exc: BaseException) -> None:
        """A callback raised: report it to the loop and drop this connection."""
        self._server.ioloop.loop.call_exception_handler(
            {"message": "netio: connection callback failed", "exception": exc, "connection": self}
        )
        if self._state == _OPEN:
            self._state = _CLOSING
        self._force_close(exc)  # during a handshake, _lost reports it as a failed one

    def _on_readable(self) -> None:
        server = self._server
        rbuf = server.recv_buffer
        try:
            nbytes = self._sock.recv_into(rbuf, 0, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. reset by the peer: nothing left to send anyway
            self._lost(exc)  # now, no extra callback (no user code is on the stack here)
            return
        if not nbytes:  # EOF: the peer is gone; finish sending what we have, then close
            if self._state == _HANDSHAKING:
                self._state = _CLOSED
                server.handshake_failed(self, "peer closed during handshake")
            if self._wbuf is None:
                self._lost(None)  # nothing left to send: done now, no extra callback
            else:
                self._close_socket(None)
            return
        tls = self._tls
        if tls is None:
            if self._state == _OPEN:
                # One receive buffer per server, shared by its connections: consumed here,
                # synchronously, so no connection owns a buffer and no recv allocates.
                self._handler.on_data(self, bytes(rbuf[:nbytes]))  # type: ignore[union-attr]
            return
        events = tls.receive(rbuf[:nbytes])
        if not events:  # mid-handshake: our next flight, if any
            self._flush()
            return
        for event in events:
            if event.__class__ is bytes:
                if self._state != _OPEN:
                    return
                self._handler.on_data(self, event)  # type: ignore[union-attr]
            elif event is HANDSHAKE_DONE:
                self._flush()  # our last flight and the session tickets, in one send
                server.handshake_ended(self)
                self._open()
            elif event.__class__ is TlsFailed:
                self._flush()  # the alert tells the peer why
                if self._state == _HANDSHAKING:
                    self._state = _CLOSED
                    server.handshake_failed(self, event.reason)
                    self._close_socket(None)
                else:
                    self._abort(TlsSessionError(event.reason))
                return
            else:  # the peer's close_notify: answer it, then FIN
                self.close()
                return
        if self._state == _OPEN and tls.pending_out:
            self._flush()  # e.g. a TLS 1.3 KeyUpdate answer

    def _on_writable(self) -> None:
        buf = self._wbuf
        sock = self._sock
        if buf is None or sock is None:
            return
        try:
            n = sock.send(buf, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del buf[:n]
        selector = self._server.selector
        if buf:
            if not self._reading and len(buf) <= LOW_WATER and self._state == _OPEN:
                self._reading = True  # the peer caught up: read again
                selector.modify_fd(self._fd, READ | WRITE)
            return
        self._wbuf = None
        if self._state >= _CLOSING and not self._reading:
            self._lost(None, True)  # close() was waiting for the buffer to drain
            return
        if self._state == _OPEN:
            self._reading = True
        selector.modify_fd(self._fd, READ if self._reading else 0)

    # -- internals -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        buf = self._wbuf
        if buf is not None:  # already waiting for the socket: keep the order
            buf += data
            if self._reading and len(buf) > HIGH_WATER:
                self._reading = False  # the peer reads slower than we write: stop reading
                self._server.selector.modify_fd(self._fd, WRITE)
            return
        try:
            n = self._sock.send(data, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._force_close(exc)
            return
        if n == len(data):
            return
        self._wbuf = buf = bytearray(data[n:])
        if self._reading and len(buf) > HIGH_WATER:
            self._reading = False
        self._server.selector.modify_fd(self._fd, (READ if self._reading else 0) | WRITE)

    def _open(self) -> None:
        self._state = _OPEN
        self._handler = self._server.connection_opened(self)
        self._handler.on_open(self)

    def _flush(self) -> None:
        tls = self._tls
        if tls is not None and tls.pending_out and self._sock is not None:
            self._send(tls.data_to_send())

    def _end_tls(self, state: int, sock: Any) -> None:
        """The connection is going: drop the TLS session (it holds the context an old
        certificate lives in), marking a finished one closed by us so that OpenSSL keeps it
        resumable by its id."""
        tls, self._tls = self._tls, None
        if tls is not None and state != _HANDSHAKING:
            tls.close()

    def _peer_der(self) -> bytes | None:
        return self._tls.peer_certificate() if self._tls is not None else None

    def timeout_handshake(self) -> None:
        """The server's sweep found this handshake past its deadline."""
        self._state = _CLOSED
        self._server.handshake_failed(self, "handshake timeout")
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
            self._server.selector.modify_fd(self._fd, WRITE if self._wbuf is not None else 0)
        if self._wbuf is None:
            self._server.ioloop.loop.call_soon(self._lost, exc, True)
        # else _on_writable calls _lost once the buffer is empty

    def _force_close(self, exc: BaseException | None) -> None:
        """Discard unsent bytes and close now (`on_close` in a later callback)."""
        if self._sock is None:
            return
        if self._reading or self._wbuf is not None:
            self._reading = False
            self._wbuf = None
            self._server.selector.modify_fd(self._fd, 0)
        self._server.ioloop.loop.call_soon(self._lost, exc)

    def _lost(self, exc: BaseException | None, linger: bool = False) -> None:
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._reading = False
        self._wbuf = None
        server = self._server
        server.selector.remove_fd(self._fd)
        state = self._state
        self._state = _CLOSED
        self._end_tls(state, sock)  # before the FIN: a session on the socket may still write
        if linger:
            server.ioloop.linger(sock)
        else:
            sock.close()
        handler, self._handler = self._handler, None
        # The TLS session is dropped (above): it holds the context an old certificate lives
        # in. Bookkeeping before callbacks: one that raises must not leave us registered.
        server.connection_lost(self)
        if state == _HANDSHAKING:
            server.handshake_failed(self, str(exc) if exc else "peer closed during handshake")
        elif state != _CLOSED:  # _OPEN or _CLOSING: on_open ran
            server.connection_closed(self, handler, exc)  # type: ignore[arg-type]
