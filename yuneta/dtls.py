"""DTLS 1.2 for datagram listeners, sans-I/O: stateless cookies, per-peer sessions, timers.

Nothing here touches a socket (the model is h11/wsproto, like `yuneta.ievent`): a
`DtlsServer` is fed `(address, datagram, now)` and returns events; what it wants sent is
drained with `datagrams_to_send()`, and `next_deadline()` / `handle_timeout(now)` drive its
timers. Each peer address owns one `DtlsSession` over a pyOpenSSL `Connection` with memory
BIOs. Four facts of DTLS over memory BIOs shape the code (SPEC 9):

* A memory BIO keeps no datagram boundaries: OpenSSL writes a whole flight as one byte string,
  so outgoing bytes are cut back into records (13-byte header, length at 11..13) and packed
  into datagrams no larger than the MTU; the MTU is set on every session (with
  OP_NO_QUERY_MTU, since a memory BIO cannot answer the query) so no record exceeds it.
* Before any per-peer state, a ClientHello must echo an HMAC cookie over its source address
  under a rotating secret (`CookieJar`). One listening `Connection` per context answers every
  cookie-less hello with a HelloVerifyRequest (`DTLSv1_listen`), so a spoofed flood costs one
  datagram each and no memory. The cookie callbacks only see the `Connection`, so the address
  rides in its app data, set just before each `DTLSv1_listen`.
* DTLS retransmits handshake flights (OpenSSL doubles its timer, 1 s first) but never
  application data: the session reports the deadline, the owner calls back.
* A peer that vanishes without close_notify leaves its session behind: open sessions are
  reaped after `idle_timeout` seconds without a datagram, handshakes after
  `handshake_timeout`.

Peer input never raises out of this module: bad records are dropped (as RFC 6347 asks) or end
that one session with a `SessionClosed` event. Reloads: the server asks its context provider
for the current context at every new session, so live sessions keep the context they were
born with and new ones get the new one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

__all__ = [
    "DEFAULT_MTU",
    "MIN_MTU",
    "CookieJar",
    "DtlsServer",
    "DtlsSession",
    "HandshakeDone",
    "DataReceived",
    "SessionClosed",
    "enable_cookies",
    "is_client_hello",
    "pack_records",
]

#: UDP payload bytes per datagram: fits IPv6's 1280-byte minimum link MTU with room to spare.
DEFAULT_MTU = 1200
#: OpenSSL refuses smaller MTUs (its DTLS minimum is 256 less the UDP/IP overhead).
MIN_MTU = 256
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_HANDSHAKE_TIMEOUT = 15.0
DEFAULT_COOKIE_LIFETIME = 60.0

_RECORD_HEADER = 13  # type(1) version(2) epoch(2) sequence(6) length(2)
_HANDSHAKE, _CLIENT_HELLO = 22, 1
_MAX_RECORD_PLAINTEXT = 16384
_COOKIE_SIZE = 20  # HMAC-SHA256 truncated: 160 bits, far beyond guessing in a cookie's lifetime

_HANDSHAKING, _OPEN, _CLOSED = "handshaking", "open", "closed"

Address = Hashable  # what the socket layer gives: (host, port) or (host, port, flow, scope)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The handshake completed; `cert_serial` is the serial the server presented."""

    version: str
    cipher: str
    cert_serial: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """The plaintext of one DTLS record (a datagram's message)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended; `handshake_failed` when it never opened (timeout, alert...)."""

    reason: str
    handshake_failed: bool = False


Event = HandshakeDone | DataReceived | SessionClosed


# ---------------------------------------------------------------------------
# Stateless cookies
# ---------------------------------------------------------------------------


