#!/usr/bin/env python3
"""TLS echo client for the demo: `probe` connects once, `hold` keeps one session echoing.

demo-client.py probe PORT CAFILE        -> prints the serial the server presented
demo-client.py hold PORT CAFILE SECONDS -> one session echoing every 0.2 s; prints a
                                           line per second and exits 1 if an echo fails
demo-client.py until-new PORT CAFILE SERIAL SECONDS -> probes until the served serial is not
                                           SERIAL; prints it and how long that took
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

from cryptography import x509


def connect(port: int, cafile: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def serial(sock: ssl.SSLSocket) -> str:
    return format(
        x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number, "X"
    )


def echo(sock: ssl.SSLSocket, payload: bytes) -> bool:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            return False
        got += chunk
    return got == payload


def main() -> int:
    mode, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "probe":
        with connect(port, cafile) as s:
            ok = echo(s, b"probe")
            print(f"serial={serial(s)} echo={'ok' if ok else 'FAILED'}")
            return 0 if ok else 1
    if mode == "until-new":
        old, started = sys.argv[4], time.monotonic()
        while time.monotonic() - started < float(sys.argv[5]):
            with connect(port, cafile) as s:
                now = serial(s)
            if now != old:
                took = time.monotonic() - started
                print(f"new certificate served: serial={now}, {took:.1f} s after the renewal")
                return 0
            time.sleep(0.05)
        print(f"still serial={old} after {sys.argv[5]} s", flush=True)
        return 1
    seconds = float(sys.argv[4])
    with connect(port, cafile) as s:
        first = serial(s)
        print(f"live session opened, serial={first}", flush=True)
        n, deadline, last_report = 0, time.monotonic() + seconds, time.monotonic()
        while time.monotonic() < deadline:
            n += 1
            if not echo(s, f"message {n}".encode()):
                print(f"live session: echo {n} FAILED", flush=True)
                return 1
            if time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                print(f"live session: {n} echoes ok, still on serial={first}", flush=True)
            time.sleep(0.2)
        print(f"live session closed after {n} echoes, none failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
