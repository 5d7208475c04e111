"""Benchmark client subprocess: many non-blocking TLS client sockets on one selector.

Modes: `idle` (open N connections, echo 1 byte on each, print READY, hold until stdin closes),
`handshake` (M full handshakes, `--concurrency` at a time, then close; print DONE),
`echo` (open N connections, print READY, wait for a stdin line, then `--rounds` round trips
of `--size` bytes on every connection; print DONE).
"""

from __future__ import annotations

import argparse
import selectors
import socket
import ssl
import sys

R, W = selectors.EVENT_READ, selectors.EVENT_WRITE


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we measure the server; spare the client's CPU
    return ctx


def handshake_many(port: int, count: int, concurrency: int, keep: bool) -> list[ssl.SSLSocket]:
    """Complete `count` handshakes, `concurrency` in flight; return them if `keep`."""
    ctx = client_context()
    sel = selectors.DefaultSelector()
    done: list[ssl.SSLSocket] = []
    started = finished = 0

    def start() -> None:
        nonlocal started
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        ss = ctx.wrap_socket(sock, do_handshake_on_connect=False)
        started += 1
        step(ss, new=True)

    def step(ss: ssl.SSLSocket, new: bool = False) -> None:
        nonlocal finished
        try:
            ss.do_handshake()
        except ssl.SSLWantReadError:
            (sel.register if new else sel.modify)(ss, R)
            return
        except ssl.SSLWantWriteError:
            (sel.register if new else sel.modify)(ss, W)
            return
        if not new:
            sel.unregister(ss)
        finished += 1
        if keep:
            done.append(ss)
        else:
            ss.close()

    while finished < count:
        while started < count and started - finished < concurrency:
            start()
        for key, _ in sel.select(10):
            step(key.fileobj)  # type: ignore[arg-type]
    sel.close()
    return done


def echo_rounds(conns: list[ssl.SSLSocket], rounds: int, size: int) -> None:
    """Every connection does `rounds` sequential round trips of `size` bytes."""
    sel = selectors.DefaultSelector()
    payload = b"y" * size
    left = {}
    got = {}
    for ss in conns:
        left[ss] = rounds
        got[ss] = 0
        ss.send(payload)
        sel.register(ss, R)
    active = len(conns)
    while active:
        for key, _ in sel.select(10):
            ss = key.fileobj
            while True:
                try:
                    data = ss.recv(65536)  # type: ignore[union-attr]
                except ssl.SSLWantReadError:
                    break
                if not data:
                    raise SystemExit("server closed a connection")
                got[ss] += len(data)
                if not ss.pending():  # type: ignore[union-attr]
                    break
            if got[ss] >= size:
                got[ss] -= size
                left[ss] -= 1
                if left[ss]:
                    ss.send(payload)  # type: ignore[union-attr]
                else:
                    sel.unregister(ss)
                    active -= 1
    sel.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", required=True, choices=["idle", "handshake", "echo"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    if args.mode == "handshake":
        handshake_many(args.port, args.n, args.concurrency, keep=False)
        print("DONE", flush=True)
        return
    conns = handshake_many(args.port, args.n, args.concurrency, keep=True)
    echo_rounds(conns, 1, 1 if args.mode == "idle" else args.size)
    print("READY", flush=True)
    sys.stdin.readline()
    if args.mode == "echo":
        echo_rounds(conns, args.rounds, args.size)
        print("DONE", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
