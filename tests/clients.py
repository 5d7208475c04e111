"""Blocking TLS/TCP clients for the tests: connect, echo, wait."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS client socket on 127.0.0.1:`port` (handshake done), 10 s timeout."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock)


def echo(sock: socket.socket, data: bytes = b"ping") -> bytes:
    """Send `data` and read back as many bytes (fewer if the peer closes)."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until truthy; fail the test on timeout (a hang catcher, not a timer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class BioTlsClient:
    """A blocking TLS client over memory BIOs, so the test controls the TCP socket itself:
    it can half-close (SHUT_WR) with or without a close_notify, or reset.

    One thread may send while another receives: the SSL object is used under a lock (CPython
    releases the GIL inside it), and after the handshake only the sender writes the socket,
    so records leave in the order they were made."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.lock = threading.Lock()
        self.eof = False  # the server's close_notify was read
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._pump()
        self._flush()

    def _flush(self) -> None:
        with self.lock:
            data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pump(self) -> bool:
        data = self.sock.recv(65536)
        with self.lock:
            if not data:
                self.incoming.write_eof()
                return False
            self.incoming.write(data)
        return True

    def sendall(self, *chunks: bytes) -> None:
        """Send each chunk as a TLS record, all of them in one send."""
        with self.lock:
            for data in chunks:
                self.obj.write(data)
        self._flush()

    def receive(self, size: int) -> bytes:
        """Plaintext until `size` bytes came (fewer if the server closes first)."""
        got = b""
        while len(got) < size:
            chunk = self.recv()
            if not chunk:
                break
            got += chunk
        return got

    def recv(self) -> bytes:
        """Next plaintext; b"" after the server's close_notify (SSLEOFError without one)."""
        while True:
            try:
                with self.lock:
                    return self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._pump()

    def close_notify(self) -> None:
        with self.lock:
            try:
                self.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
        self._flush()

    def close(self) -> None:
        self.sock.close()
