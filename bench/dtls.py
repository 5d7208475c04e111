"""DTLS listener benchmark (`python -m bench.dtls`), beside the TCP/TLS listener in the same run.

Figures, for `udpio.UdpServer` + `Ydtls` (DTLS 1.2) and `netio.TcpServer` + `Ytls` (TLS as the
TCP bench negotiates it), both ECDSA P-256 and run alternately `--rounds` times (medians; the
machine is shared, so the load drifts and hits both alike):

* handshakes per second: `--handshakes` full handshakes, `--concurrency` in flight, from one
  client process; the wall-clock rate (client-bound as much as server-bound) and the server's
  CPU per handshake (its capacity: 1000 / ms per handshake);
* RSS per live session: server RSS growth over `--sessions` sessions that completed a handshake
  and one 1-byte echo, after a 50-session warm-up.

Servers and clients are separate processes on 127.0.0.1; server CPU and RSS are read by the
server itself (bench.server's control loop). DTLS clients are `yuneta.dtls.DtlsSession`s
(pyOpenSSL, no certificate check: the server is measured), one UDP socket each.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import ROOT, PyServer, expect, make_cert

R = selectors.EVENT_READ


# ---------------------------------------------------------------------------
# DTLS server and client subprocesses
# ---------------------------------------------------------------------------


def serve(cert: str, key: str) -> None:
    """A DTLS echo listener on an IOLoop; prints its port, then bench.server's control loop."""
    from bench.server import control_loop
    from yuneta.dtls_context import Ydtls
    from yuneta.netio import IOLoop
    from yuneta.udpio import UdpServer

    ydtls = Ydtls({"ssl_certificate": cert, "ssl_certificate_key": key})
    io = IOLoop()
    io.start()
    server = UdpServer(io, "127.0.0.1", 0, tls=ydtls.get_context, idle_timeout=3600)
    print(server.start_listening(), flush=True)
    control_loop()
    server.stop_listening()
    io.stop()


def dtls_sessions(port: int, count: int, concurrency: int, keep: bool) -> list:
    """Complete `count` DTLS handshakes, `concurrency` in flight; echo 1 byte on each kept one."""
    from OpenSSL import SSL

    from yuneta.dtls import DataReceived, DtlsSession

    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    sel = selectors.DefaultSelector()
    kept: list[tuple[socket.socket, DtlsSession]] = []
    started = finished = 0
    addr = ("127.0.0.1", port)

    def flush(sock: socket.socket, session: DtlsSession) -> None:
        for datagram in session.datagrams_to_send():
            sock.send(datagram)

    def start() -> None:
        nonlocal started
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(addr)
        sock.setblocking(False)
        session = DtlsSession.client(ctx, addr, time.monotonic())
        sel.register(sock, R, session)
        flush(sock, session)
        started += 1

    def finish(sock: socket.socket, session: DtlsSession) -> None:
        nonlocal finished
        finished += 1
        if keep:
            kept.append((sock, session))
            return
        sel.unregister(sock)
        session.close()
        flush(sock, session)
        sock.close()

    while finished < count:
        while started < count and started - finished < concurrency:
            start()
        events = sel.select(0.05)
        now = time.monotonic()
        for key, _ in events:
            sock, session = key.fileobj, key.data
            try:
                data = sock.recv(65535)  # type: ignore[union-attr]
            except (BlockingIOError, ConnectionRefusedError):
                continue
            was_open = session.is_open
            session.receive_datagram(data, now)
            flush(sock, session)  # type: ignore[arg-type]
            if session.is_open and not was_open:
                finish(sock, session)  # type: ignore[arg-type]
        for key in list(sel.get_map().values()):  # retransmissions (loss on a busy box)
            session = key.data
            deadline = session.deadline()
            if not session.is_open and deadline is not None and deadline <= now:
                session.handle_timeout(now)
                flush(key.fileobj, session)  # type: ignore[arg-type]
    # One 1-byte echo on every kept session, so each has sent and received application data.
    # `concurrency` at a time, resent after a second: a burst of 1,000 datagrams overflows a
    # socket buffer, and DTLS never retransmits application data.
    waiting = [sock for sock, _ in kept]
    sessions = dict(kept)
    for _attempt in range(20):
        if not waiting:
            break
        missing = []
        for i in range(0, len(waiting), concurrency):
            batch = set(waiting[i : i + concurrency])
            for sock in batch:
                sessions[sock].send(b"x")
                flush(sock, sessions[sock])
            deadline = time.monotonic() + 1.0
            while batch and time.monotonic() < deadline:
                for key, _ in sel.select(0.1):
                    sock = key.fileobj
                    try:
                        data = sock.recv(65535)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    events = sessions[sock].receive_datagram(data, 0.0)  # type: ignore[index]
                    if any(isinstance(e, DataReceived) for e in events):
                        batch.discard(sock)  # type: ignore[arg-type]
            missing += batch
        waiting = missing
    if waiting:
        raise SystemExit(f"{len(waiting)} DTLS sessions never echoed")
    return kept


