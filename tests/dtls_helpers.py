"""DTLS test helpers: pyOpenSSL contexts from a TestCA's files, blocking clients, RSS."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

from certs import Issued, TestCA
from OpenSSL import SSL, crypto

from yuneta.dtls import DEFAULT_MTU, DataReceived, DtlsSession, enable_cookies


def server_context(issued: Issued) -> SSL.Context:
    """A DTLS server context serving `issued`, cookies on (what the listener builds)."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(str(issued.cert_path))
    ctx.use_privatekey_file(str(issued.key_path))
    enable_cookies(ctx)
    ctx.yuneta_cert_serial = issued.serial
    return ctx


def client_context(ca: TestCA | Path, cert: Issued | None = None) -> SSL.Context:
    """A DTLS client context that verifies the server against `ca` (a TestCA or a CA file)
    and presents `cert` when given."""
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    if cert is not None:
        ctx.use_certificate_chain_file(str(cert.cert_path))
        ctx.use_privatekey_file(str(cert.key_path))
    if isinstance(ca, TestCA):
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca._ca_cert))
    else:
        ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib() -> int:
    """Resident set size of this process, KiB."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class DtlsClient:
    """A blocking DTLS client on a real UDP socket, driven by `yuneta.dtls.DtlsSession`."""

    def __init__(
        self,
        port: int,
        ca: TestCA | Path,
        *,
        mtu: int = DEFAULT_MTU,
        host: str = "127.0.0.1",
        cert: Issued | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect((host, port))
        self.session = DtlsSession.client(
            client_context(ca, cert), (host, port), time.monotonic(), mtu=mtu
        )
        self.received: list[bytes] = []

    def _flush(self) -> None:
        for datagram in self.session.datagrams_to_send():
            self.sock.send(datagram)

    def _pump(self, until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._flush()
        while not until():
            now = time.monotonic()
            if now >= deadline or self.session.is_closed:
                raise AssertionError(
                    f"DTLS client: condition not met ({self.session.close_reason or 'timeout'})"
                )
            wake = min(deadline, self.session.deadline() or deadline)
            ready, _, _ = select.select([self.sock], [], [], max(0.0, wake - now))
            if ready:
                try:
                    data = self.sock.recv(65535)
                except ConnectionRefusedError:
                    continue
                for event in self.session.receive_datagram(data, time.monotonic()):
                    if isinstance(event, DataReceived):
                        self.received.append(event.data)
            else:
                self.session.handle_timeout(time.monotonic())
            self._flush()

    def handshake(self, timeout: float = 10.0) -> DtlsClient:
        self._pump(lambda: self.session.is_open, timeout)
        return self

    @property
    def serial(self) -> str:
        return self.session.cert_serial

    def echo(self, data: bytes = b"ping", timeout: float = 10.0) -> bytes:
        """Send one message and return what comes back (records joined until as long)."""
        self.received.clear()
        self.session.send(data)
        self._pump(lambda: len(b"".join(self.received)) >= len(data), timeout)
        return b"".join(self.received)

    def close(self, notify: bool = True) -> None:
        if notify:
            self.session.close()
            self._flush()
        self.sock.close()

    def __enter__(self) -> DtlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
