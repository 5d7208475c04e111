"""A WebSocket client with nothing but the standard library, run as another user.

The tests run it with Debian's /usr/bin/python3 under `setpriv` as `nobody` (the pyenv Python
lives under /root, mode 0700, out of nobody's reach: SPEC 9), passed with `-c`, so nobody
needs to read no file of ours. argv: PORT, then frames to send (JSON text). Each frame is
sent and one answer read; each answer is printed as one line. "!" as a frame reads one more
answer without sending.
"""

import base64
import os
import socket
import struct
import sys


def handshake(sock: socket.socket, port: int) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit("closed during the handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"handshake refused: {head!r}")


def send_text(sock: socket.socket, text: str) -> None:
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise SystemExit("connection closed")
        out += chunk
    return out


def recv_text(sock: socket.socket) -> str:
    while True:
        first, second = read_exact(sock, 2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", read_exact(sock, 2))
        elif n == 127:
            (n,) = struct.unpack("!Q", read_exact(sock, 8))
        payload = read_exact(sock, n)
        if first & 0x0F == 0x1:
            return payload.decode()
        if first & 0x0F == 0x8:
            raise SystemExit("connection closed by the server")


def main() -> None:
    port = int(sys.argv[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        handshake(sock, port)
        for frame in sys.argv[2:]:
            if frame != "!":
                send_text(sock, frame)
            print(recv_text(sock), flush=True)


main()