def client_main(port: int, mode: str, n: int, concurrency: int) -> None:
    """bench.client's protocol for DTLS: `handshake` prints DONE, `idle` READY then holds."""
    kept = dtls_sessions(port, n, concurrency, keep=mode == "idle")
    print("DONE" if mode == "handshake" else "READY", flush=True)
    if mode == "idle":
        sys.stdin.readline()
    for sock, _ in kept:
        sock.close()


# ---------------------------------------------------------------------------
# Measurements (the orchestrating process)
# ---------------------------------------------------------------------------


class DtlsBenchServer(PyServer):
    """`python -m bench.dtls --serve`: the same control channel as bench.server."""

    def __init__(self, cert: tuple[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.dtls", "--serve", "--cert", cert[0], "--key", cert[1]],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]


def run_client(kind: str, port: int, mode: str, n: int, concurrency: int) -> subprocess.Popen:
    if kind == "dtls":
        argv = ["-m", "bench.dtls", "--client", "--port", str(port)]
    else:
        argv = ["-m", "bench.client", "--port", str(port)]
    argv += ["--mode", mode, "--n", str(n), "--concurrency", str(concurrency)]
    return subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def server_for(kind: str, cert: tuple[str, str]) -> PyServer:
    return DtlsBenchServer(cert) if kind == "dtls" else PyServer("netio", cert)


def handshakes(kind: str, cert: tuple[str, str], m: int, concurrency: int) -> tuple[float, float]:
    """(handshakes per second, wall clock; server CPU ms per handshake)."""
    server = server_for(kind, cert)
    try:
        warm = run_client(kind, server.port, "handshake", 50, concurrency)
        expect(warm, "DONE")
        warm.wait()
        time.sleep(0.2)
        cpu0, t0 = server.cpu(), time.monotonic()
        c = run_client(kind, server.port, "handshake", m, concurrency)
        expect(c, "DONE")
        wall = time.monotonic() - t0
        c.wait()
        time.sleep(0.3)  # let the server finish closing
        return m / wall, (server.cpu() - cpu0) / m * 1e3
    finally:
        server.close()


def live_memory(kind: str, cert: tuple[str, str], n: int, concurrency: int) -> float:
    """Server RSS KiB per live session (handshake + one 1-byte echo), after a warm-up."""
    server = server_for(kind, cert)
    try:
        warm = run_client(kind, server.port, "idle", 50, concurrency)
        expect(warm, "READY")
        warm.stdin.close()  # type: ignore[union-attr]
        warm.wait()
        time.sleep(0.3)
        before = server.rss()
        c = run_client(kind, server.port, "idle", n, concurrency)
        expect(c, "READY")
        time.sleep(0.5)
        after = server.rss()
        c.stdin.close()  # type: ignore[union-attr]
        c.wait()
        return (after - before) / n
    finally:
        server.close()


def instructions_per_handshake(kind: str, cert: tuple[str, str], m: int, work: Path) -> float:
    """Server instructions (callgrind Ir, all libraries) per full handshake: deterministic
    where wall-clock figures on a shared machine are not. Warm-up runs uninstrumented."""
    out = work / f"callgrind-{kind}.out"
    server_argv = (
        ["-m", "bench.dtls", "--serve"]
        if kind == "dtls"
        else ["-m", "bench.server", "--mode", "netio"]
    )
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            *server_argv,
            "--cert",
            cert[0],
            "--key",
            cert[1],
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        warm = run_client(kind, port, "handshake", 20, 4)
        expect(warm, "DONE")
        warm.wait()
        time.sleep(1.0)
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(proc.pid)], check=True, capture_output=True)
        c = run_client(kind, port, "handshake", m, 4)
        expect(c, "DONE")
        c.wait()
        time.sleep(2.0)  # under valgrind the server is slow to finish closing
        subprocess.run([*control, "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(120)
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):  # "summary:" covers only the last dump's window
            return int(line.split()[1]) / m
    raise RuntimeError(f"no totals in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["idle", "handshake"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--sessions", type=int, default=1000, help="live sessions for RSS/session")
    ap.add_argument("--handshakes", type=int, default=1000, help="handshakes per figure")
    ap.add_argument("--concurrency", type=int, default=16, help="handshakes in flight")
    ap.add_argument("--rounds", type=int, default=3, help="alternating DTLS/TCP rounds")
    ap.add_argument(
        "--callgrind",
        type=int,
        default=0,
        metavar="M",
        help="also count server instructions per handshake over M handshakes (valgrind)",
    )
    args = ap.parse_args()
    if args.serve:
        serve(args.cert, args.key)
        return
    if args.client:
        client_main(args.port, args.mode, args.n, args.concurrency)
        return

    samples: dict[str, dict[str, list[float]]] = {
        k: {"rate": [], "cpu": [], "rss": []} for k in ("dtls", "tcp")
    }
    with tempfile.TemporaryDirectory(prefix="yuneta-bench-dtls-") as tmp:
        cert = make_cert(Path(tmp), "ec")
        for rnd in range(args.rounds):
            for kind in ("dtls", "tcp"):
                print(f"[{kind}] round {rnd + 1}/{args.rounds}...", flush=True)
                rate, cpu = handshakes(kind, cert, args.handshakes, args.concurrency)
                samples[kind]["rate"].append(rate)
                samples[kind]["cpu"].append(cpu)
                samples[kind]["rss"].append(
                    live_memory(kind, cert, args.sessions, args.concurrency)
                )
        instructions = (
            {k: instructions_per_handshake(k, cert, args.callgrind, Path(tmp)) for k in samples}
            if args.callgrind
            else {}
        )
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items()}
    print(f"\nmedians of {args.rounds} alternating rounds (load average {os.getloadavg()[0]:.1f})")
    print(f"{'metric':62} {'DTLS (udps)':>12} {'TLS (tcps)':>12} {'ratio':>7}")
    rows = [
        ("rate", f"handshakes/s, wall clock ({args.concurrency} in flight, one client)", ".0f"),
        ("cpu", "server CPU ms per full handshake (ECDSA P-256)", ".3f"),
        ("rss", f"server RSS KiB per live session ({args.sessions} sessions)", ".1f"),
    ]
    for key, label, spec in rows:
        d, t = med["dtls"][key], med["tcp"][key]
        print(f"{label:62} {d:>12{spec}} {t:>12{spec}} {d / t:>6.2f}x")
    capacity = {k: 1000 / med[k]["cpu"] for k in med}
    print(
        f"{'server capacity, handshakes/s of one core (1000 / CPU ms)':62} "
        f"{capacity['dtls']:>12.0f} {capacity['tcp']:>12.0f} "
        f"{capacity['dtls'] / capacity['tcp']:>6.2f}x"
    )
    if instructions:
        d, t = instructions["dtls"] / 1e6, instructions["tcp"] / 1e6
        label = f"server instructions per handshake, millions (callgrind, {args.callgrind})"
        print(f"{label:62} {d:>12.2f} {t:>12.2f} {d / t:>6.2f}x")


if __name__ == "__main__":
    main()
