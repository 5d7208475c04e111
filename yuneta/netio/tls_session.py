"""A sans-I/O TLS session: bytes from the peer in; plaintext, events and bytes to send out.

`TlsSession` wraps one OpenSSL session over a pair of `ssl.MemoryBIO`s and owns no socket,
timer or thread, in the manner of h11 and wsproto: `receive(data)` takes whatever the
transport read (any split, any size) and returns what it meant, in order: plaintext chunks
(`bytes`), `HANDSHAKE_DONE`, `CLOSED` (the peer's close_notify) or a `TlsFailed` carrying
OpenSSL's reason; `send(plaintext)` encrypts; `data_to_send()` hands over the bytes for the
peer (handshake flights, records, alerts). It never raises on peer input: a bad record is a
`TlsFailed` event and the session is over (the alert, if any, is in `data_to_send()`). The
TCP connection (`yuneta.netio.connection`) and tests drive it alike; the DTLS session
mirrors it. After a server handshake, a verified client chain with more intermediate CAs
than the context's `ssl_verify_depth` (set by `yuneta.ytls`) fails the session, because
Python's `ssl` cannot set OpenSSL's own limit.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from yuneta import sslcompat

# A TLS record carries at most 16 KiB of plaintext; reading more per call only grows the
# transient bytes object SSLObject.read allocates before it shrinks it.
_READ_SIZE = 16384

HANDSHAKING, OPEN, CLOSED = range(3)


class TlsEvent:
    """A named event without data (`HANDSHAKE_DONE`, `CLOSED`); compare by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<TlsEvent {self.name}>"


HANDSHAKE_DONE = TlsEvent("handshake-done")
CLOSED_BY_PEER = TlsEvent("closed")


@dataclass(frozen=True, slots=True)
class TlsFailed:
    """The session failed: `reason` (OpenSSL's, or ours), `in_handshake` if before it ended."""

    reason: str
    in_handshake: bool


Event = bytes | TlsEvent | TlsFailed


def chain_too_deep(sslobj: Any) -> str | None:
    """Why a finished handshake is refused by its context's `yuneta_verify_depth`, or None.

    OpenSSL's meaning: the most intermediate CAs between the peer's leaf and the trust anchor.
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


class TlsSession:
    """One TLS session over memory; see the module's first paragraph for the contract.

    `context` is read once, here: a later certificate reload does not touch this session.
    A client session (`server_side=False`) sends its ClientHello after `start()`.
    """

    __slots__ = ("_obj", "_in", "_out", "_shut", "state")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if server_side:
            self._obj: Any = sslcompat.wrap_server(context, self._in, self._out)
        else:
            self._obj = context.wrap_bio(
                self._in, self._out, server_side=False, server_hostname=server_hostname
            )
        self._shut = False  # our close_notify is out
        self.state = HANDSHAKING

    # -- driving --------------------------------------------------------------------------------

    def start(self) -> None:
        """A client's first step: puts its ClientHello in `data_to_send()`."""
        self.receive(b"")

    def receive(self, data: bytes | memoryview) -> list[Event]:
        """Feed bytes read from the peer; returns the events they complete, in order."""
        if self.state == CLOSED:
            return []
        if data:
            self._in.write(data)
        obj = self._obj
        events: list[Event] = []
        if self.state == HANDSHAKING:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                return events
            except ssl.SSLError as exc:
                return self._fail(events, exc.reason or str(exc), True)
            if obj.server_side:
                refused = chain_too_deep(obj)
                if refused is not None:
                    return self._fail(events, refused, True)
            self.state = OPEN
            events.append(HANDSHAKE_DONE)
            # Application data may have come with the peer's Finished; else nothing to read.
            if not self._in.pending and not obj.pending():
                return events
        incoming = self._in
        while True:
            try:
                chunk = obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                return self._fail(events, exc.reason or str(exc), False)
            if not chunk:  # read returns b"" on the peer's close_notify
                self.state = CLOSED
                events.append(CLOSED_BY_PEER)
                break
            events.append(chunk)
            # Nothing buffered on either side means another read would only raise WantRead.
            if not incoming.pending and not obj.pending():
                break
        return events

    def send(self, data: bytes | memoryview) -> TlsFailed | None:
        """Encrypt `data` into `data_to_send()`; a failure ends the session (not raised)."""
        if self.state != OPEN:
            return TlsFailed("session is not open", self.state == HANDSHAKING)
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            self.state = CLOSED
            return TlsFailed(exc.reason or str(exc), False)
        return None

    def data_to_send(self) -> bytes:
        """Bytes for the peer, in order (empty when there are none); each given out once."""
        out = self._out
        return out.read() if out.pending else b""

    def close(self) -> None:
        """End the session: a close_notify goes to `data_to_send()` (we do not wait for the
        peer's). Marking it sent also keeps a finished session resumable by its id."""
        if self.state != HANDSHAKING and not self._shut:
            self._shut = True
            obj = self._obj
            try:  # the C object's shutdown() is ssl.SSLObject's unwrap()
                obj.shutdown() if hasattr(obj, "shutdown") else obj.unwrap()
            except ssl.SSLError:
                pass  # WantRead: the peer's close_notify is not awaited
        self.state = CLOSED

    def _fail(self, events: list[Event], reason: str, in_handshake: bool) -> list[Event]:
        self.state = CLOSED
        events.append(TlsFailed(reason, in_handshake))
        return events

    # -- what was negotiated -----------------------------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """The context serving this session (after SNI selection, the selected one)."""
        return self._obj.context

    @property
    def pending_out(self) -> int:
        return self._out.pending

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> str | None:
        c = self._obj.cipher()
        return c[0] if c else None

    def session_reused(self) -> bool:
        return bool(self._obj.session_reused)

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate in DER (None without one)."""
        return self._obj.getpeercert(True) or None
