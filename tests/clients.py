"""Blocking TLS/TCP clients for the tests: connect, echo, wait."""

from __future__ import annotations

import socket
import ssl
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
