"""A TLS connection whose OpenSSL session reads and writes the socket itself (socket BIO).

The memory-lean path of the TLS listener, used where `yuneta.sslcompat` provides it: OpenSSL
owns the socket's I/O as in nginx, so with `SSL_MODE_RELEASE_BUFFERS` an idle connection
keeps no TLS buffer at all, where a `TlsSession` over memory BIOs keeps two at their
high-water size. Same contract as `Connection` (handler callbacks, flow control, close with
close_notify then FIN and linger, counters); only the TLS I/O differs. What OpenSSL could
not write yet stays as plaintext in the connection's buffer and is retried whole when the
socket is writable, which OpenSSL allows (CPython sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
"""

from __future__ import annotations

import ssl
from typing import Any

from yuneta import sslcompat
from yuneta.netio.connection import (
    _CLOSED,
    _CLOSING,
    _HANDSHAKING,
    _OPEN,
    HIGH_WATER,
    LOW_WATER,
    Connection,
    TlsSessionError,
)
from yuneta.netio.loop import READ, WRITE
from yuneta.netio.tls_session import chain_too_deep

_READ_SIZE = 16384
# How many wakeups in a row a session stops after one record before it reads on to look.
_LONE_PROBE = 8


class SocketTlsConnection(Connection):
    """A `Connection` whose TLS session is a C-level SSL object on the socket's descriptor
    (its socket is a `sslcompat.TlsSocket`, which the context's `sni_callback` selects
    through)."""

    __slots__ = ("_ssl", "_shut", "_lone")

    def __init__(self, server: Any, sock: Any, peername: Any) -> None:
        super().__init__(server, sock, peername)
        self._ssl: Any = None
        self._shut = False  # our close_notify is out
        # Wakeups in a row served one record only, without reading on (0: read on until
        # OpenSSL wants more; see _on_readable).
        self._lone = 0

    # -- what was negotiated -------------------------------------------------------------------

    @property
    def is_tls(self) -> bool:
        return True

    @property
    def context(self) -> ssl.SSLContext | None:
        return self._ssl.context if self._ssl is not None else None

    @property
    def tls_version(self) -> str | None:
        return self._ssl.version() if self._ssl is not None else None

    @property
    def cipher(self) -> str | None:
        c = self._ssl.cipher() if self._ssl is not None else None
        return c[0] if c else None

    @property
    def session_reused(self) -> bool:
        return self._ssl is not None and bool(self._ssl.session_reused)

    def _peer_der(self) -> bytes | None:
        return self._ssl.getpeercert(True) if self._ssl is not None else None

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, context: ssl.SSLContext | None) -> None:
        # OpenSSL reads the descriptor itself: it must not block (MSG_DONTWAIT is not its).
        self._sock.setblocking(False)
        self._ssl = sslcompat.wrap_socket_server(context, self._sock)  # type: ignore[arg-type]
        server = self._server
        server.selector.add_fd(self._fd, READ, self)
        self._reading = True
        server.handshake_started(self)
        # The ClientHello is usually in already (a client sends it as it connects): answer
        # it now, as nginx does, rather than after one more trip through epoll_wait.
        self._on_readable()

    def write(self, data: bytes) -> None:
        """Send `data` encrypted. Ignored once the connection is closing."""
        if self._state != _OPEN or not data:
            return
        buf = self._wbuf
        if buf is not None:  # already waiting for the socket: keep the order
            buf += data
            if self._reading and len(buf) > HIGH_WATER:
                self._reading = False
                self._server.selector.modify_fd(self._fd, WRITE)
            return
        try:
            self._ssl.write(data)
        except ssl.SSLWantWriteError:
            self._wbuf = buf = bytearray(data)
            if self._reading and len(buf) > HIGH_WATER:
                self._reading = False
            self._server.selector.modify_fd(self._fd, (READ if self._reading else 0) | WRITE)
        except (ssl.SSLError, OSError) as exc:
            self._abort(exc)

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
            if self._wbuf is None:
                self._close_notify()
            # else _on_writable sends it once the buffer is out
        self._close_socket(None)

    def _close_notify(self) -> None:
        # Also what keeps a finished session resumable by its id: OpenSSL drops a session
        # from the cache when its SSL object is freed without one.
        if self._shut or self._ssl is None:
            return
        self._shut = True
        try:
            self._ssl.shutdown()
        except (ssl.SSLError, OSError):
            pass  # WantRead: the peer's close_notify is not awaited; or the peer is gone

    def _end_tls(self, state: int, sock: Any) -> None:
        if state != _HANDSHAKING:
            self._close_notify()
        # A lingering socket must not keep the session (and an old certificate's context).
        self._ssl = sock.tls = None

    # -- socket events --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        obj = self._ssl
        if self._state == _HANDSHAKING:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:  # the flight did not fit the socket: finish later
                self._server.selector.modify_fd(self._fd, READ | WRITE)
                return
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                self._fail(None)
                return
            except ssl.SSLError as exc:
                self._fail(exc.reason or str(exc))  # OpenSSL already sent its alert
                return
            except OSError as exc:  # reset by the peer
                self._lost(exc)
                return
            refused = chain_too_deep(obj)
            if refused is not None:
                self._fail(refused)
                return
            self._server.handshake_ended(self)
            self._open()
            # Read on now, as nginx does: a client's first request (or its close) often
            # came with its Finished, and is served in this wakeup rather than the next.
        handler = self._handler
        records = 0
        while self._reading and self._state == _OPEN:
            try:
                data = obj.read(_READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                # Read out: one record in this wakeup is a peer waiting for our answer, so
                # the next wakeups stop after their record; more is a peer streaming.
                self._lone = 1 if records == 1 else 0
                return
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):  # EOF without close_notify
                if self._wbuf is None:
                    self._lost(None)
                else:
                    self._close_socket(None)
                return
            except ssl.SSLError as exc:
                self._abort(TlsSessionError(exc.reason or str(exc)))
                return
            except OSError as exc:
                self._lost(exc)
                return
            if not data:  # the peer's close_notify (or FIN): answer it and close
                self._closed_by_peer()
                return
            handler.on_data(self, data)  # type: ignore[union-attr]
            records += 1
            lone = self._lone
            if lone and lone < _LONE_PROBE and not obj.pending():
                # A peer that sends one message and waits: OpenSSL read one whole record and
                # no further (no read-ahead), and reading on would only cost a read() failing
                # with EAGAIN and a raised SSLWantReadError. A record behind it keeps the
                # socket readable, and the (level-triggered) poller calls again; every
                # _LONE_PROBE-th wakeup reads on, to find a peer that started streaming.
                self._lone = lone + 1
                return

    def _closed_by_peer(self) -> None:
        if self._wbuf is not None or self._state != _OPEN:
            self.close()  # our pending bytes go first, then close_notify, FIN and linger
            return
        # The peer sends nothing more after its close_notify: no linger (it waits for an
        # EOF that is here or promised), so no shutdown, no poll change, no extra callback.
        self._state = _CLOSING
        self._close_notify()
        self._lost(None)

    def _fail(self, reason: str | None) -> None:
        self._state = _CLOSED
        self._server.handshake_failed(self, reason or "peer closed during handshake")
        self._close_socket(None)

    def _on_writable(self) -> None:
        selector = self._server.selector
        if self._state == _HANDSHAKING:
            selector.modify_fd(self._fd, READ)
            self._on_readable()  # do_handshake goes on writing its flight
            return
        buf = self._wbuf
        if buf is None or self._sock is None:
            return
        try:
            with memoryview(buf) as view:
                self._ssl.write(view)
        except ssl.SSLWantWriteError:
            if not self._reading and len(buf) <= LOW_WATER and self._state == _OPEN:
                self._reading = True  # the peer caught up: read again
                selector.modify_fd(self._fd, READ | WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._force_close(exc)
            return
        self._wbuf = None
        if self._state >= _CLOSING and not self._reading:
            self._close_notify()
            self._lost(None, True)  # close() was waiting for the buffer to drain
            return
        if self._state == _OPEN:
            self._reading = True
        selector.modify_fd(self._fd, READ if self._reading else 0)
        if self._reading and self._ssl.pending():  # a record read before the pause
            self._on_readable()