class CookieJar:
    """HMAC-SHA256 cookies over a peer address, under a secret that rotates every `lifetime` s.

    A cookie stays valid for one to two lifetimes (the previous secret is still accepted), which
    is plenty for a client to echo its HelloVerifyRequest and far too short to collect cookies
    for addresses one does not own. `clock` is injectable for tests.
    """

    def __init__(
        self,
        lifetime: float = DEFAULT_COOKIE_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._current = os.urandom(32)
        self._previous = self._current
        self._rotated_at = clock()

    def _secrets(self) -> tuple[bytes, bytes]:
        now = self._clock()
        if now - self._rotated_at >= self.lifetime:
            # Two lifetimes without a hello: the previous secret must not come back.
            stale = now - self._rotated_at >= 2 * self.lifetime
            self._previous = os.urandom(32) if stale else self._current
            self._current = os.urandom(32)
            self._rotated_at = now
        return self._current, self._previous

    @staticmethod
    def _mac(secret: bytes, addr: Any) -> bytes:
        host, port = addr[0], addr[1]
        return hmac.new(secret, f"{host}|{port}".encode(), hashlib.sha256).digest()[:_COOKIE_SIZE]

    def cookie(self, addr: Any) -> bytes:
        """The cookie a HelloVerifyRequest to `addr` carries now."""
        return self._mac(self._secrets()[0], addr)

    def verify(self, addr: Any, cookie: bytes) -> bool:
        """True if `cookie` was issued to `addr` under the current or the previous secret."""
        current, previous = self._secrets()
        return hmac.compare_digest(cookie, self._mac(current, addr)) or hmac.compare_digest(
            cookie, self._mac(previous, addr)
        )


def _generate_cookie(conn: SSL.Connection) -> bytes:
    jar, addr = conn.get_app_data()
    return jar.cookie(addr)


def _verify_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
    jar, addr = conn.get_app_data()
    return jar.verify(addr, cookie)


def enable_cookies(ctx: SSL.Context) -> None:
    """Install the cookie callbacks on a server context being built (before its first use).

    They read `(CookieJar, address)` from the listening connection's app data, which
    `DtlsServer` sets before each `DTLSv1_listen`.
    """
    ctx.set_cookie_generate_callback(_generate_cookie)
    ctx.set_cookie_verify_callback(_verify_cookie)


# ---------------------------------------------------------------------------
# Records and datagrams
# ---------------------------------------------------------------------------


def is_client_hello(datagram: bytes) -> bool:
    """An epoch-0 handshake record whose message is a ClientHello (cheap header check)."""
    return (
        len(datagram) > _RECORD_HEADER
        and datagram[0] == _HANDSHAKE
        and datagram[3:5] == b"\0\0"
        and datagram[_RECORD_HEADER] == _CLIENT_HELLO
    )


def pack_records(data: bytes, mtu: int) -> list[bytes]:
    """Cut OpenSSL's output back into DTLS records and pack them into datagrams <= `mtu`.

    A record never spans datagrams; a record larger than `mtu` (none should be, the MTU is set
    on the session) travels alone rather than being dropped.
    """
    if len(data) <= mtu:
        return [data] if data else []
    datagrams: list[bytes] = []
    current = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _RECORD_HEADER:
            stop = end  # not a record: keep the bytes, OpenSSL wrote them for a reason
        else:
            stop = min(end, pos + _RECORD_HEADER + int.from_bytes(data[pos + 11 : pos + 13]))
        if current and len(current) + (stop - pos) > mtu:
            datagrams.append(bytes(current))
            current.clear()
        current += data[pos:stop]
        pos = stop
    if current:
        datagrams.append(bytes(current))
    return datagrams


def _drain(conn: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(65536))
        except SSL.WantReadError:
            break
    return b"".join(chunks)


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        # pyOpenSSL: [(library, function, reason), ...]; the reason is what an operator reads.
        reasons = [entry[-1] for entry in exc.args[0] if entry and entry[-1]]
        if reasons:
            return ", ".join(reasons)
    return str(exc) or exc.__class__.__name__


# ---------------------------------------------------------------------------
# One peer
# ---------------------------------------------------------------------------


class DtlsSession:
    """One DTLS association over a pyOpenSSL `Connection` with memory BIOs (either role).

    Feed it datagrams (`receive_datagram`), give it plaintext (`send`), send what
    `datagrams_to_send()` returns, and call `handle_timeout(now)` at `deadline()`. `now` is
    `time.monotonic()` seconds; OpenSSL's retransmission timer runs on its own clock, so the
    retransmit deadline is re-read from it after every step. Never raises on peer input.
    """

    __slots__ = (
        "_conn",
        "_out",
        "_retransmit_at",
        "_handshake_deadline",
        "mtu",
        "peer",
        "state",
        "idle_timeout",
        "last_activity",
        "cert_serial",
        "close_reason",
        "user_data",
    )

    def __init__(
        self,
        conn: SSL.Connection,
        peer: Address,
        now: float,
        *,
        mtu: int = DEFAULT_MTU,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if mtu < MIN_MTU:
            raise ValueError(f"mtu {mtu}: DTLS needs at least {MIN_MTU} bytes")
        self._conn = conn
        self._out: list[bytes] = []
        self._retransmit_at: float | None = None
        self._handshake_deadline = now + handshake_timeout
        self.mtu = mtu
        self.peer = peer
        self.state = _HANDSHAKING
        self.idle_timeout = idle_timeout
        self.last_activity = now
        self.cert_serial = ""
        self.close_reason = ""
        self.user_data: Any = None
        conn.set_options(SSL.OP_NO_QUERY_MTU)
        conn.set_ciphertext_mtu(mtu)

    @classmethod
    def client(cls, ctx: SSL.Context, peer: Address, now: float, **kw: Any) -> DtlsSession:
        """A client session whose first flight (the ClientHello) is ready to send."""
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        session = cls(conn, peer, now, **kw)
        session._step(now, [])
        return session

    # -- state ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state == _OPEN

    @property
    def is_closed(self) -> bool:
        return self.state == _CLOSED

    @property
    def connection(self) -> SSL.Connection:
        """The pyOpenSSL connection (for inspection: certificates, cipher)."""
        return self._conn

    def deadline(self) -> float | None:
        """When `handle_timeout` must run next (monotonic seconds), None when closed."""
        if self.state == _CLOSED:
            return None
        if self.state == _HANDSHAKING:
            if self._retransmit_at is None:
                return self._handshake_deadline
            return min(self._retransmit_at, self._handshake_deadline)
        idle = self.last_activity + self.idle_timeout
        return idle if self._retransmit_at is None else min(idle, self._retransmit_at)

    # -- input ------------------------------------------------------------------------

    def receive_datagram(self, datagram: bytes, now: float) -> list[Event]:
        """Process one received datagram; returns what happened."""
        events: list[Event] = []
        if self.state == _CLOSED or not datagram:
            return events
        self.last_activity = now
        try:
            self._conn.bio_write(datagram)
            self._step(now, events)
        except Exception as exc:  # defensive: peer input must never raise out of here
            if self.state != _CLOSED:
                self._fail(f"internal error: {exc!r}", events)
        return events

    def handle_timeout(self, now: float) -> list[Event]:
        """Retransmit a lost flight, or end a handshake or an idle session past its time."""
        events: list[Event] = []
        if self.state == _CLOSED:
            return events
        if self.state == _HANDSHAKING and now >= self._handshake_deadline:
            self._fail("handshake timeout", events)
            return events
        if self.state == _OPEN and now >= self.last_activity + self.idle_timeout:
            self._end("idle timeout", events, notify=False)
            return events
        if self._retransmit_at is not None and now >= self._retransmit_at:
            try:
                # Resends the last flight and doubles OpenSSL's timer; False if its own clock
                # says it is not due yet (then the re-read below gives the true deadline).
                self._conn.DTLSv1_handle_timeout()
            except SSL.Error as exc:  # too many retransmissions
                self._fail(_error_reason(exc), events)
                return events
            self._collect(now)
        return events

    # -- output -----------------------------------------------------------------------

    def send(self, data: bytes) -> list[Event]:
        """Encrypt `data` as records that each fit one datagram. Ignored unless open.

        DTLS keeps record boundaries, not message boundaries: a message longer than the
        payload one datagram carries arrives as several records. Returns `[SessionClosed]`
        if OpenSSL refuses to write (the session is then over), else `[]`.
        """
        events: list[Event] = []
        if self.state != _OPEN or not data:
            return events
        conn = self._conn
        size = conn.get_cleartext_mtu() or _MAX_RECORD_PLAINTEXT
        view = memoryview(data)
        try:
            for start in range(0, len(view), size):
                conn.send(view[start : start + size])
        except SSL.Error as exc:
            self._end(_error_reason(exc), events, notify=False)
        self._pack()
        return events

    def close(self) -> None:
        """Send close_notify (if open) and end the session."""
        if self.state == _OPEN:
            self._end("closed", [], notify=True)
        elif self.state == _HANDSHAKING:
            self._finish("closed")

    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams produced since the last call (each <= mtu when records allow)."""
        out, self._out = self._out, []
        return out

    # -- internals --------------------------------------------------------------------

    def _step(self, now: float, events: list[Event]) -> None:
        conn = self._conn
        if self.state == _HANDSHAKING:
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                self._collect(now)
                return
            except SSL.Error as exc:
                self._collect(now)  # the alert that says why, if OpenSSL wrote one
                self._fail(_error_reason(exc), events)
                return
            self.state = _OPEN
            ctx = conn.get_context()
            self.cert_serial = getattr(ctx, "yuneta_cert_serial", "") or _peer_serial(conn)
            events.append(
                HandshakeDone(
                    conn.get_protocol_version_name(), conn.get_cipher_name() or "", self.cert_serial
                )
            )
        while self.state == _OPEN:
            try:
                data = conn.recv(_MAX_RECORD_PLAINTEXT)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._end("closed by peer", events, notify=True)
                return
            except SSL.Error as exc:
                self._collect(now)
                self._end(_error_reason(exc), events, notify=False)
                return
            if data:
                events.append(DataReceived(data))
        self._collect(now)

    def _collect(self, now: float) -> None:
        """Take OpenSSL's output as datagrams and re-read its retransmission timer."""
        self._pack()
        try:
            remaining = self._conn.DTLSv1_get_timeout()
        except SSL.Error:
            remaining = None
        self._retransmit_at = None if remaining is None else now + remaining

    def _pack(self) -> None:
        data = _drain(self._conn)
        if data:
            self._out.extend(pack_records(data, self.mtu))

    def _fail(self, reason: str, events: list[Event]) -> None:
        events.append(SessionClosed(reason, handshake_failed=self.state == _HANDSHAKING))
        self._finish(reason)

    def _end(self, reason: str, events: list[Event], *, notify: bool) -> None:
        if notify:
            try:
                self._conn.shutdown()  # close_notify; DTLS does not wait for the peer's
            except SSL.Error:
                pass
            self._pack()
        events.append(SessionClosed(reason))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.state = _CLOSED
        self.close_reason = reason
        self._retransmit_at = None


def _peer_serial(conn: SSL.Connection) -> str:
    cert = conn.get_peer_certificate(as_cryptography=True)
    return format(cert.serial_number, "X") if cert is not None else ""


# ---------------------------------------------------------------------------
# The listener's side: cookies first, then one session per address
# ---------------------------------------------------------------------------


class DtlsServer:
    """Every DTLS peer of one listening socket, keyed by address; sans-I/O.

    `context` is a zero-arg provider of the current server `SSL.Context` (built with
    `enable_cookies`), read when a new session is admitted. Counters (plain ints):
    `tsessions` (handshakes completed), `handshake_failures`, `cookie_rejections` (ClientHellos
    answered with a HelloVerifyRequest because they carried no valid cookie: no state kept),
    `dropped` (datagrams from unknown peers that are no ClientHello, or malformed ones).
    """

    def __init__(
        self,
        context: Callable[[], SSL.Context],
        *,
        mtu: int = DEFAULT_MTU,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        cookies: CookieJar | None = None,
    ) -> None:
        if mtu < MIN_MTU:
            raise ValueError(f"mtu {mtu}: DTLS needs at least {MIN_MTU} bytes")
        self._context = context
        self.mtu = mtu
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.cookies = cookies or CookieJar()
        self.sessions: dict[Address, DtlsSession] = {}
        self._handshaking: dict[Address, DtlsSession] = {}
        self._gate: SSL.Connection | None = None  # the one listening connection
        self._out: list[tuple[bytes, Address]] = []
        self._next_sweep = float("inf")
        self.tsessions = 0
        self.handshake_failures = 0
        self.cookie_rejections = 0
        self.dropped = 0

    # -- input ------------------------------------------------------------------------

    def receive(
        self, addr: Address, datagram: bytes, now: float
    ) -> list[tuple[DtlsSession, Event]]:
        """Process one datagram from `addr`; returns `(session, event)` pairs."""
        session = self.sessions.get(addr)
        hello = is_client_hello(datagram)
        # An open session seeing an epoch-0 ClientHello: the peer restarted. It must pass the
        # cookie like anyone (the old session is untouched unless it does). Handshaking
        # sessions get their own retransmitted hellos.
        if session is not None and not (hello and session.is_open):
            return self._settle(session, session.receive_datagram(datagram, now), now)
        if not hello:
            self.dropped += 1
            return []
        conn = self._admit(addr, datagram)
        if conn is None:
            return []
        results: list[tuple[DtlsSession, Event]] = []
        if session is not None:
            session.close()
            self._forget(session)
            results.append((session, SessionClosed("peer started a new session")))
        new = DtlsSession(
            conn,
            addr,
            now,
            mtu=self.mtu,
            idle_timeout=self.idle_timeout,
            handshake_timeout=self.handshake_timeout,
        )
        self.sessions[addr] = self._handshaking[addr] = new
        events: list[Event] = []
        new._step(now, events)  # the buffered ClientHello: the server's first flight
        results.extend(self._settle(new, events, now))
        return results

    def _admit(self, addr: Address, datagram: bytes) -> SSL.Connection | None:
        """DTLSv1_listen on the shared gate: the connection if the cookie is good, else None."""
        gate = self._gate
        ctx = self._context()
        if gate is None or gate.get_context() is not ctx:
            gate = self._gate = SSL.Connection(ctx, None)
            gate.set_options(SSL.OP_NO_QUERY_MTU)
            gate.set_ciphertext_mtu(self.mtu)
        gate.set_app_data((self.cookies, addr))
        try:
            gate.bio_write(datagram)
            gate.DTLSv1_listen()
        except SSL.WantReadError:
            reply = _drain(gate)
            if reply:
                self.cookie_rejections += 1
                self._out.append((reply, addr))
            else:
                self.dropped += 1
            return None
        except Exception:  # SSL.Error, or a cookie callback's error re-raised by pyOpenSSL
            self.dropped += 1
            self._gate = None  # state unknown after an error: the next hello gets a fresh one
            return None
        # It carries this peer's handshake now. Its app data stays: OpenSSL verifies the
        # cookie once more when the handshake resumes from the buffered ClientHello.
        self._gate = None
        return gate

    # -- output and control -------------------------------------------------------------

    def send(self, session: DtlsSession, data: bytes) -> list[tuple[DtlsSession, Event]]:
        """Encrypt `data` to `session`'s peer (ignored unless the session is open); the
        `SessionClosed` pair if OpenSSL refused to write."""
        return self._settle(session, session.send(data), 0.0)  # no HandshakeDone: `now` unused

    def close(self, session: DtlsSession) -> None:
        """close_notify to the peer and forget the session (no event: the caller decided)."""
        session.close()
        self._take(session)
        self._forget(session)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """`(datagram, address)` pairs produced since the last call."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When `handle_timeout` must run next (monotonic seconds), or None."""
        deadline = self._next_sweep if self._next_sweep != float("inf") else None
        for session in self._handshaking.values():
            d = session.deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        return deadline

    def handle_timeout(self, now: float) -> list[tuple[DtlsSession, Event]]:
        """Retransmissions and handshake timeouts now; the idle sweep when it is due."""
        results: list[tuple[DtlsSession, Event]] = []
        for session in list(self._handshaking.values()):
            d = session.deadline()
            if d is not None and d <= now:
                results.extend(self._settle(session, session.handle_timeout(now), now))
        if now >= self._next_sweep:
            self._next_sweep = float("inf")
            for session in list(self.sessions.values()):
                if session.is_open:
                    results.extend(self._settle(session, session.handle_timeout(now), now))
                    self._plan_sweep(session, now)
        return results

    def stats(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "handshaking": len(self._handshaking),
            "tsessions": self.tsessions,
            "handshake_failures": self.handshake_failures,
            "cookie_rejections": self.cookie_rejections,
            "dropped": self.dropped,
        }

    # -- internals --------------------------------------------------------------------

    def _settle(
        self, session: DtlsSession, events: list[Event], now: float
    ) -> list[tuple[DtlsSession, Event]]:
        self._take(session)
        for event in events:
            if isinstance(event, HandshakeDone):
                self.tsessions += 1
                self._handshaking.pop(session.peer, None)
                self._plan_sweep(session, now)
            elif isinstance(event, SessionClosed):
                if event.handshake_failed:
                    self.handshake_failures += 1
                self._forget(session)
        return [(session, event) for event in events]

    def _take(self, session: DtlsSession) -> None:
        peer = session.peer
        self._out.extend((datagram, peer) for datagram in session.datagrams_to_send())

    def _forget(self, session: DtlsSession) -> None:
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]
        if self._handshaking.get(session.peer) is session:
            del self._handshaking[session.peer]

    def _plan_sweep(self, session: DtlsSession, now: float) -> None:
        # One pass over the open sessions reaps every idle one; passes are spaced at least a
        # quarter of the idle timeout apart (at most 1 s), so a reap may come that much late.
        if session.state != _OPEN:
            return
        grain = min(1.0, self.idle_timeout / 4)
        due = max(session.last_activity + self.idle_timeout, now + grain)
        if due < self._next_sweep:
            self._next_sweep = due
