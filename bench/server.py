"""Benchmark server subprocess: a TLS echo server of one kind, driven over stdin/stdout.

Modes: `netio` (yuneta.netio + ytls), `asyncio-streams` (`asyncio.start_server(ssl=ctx)`),
`asyncio-proto` (`loop.create_server(Protocol, ssl=ctx)`). Prints the port, then answers one
line per stdin command: `cpu` (process CPU seconds), `rss` (VmRSS KiB), `gc` (collect),
`reload` (netio: `reload-certs` of the same files, as a renewal would; prints "ok").
`--private none` makes netio use only public APIs (yuneta.sslcompat's fallbacks); a comma list
(`accept,socket_bio`) uses only those private shortcuts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import threading
import time

from yuneta.ytls import Ytls, build_server_context

RELOADERS: list = []


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def control_loop() -> None:
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "cpu":
            print(f"{time.process_time():.6f}", flush=True)
        elif cmd == "rss":
            print(rss_kib(), flush=True)
        elif cmd == "gc":
            gc.collect()
            print("ok", flush=True)
        elif cmd == "reload":
            for reload in RELOADERS:
                reload()
            print("ok", flush=True)


class EchoProto(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--private", default="all")  # all, none, or shortcuts to use
    args = ap.parse_args()
    crypto = {"ssl_certificate": args.cert, "ssl_certificate_key": args.key}

    if args.mode == "netio":
        from yuneta import sslcompat
        from yuneta.netio import IOLoop, TcpServer

        if args.private in ("0", "none"):
            sslcompat.use_public()
        elif args.private not in ("1", "all"):
            sslcompat.use_private(only=args.private.split(","))  # e.g. "accept,socket_bio"
        ytls = Ytls(crypto)  # as a listener has it: session context + per-handshake selection
        RELOADERS.append(ytls.reload)
        io = IOLoop()
        io.start()
        server = TcpServer(io, "127.0.0.1", 0, tls=ytls.get_context, backlog=4096)
        print(server.start_listening(), flush=True)
        control_loop()
        io.stop()
        return

    ctx = build_server_context(crypto)
    loop = asyncio.new_event_loop()
    if args.mode == "asyncio-streams":
        srv = loop.run_until_complete(
            asyncio.start_server(echo_stream, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        )
    else:
        srv = loop.run_until_complete(
            loop.create_server(EchoProto, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        )
    print(srv.sockets[0].getsockname()[1], flush=True)
    threading.Thread(
        target=lambda: (control_loop(), loop.call_soon_threadsafe(loop.stop)), daemon=True
    ).start()
    loop.run_forever()


if __name__ == "__main__":
    main()
