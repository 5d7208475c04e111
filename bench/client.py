"""Benchmark client subprocess: many non-blocking TLS client sockets on one selector.

Modes: `idle` (open N connections, one request on each, print READY, hold until stdin
closes; `--request http` sends an HTTP/1.1 GET, for nginx's http module, else one byte),
`handshake` (M full handshakes, `--concurrency` at a time, then close; print DONE),
`echo` (open N connections, print READY, wait for a stdin line, then `--rounds` round trips
of `--size` bytes on every connection; print DONE), `resume` (N connections keep their TLS
1.3 session, print READY, wait for a stdin line (the server reloads meanwhile), reconnect each
offering its session, print how many resumed).
"""

from __future__ import annotations

import argparse
import functools
import selectors
import socket
import ssl
import sys

R, W = selectors.EVENT_READ, selectors.EVENT_WRITE


@functools.cache  # one per process: a session resumes only from the context it came from
def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we measure the server; spare the client's CPU
    return ctx


def handshake_many(
    port: int,
    count: int,
    concurrency: int,
    keep: bool,
    sessions: list[ssl.SSLSession] | None = None,
) -> list[ssl.SSLSocket]:
    """Complete `count` handshakes, `concurrency` in flight; return them if `keep`.
    With `sessions`, the i-th connection offers the i-th session."""
    ctx = client_context()
    sel = selectors.DefaultSelector()
    done: list[ssl.SSLSocket] = []
    started = finished = 0

    def start() -> None:
        nonlocal started
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        session = sessions[started] if sessions else None
        ss = ctx.wrap_socket(sock, do_handshake_on_connect=False, session=session)
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


def first_replies(conns: list[ssl.SSLSocket], payload: bytes) -> None:
    """Send `payload` on every connection and wait for the first bytes of each answer."""
    sel = selectors.DefaultSelector()
    for ss in conns:
        ss.send(payload)
        sel.register(ss, R)
    waiting = len(conns)
    while waiting:
        for key, _ in sel.select(10):
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except ssl.SSLWantReadError:
                continue
            if not data:
                raise SystemExit("server closed a connection")
            sel.unregister(key.fileobj)
            waiting -= 1
    sel.close()


HTTP_GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", required=True, choices=["idle", "handshake", "echo", "resume"])
    ap.add_argument("--request", choices=["byte", "http"], default="byte")
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
    if args.mode == "idle":
        first_replies(conns, HTTP_GET if args.request == "http" else b"y")
    elif args.mode == "resume":
        first_replies(conns, b"y")  # TLS 1.3 tickets come after the handshake
        sessions = [ss.session for ss in conns]
        for ss in conns:
            ss.close()
        print("READY", flush=True)
        sys.stdin.readline()
        again = handshake_many(args.port, args.n, args.concurrency, True, sessions)
        print(sum(ss.session_reused for ss in again), flush=True)
        for ss in again:
            ss.close()
        return
    else:
        echo_rounds(conns, 1, args.size)
    print("READY", flush=True)
    sys.stdin.readline()
    if args.mode == "echo":
        echo_rounds(conns, args.rounds, args.size)
        print("DONE", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
