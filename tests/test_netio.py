"""netio: the yuno's I/O loop, TLS listeners and hot certificate swaps, over real sockets."""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from certs import TestCA, serial_of_peer
from clients import BioTlsClient, echo, tls_connect, wait_for

from yuneta.netio import Connection, Handler, IOLoop, TcpServer
from yuneta.ytls import Ytls

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    loop.start()
    yield loop
    loop.stop()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server ended the connection (EOF, reset or a TLS alert)."""
    try:
        return sock.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_plain_tcp_echo_and_counters(ioloop: IOLoop) -> None:
    opened: list[Connection] = []
    closed: list[Connection] = []
    server = TcpServer(
        ioloop,
        on_connection_open=opened.append,
        on_connection_close=lambda c, exc: closed.append(c),
    )
    port = server.start_listening()
    assert port > 0 and server.listening and not server.is_tls
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert echo(s, b"hello yuneta") == b"hello yuneta"
        assert server.connxs == 1 and server.tconnxs == 1
    assert wait_for(lambda: server.connxs == 0)
    assert server.tconnxs == 1 and len(opened) == 1 and closed == opened


def test_tls_session_handshakes_and_echoes_large_and_small(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "srv")
    ytls = Ytls(issued.crypto())
    server = TcpServer(ioloop, tls=ytls.get_context)
    port = server.start_listening()
    with tls_connect(port, ca.client_context()) as s:
        assert echo(s, b"x") == b"x"
        big = bytes(range(256)) * 2000
        assert echo(s, big) == big
        assert serial_of_peer(s) == issued.serial
        conn = server.connections()[0]
        assert conn.cert_serial == issued.serial
        assert conn.tls_version == s.version() and conn.cipher == s.cipher()[0]
        assert conn.peer_cert_serial is None


def test_live_session_survives_reload_and_new_session_gets_new_serial(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    server = TcpServer(ioloop, tls=ytls.get_context)
    port = server.start_listening()
    client_ctx = ca.client_context()
    with tls_connect(port, client_ctx) as live:
        assert echo(live, b"before") == b"before"
        ytls.reload(b.crypto())
        assert echo(live, b"after") == b"after"
        assert serial_of_peer(live) == a.serial
        with tls_connect(port, client_ctx) as new:
            assert serial_of_peer(new) == b.serial
            assert echo(new, b"new") == b"new"
            served = sorted(c.cert_serial for c in server.connections())
            assert served == sorted([a.serial, b.serial])
        assert ytls.alive_contexts() == 2  # the live session still holds A's context
    assert wait_for(lambda: server.connxs == 0)
    gc.collect()
    assert ytls.alive_contexts() == 1


def test_fifty_reloads_rotating_three_certificates_keep_echoing(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    certs = [ca.issue(tmp_path, name) for name in ("a", "b", "c")]
    ytls = Ytls(certs[0].crypto())
    server = TcpServer(ioloop, tls=ytls.get_context)
    port = server.start_listening()
    client_ctx = ca.client_context()
    with tls_connect(port, client_ctx) as live:
        for i in range(1, 51):
            current = certs[i % 3]
            ytls.reload(current.crypto())
            assert echo(live, f"round {i}".encode()) == f"round {i}".encode()
            with tls_connect(port, client_ctx) as new:
                assert serial_of_peer(new) == current.serial
                assert echo(new, b"ok") == b"ok"
    assert ytls.reload_count == 50


def test_failed_reload_keeps_serving_the_old_certificate(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    a, other = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "other")
    ytls = Ytls(a.crypto())
    server = TcpServer(ioloop, tls=ytls.get_context)
    port = server.start_listening()
    with pytest.raises(Exception, match="does not match"):
        ytls.reload(
            {"ssl_certificate": str(a.cert_path), "ssl_certificate_key": str(other.key_path)}
        )
    with tls_connect(port, ca.client_context()) as s:
        assert serial_of_peer(s) == a.serial and echo(s, b"still") == b"still"


def _mtls_try(port: int, ca: TestCA, client_cert_ctx: ssl.SSLContext | None) -> bool:
    ctx = client_cert_ctx or ca.client_context()
    try:
        with tls_connect(port, ctx) as s:
            return echo(s, b"ping") == b"ping"
    except (ssl.SSLError, ConnectionError):
        return False


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    failures: list[tuple[object, str]] = []
    clients_1, clients_2 = TestCA("clients one"), TestCA("clients two")
    issued = ca.issue(tmp_path, "srv")
    ytls = Ytls(issued.crypto(ssl_trusted_certificate=str(clients_1.write_ca(tmp_path / "c1.pem"))))
    server = TcpServer(
        ioloop,
        tls=ytls.get_context,
        on_handshake_failed=lambda peer, reason: failures.append((peer, reason)),
    )
    port = server.start_listening()

    def with_cert(client_ca: TestCA, name: str) -> ssl.SSLContext:
        ctx = client_ca.client_cert_context(tmp_path / name, name)
        ca.ca.configure_trust(ctx)
        return ctx

    assert not _mtls_try(port, ca, None)
    assert wait_for(lambda: server.handshake_failures == 1)
    assert "CERTIFICATE" in failures[0][1].upper()

    one = with_cert(clients_1, "one")
    with tls_connect(port, one) as live:
        assert echo(live, b"mtls") == b"mtls"
        assert server.connections()[0].peer_cert_serial is not None
        ytls.reload(
            issued.crypto(ssl_trusted_certificate=str(clients_2.write_ca(tmp_path / "c2.pem")))
        )
        assert not _mtls_try(port, ca, with_cert(clients_1, "one-again"))
        assert _mtls_try(port, ca, with_cert(clients_2, "two"))
        assert echo(live, b"still mtls") == b"still mtls"
    assert wait_for(lambda: server.handshake_failures == 2)


def test_only_allowed_ips_closes_others_at_accept(ioloop: IOLoop) -> None:
    refusing = TcpServer(ioloop, only_allowed_ips=["10.0.0.0/8", "192.168.1.7"])
    allowing = TcpServer(ioloop, only_allowed_ips=["10.0.0.0/8", "127.0.0.0/8"])
    port_refusing = refusing.start_listening()
    port_allowing = allowing.start_listening()
    with socket.create_connection(("127.0.0.1", port_refusing), timeout=10) as s:
        s.sendall(b"hi")
        assert closed_by_server(s)
    assert wait_for(lambda: refusing.rejected == 1)
    assert refusing.tconnxs == 0
    with socket.create_connection(("127.0.0.1", port_allowing), timeout=10) as s:
        assert echo(s, b"hi") == b"hi"
    assert allowing.rejected == 0


def test_handshake_failures_are_counted_and_reported(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    reasons: list[str] = []
    ytls = Ytls(ca.issue(tmp_path, "srv").crypto(ssl_min_version="TLSv1.3"))
    server = TcpServer(
        ioloop,
        tls=ytls.get_context,
        on_handshake_failed=lambda peer, reason: reasons.append(reason),
    )
    port = server.start_listening()

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_server(s)
    old_client = ca.client_context()
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_connect(port, old_client)
    assert wait_for(lambda: server.handshake_failures == 2)
    assert reasons[0] == "HTTP_REQUEST"
    assert reasons[1] == "UNSUPPORTED_PROTOCOL"
    assert server.connxs == 0 and server.tconnxs == 0 and server.handshaking == 0


def test_half_open_client_is_dropped_after_handshake_timeout(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    reasons: list[str] = []
    ytls = Ytls(ca.issue(tmp_path, "srv").crypto())
    server = TcpServer(
        ioloop,
        tls=ytls.get_context,
        handshake_timeout=0.3,
        on_handshake_failed=lambda peer, reason: reasons.append(reason),
    )
    port = server.start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert wait_for(lambda: server.handshaking == 1)
        assert closed_by_server(s)
    assert reasons == ["handshake timeout"] and server.handshaking == 0


def test_openssl_s_client_handshakes_and_gets_echo(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "srv")
    ytls = Ytls(issued.crypto())
    port = TcpServer(ioloop, tls=ytls.get_context).start_listening()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-quiet",
            "-CAfile",
            str(ca.write_ca(tmp_path / "ca.pem")),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello from s_client\n")
        proc.stdin.flush()
        got = b""
        deadline = time.monotonic() + 15
        while b"hello from s_client" not in got and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    break
                got += chunk
        assert b"hello from s_client\n" in got
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert b"verify return:1" in err or b"depth=0" in err


def test_stop_listening_keeps_or_closes_live_connections(ioloop: IOLoop) -> None:
    server = TcpServer(ioloop)
    port = server.start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert echo(s, b"a") == b"a"
        server.stop_listening(close_connections=False)
        assert not server.listening
        assert echo(s, b"b") == b"b"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
        server.stop_listening(close_connections=True)
        assert closed_by_server(s)
    assert server.connxs == 0


def test_ioloop_runs_coroutines_from_other_threads_and_refuses_deadlock(
    ioloop: IOLoop,
) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert ioloop.run_sync(where(), 5) == ioloop.name
    assert ioloop.run(where()).result(5) == ioloop.name

    async def nested() -> None:
        ioloop.run_sync(where(), 1)

    with pytest.raises(RuntimeError, match="deadlock"):
        ioloop.run_sync(nested(), 5)


def test_custom_handler_sees_open_data_close(ioloop: IOLoop) -> None:
    events: list[str] = []

    class Upper(Handler):
        __slots__ = ()

        def on_open(self, conn: Connection) -> None:
            events.append("open")
            conn.write(b"welcome\n")

        def on_data(self, conn: Connection, data: bytes) -> None:
            events.append("data")
            conn.write(data.upper())

        def on_close(self, conn: Connection, exc: BaseException | None) -> None:
            events.append("close")

    port = TcpServer(ioloop, handler=Upper).start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100) == b"welcome\n"
        assert echo(s, b"shout") == b"SHOUT"
    assert wait_for(lambda: events[-1:] == ["close"])
    assert events == ["open", "data", "close"]


def test_no_drop_while_reloading_under_500_tls_connections(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    """500 sessions keep echoing through 20 reloads while new clients keep connecting;
    each new client is served the certificate current when it connected."""
    issued = [ca.issue(tmp_path, f"gen{i}") for i in range(21)]
    index = {c.serial: i for i, c in enumerate(issued)}
    ytls = Ytls(issued[0].crypto())
    server = TcpServer(ioloop, tls=ytls.get_context, backlog=1024)
    port = server.start_listening()
    client_ctx = ca.client_context()

    old = [tls_connect(port, client_ctx) for _ in range(500)]
    for s in old:
        assert serial_of_peer(s) == issued[0].serial

    reload_started: list[float] = []
    reload_done: list[float] = []
    errors: list[BaseException] = []

    def reloader() -> None:
        try:
            for i in range(1, 21):
                reload_started.append(time.monotonic())
                ytls.reload(issued[i].crypto())
                reload_done.append(time.monotonic())
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=reloader)
    thread.start()
    new: list[tuple[float, float, int, ssl.SSLSocket]] = []
    rounds = 0
    reloads_over = False
    while not reloads_over or rounds < 3:
        # Read before connecting: the client made after the reloader ended must see the last one.
        reloads_over = not thread.is_alive()
        t0 = time.monotonic()
        s = tls_connect(port, client_ctx)
        t1 = time.monotonic()
        new.append((t0, t1, index[serial_of_peer(s)], s))
        assert echo(s, b"new") == b"new"
        if len(new) % 10 == 0:
            rounds += 1
            for i, live in enumerate(old):
                msg = f"old {i} round {rounds}".encode()
                assert echo(live, msg) == msg
    thread.join()
    assert not errors and len(reload_done) == 20

    for t0, t1, gen, _ in new:
        # Reload k finished before we connected: we must see generation >= k.
        assert gen >= sum(1 for done in reload_done if done < t0)
        # Reload k started after our handshake ended: we must see generation < k.
        assert gen <= sum(1 for started in reload_started if started < t1)
    assert {gen for *_, gen, _ in new} >= {20}
    for i, live in enumerate(old):
        assert echo(live, b"last %d" % i) == b"last %d" % i
        assert serial_of_peer(live) == issued[0].serial
    for *_, s in new:
        assert echo(s, b"bye") == b"bye"
        s.close()
    for s in old:
        s.close()
    assert wait_for(lambda: server.connxs == 0, 30)
    assert server.tconnxs == 500 + len(new) and server.handshake_failures == 0
    gc.collect()
    assert ytls.alive_contexts() == 1


# -- hardening: partial sends, half-close, close/abort, leaks, EMFILE, fd reuse ---------------


def read_until_eof(recv, limit: float = 60.0) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = recv()
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError(f"no EOF within {limit} s after {len(got)} bytes")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Connection)


class LoopCpu:
    """CPU seconds used by an IOLoop's thread; the stat file stays open (works at EMFILE)."""

    def __init__(self, ioloop: IOLoop) -> None:
        tid = ioloop._thread.native_id  # type: ignore[union-attr]
        self.fd = os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY)

    def __call__(self) -> float:
        fields = os.pread(self.fd, 4096, 0).decode().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        os.close(self.fd)


def tls_server(ioloop: IOLoop, ca: TestCA, tmp_path: Path, **kw) -> tuple[TcpServer, int]:
    extra = kw.pop("crypto", {})
    ytls = Ytls(ca.issue(tmp_path, "srv").crypto(**extra))
    server = TcpServer(ioloop, tls=ytls.get_context, **kw)
    return server, server.start_listening()


def client_hello(ca: TestCA) -> bytes:
    client = ca.client_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return out.read()


def reset_mid_handshake(port: int, hello: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(hello)
    s.recv(1)  # the server's first flight has started: the handshake is in progress
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST


PAYLOAD = os.urandom(1 << 20) * 6  # 6 MiB: far past the kernel buffers and the high water


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_multi_megabyte_echo_to_a_slow_reader_then_half_close(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, use_tls: bool
) -> None:
    """Everything sent before SHUT_WR (no close_notify) is echoed, in order, then EOF."""
    if use_tls:
        server, port = tls_server(ioloop, ca, tmp_path)
        client = BioTlsClient(port, ca.client_context())
        send, recv = client.sendall, client.recv
        raw = client.sock
    else:
        server = TcpServer(ioloop)
        port = server.start_listening()
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        send, recv = raw.sendall, lambda: raw.recv(65536)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(0, len(PAYLOAD), 256 * 1024):
                send(PAYLOAD[i : i + 256 * 1024])
            raw.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.5)  # a slow reader: let the server's buffers fill first
    got = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = recv()
        except ssl.SSLEOFError:  # TLS: the server closed after our half-close (no notify)
            chunk = b""
        if not chunk:
            break
        got += chunk
        if len(got) < 1 << 20:
            time.sleep(0.001)
    thread.join(30)
    raw.close()
    assert not errors
    assert len(got) == len(PAYLOAD) and bytes(got) == PAYLOAD
    assert wait_for(lambda: server.connxs == 0)


def test_tls_close_with_megabytes_buffered_flushes_then_sends_close_notify(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    class SendAndClose(Handler):
        __slots__ = ()

        def on_open(self, conn: Connection) -> None:
            conn.write(PAYLOAD)
            conn.close()
            conn.write(b"ignored once closing")

    server, port = tls_server(ioloop, ca, tmp_path, handler=SendAndClose)
    client = BioTlsClient(port, ca.client_context())
    time.sleep(0.5)  # a slow reader: the server buffers most of it
    assert read_until_eof(client.recv) == PAYLOAD  # b"" means close_notify was read
    client.close()
    assert wait_for(lambda: server.connxs == 0)


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_close_delivers_everything_even_when_the_peer_keeps_sending(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, use_tls: bool
) -> None:
    """Closing with the peer's bytes unread (or arriving after close) makes the kernel send
    a RST that destroys what the peer has not read yet: the server must linger instead."""

    class ReplyAndClose(Handler):
        __slots__ = ()

        def on_data(self, conn: Connection, data: bytes) -> None:
            if conn.is_open:
                conn.write(PAYLOAD)
                conn.close()

    if use_tls:
        server, port = tls_server(ioloop, ca, tmp_path, handler=ReplyAndClose)
        client = BioTlsClient(port, ca.client_context())
        send, recv, raw = client.sendall, client.recv, client.sock
    else:
        server = TcpServer(ioloop, handler=ReplyAndClose)
        port = server.start_listening()
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        send, recv = raw.sendall, lambda: raw.recv(65536)
    send(b"request")
    for _ in range(5):  # pipelined requests the server will never read
        time.sleep(0.1)
        send(b"more" * 1000)
    time.sleep(0.3)
    assert read_until_eof(recv) == PAYLOAD
    raw.close()
    assert wait_for(lambda: server.connxs == 0)


def test_abort_drops_the_connection_at_once_and_ignores_later_writes(ioloop: IOLoop) -> None:
    seen: list[object] = []

    class AbortOnData(Handler):
        __slots__ = ()

        def on_data(self, conn: Connection, data: bytes) -> None:
            conn.abort()
            seen.append(conn.is_open)
            conn.write(b"written after abort")

        def on_close(self, conn: Connection, exc: BaseException | None) -> None:
            seen.append("closed")

    server = TcpServer(ioloop, handler=AbortOnData)
    port = server.start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"go")
        got = b""
        try:
            while chunk := s.recv(100):
                got += chunk
        except ConnectionError:
            pass
        assert got == b""
    assert wait_for(lambda: seen == [False, "closed"]), seen
    assert server.connxs == 0


def test_reset_during_handshake_is_a_counted_failure_and_leaks_nothing(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    server, port = tls_server(ioloop, ca, tmp_path)
    hello = client_hello(ca)
    for _ in range(20):
        reset_mid_handshake(port, hello)
    assert wait_for(lambda: server.handshake_failures == 20 and server.handshaking == 0)
    assert server.connxs == 0 and not server.connections()


def test_a_thousand_connections_closed_every_way_leak_no_fd_nor_object(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    server, port = tls_server(ioloop, ca, tmp_path, handshake_timeout=0.2, backlog=1024)
    plain = TcpServer(ioloop, backlog=1024)
    pport = plain.start_listening()
    ctx = ca.client_context()
    gc.collect()
    before, objects_before = open_fds(), live_connections()
    rst = struct.pack("ii", 1, 0)
    idle: list[socket.socket] = []
    for i in range(1000):
        way = i % 5
        if way == 0:  # clean TLS close (close_notify both ways)
            with tls_connect(port, ctx) as s:
                assert echo(s, b"x") == b"x"
                s.unwrap()
        elif way == 1:  # TLS then RST
            s = tls_connect(port, ctx)
            assert echo(s, b"y") == b"y"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
            s.close()
        elif way == 2:  # dropped in the middle of the handshake
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"\x16\x03\x01\x00\xff\x01")
            s.close()
        elif way == 3:  # says nothing: the handshake timeout sweeps it
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        else:  # plain, clean close and RST alternately
            s = socket.create_connection(("127.0.0.1", pport), timeout=10)
            assert echo(s, b"z") == b"z"
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
            s.close()
    assert wait_for(
        lambda: server.handshaking == 0 and server.connxs == 0 and plain.connxs == 0, 30
    )
    for s in idle:
        assert closed_by_server(s)
        s.close()
    assert server.handshake_failures == 400 and server.tconnxs == 400
    assert wait_for(lambda: not server.connections() and not plain.connections())
    assert wait_for(lambda: open_fds() == before), (open_fds(), before)
    assert live_connections() == objects_before


def test_ioloop_stop_closes_live_connections_also_of_stopped_listeners(ioloop: IOLoop) -> None:
    """stop_listening(close_connections=False) keeps connections; IOLoop.stop() still ends
    them (and releases their descriptors)."""
    loop = IOLoop("netio-stop")
    loop.start()
    before = open_fds()
    closed: list[object] = []
    kept = TcpServer(loop, on_connection_close=lambda c, exc: closed.append(c))
    live = TcpServer(loop, on_connection_close=lambda c, exc: closed.append(c))
    ports = kept.start_listening(), live.start_listening()
    clients = [socket.create_connection(("127.0.0.1", p), timeout=10) for p in ports]
    for s in clients:
        assert echo(s, b"up") == b"up"
    kept.stop_listening(close_connections=False)
    assert echo(clients[0], b"still") == b"still"
    loop.stop()
    for s in clients:
        assert closed_by_server(s)
        s.close()
    assert len(closed) == 2 and kept.connxs == 0 and live.connxs == 0
    assert open_fds() <= before


def test_ioloop_start_stop_cycles_leak_no_descriptor() -> None:
    before = open_fds()
    for _ in range(20):
        loop = IOLoop("netio-cycle")
        loop.start()
        port = TcpServer(loop).start_listening()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert echo(s, b"c") == b"c"
        loop.stop()
        del loop
    assert open_fds() == before  # the epoll of each loop included, without gc


def test_handler_and_callback_exceptions_close_only_their_connection(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    errors: list[object] = []
    closes: list[object] = []
    ioloop.loop.set_exception_handler(lambda loop, context: errors.append(context.get("exception")))

    class Fragile(Handler):
        __slots__ = ()

        def on_data(self, conn: Connection, data: bytes) -> None:
            if data.startswith(b"boom"):
                raise ValueError("boom")
            conn.write(data)

        def on_close(self, conn: Connection, exc: BaseException | None) -> None:
            closes.append(exc)

    def bad_failure_callback(peer: object, reason: str) -> None:
        raise RuntimeError("listener callback failed")

    server, port = tls_server(
        ioloop, ca, tmp_path, handler=Fragile, on_handshake_failed=bad_failure_callback
    )
    ctx = ca.client_context()
    with tls_connect(port, ctx) as good, tls_connect(port, ctx) as bad:
        bad.sendall(b"boom")
        assert closed_by_server(bad)
        assert echo(good, b"fine") == b"fine"
    assert wait_for(lambda: len(closes) == 2)
    assert isinstance(closes[0], ValueError) and closes[1] is None
    # A failing on_handshake_failed must not leave the connection behind.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert closed_by_server(s)
    for _ in range(3):
        reset_mid_handshake(port, client_hello(ca))
    assert wait_for(lambda: server.handshake_failures == 6 and server.handshaking == 0)
    assert wait_for(lambda: not server.connections()), server.connections()
    assert any(isinstance(e, ValueError) for e in errors)


def test_emfile_at_accept_backs_off_without_spinning_and_recovers(ioloop: IOLoop) -> None:
    import resource

    server = TcpServer(ioloop)
    port = server.start_listening()
    loop_cpu = LoopCpu(ioloop)
    gc.collect()
    # Client sockets exist before the descriptors run out: connecting needs no new one.
    clients = [socket.socket() for _ in range(6)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 50, hard))
        with contextlib.suppress(OSError):
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        for s in clients:
            s.connect(("127.0.0.1", port))
        time.sleep(0.3)
        cpu0 = loop_cpu()
        time.sleep(1.5)
        spent = loop_cpu() - cpu0
        assert server.tconnxs == 0  # every accept hit EMFILE
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        loop_cpu.close()
    assert spent < 0.3, f"the loop spun: {spent:.2f} s CPU in 1.5 s"
    for s in clients:  # accepted once descriptors are back, and served
        s.settimeout(10)
        assert echo(s, b"back") == b"back"
        s.close()
    assert wait_for(lambda: server.tconnxs == len(clients) and server.connxs == 0)


def test_closed_descriptor_shared_with_a_forked_child_sends_no_stale_events(
    ioloop: IOLoop,
) -> None:
    """A child forked while a connection is open holds its socket: closing ours must still
    take it out of the epoll, or its number (reused by the next accept) keeps firing."""
    server = TcpServer(ioloop)
    port = server.start_listening()
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert echo(first, b"a") == b"a"
    loop_cpu = LoopCpu(ioloop)
    pid = os.fork()
    if pid == 0:  # the child only holds the inherited descriptors for a while
        first.close()  # (but not the client's end: the server must see its EOF)
        time.sleep(4)
        os._exit(0)
    try:
        first.close()  # the server reads EOF and closes its socket (the child keeps it)
        assert wait_for(lambda: server.connxs == 0)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
            assert echo(second, b"b") == b"b"
            time.sleep(0.2)
            cpu0 = loop_cpu()
            time.sleep(1.0)
            spent = loop_cpu() - cpu0
            assert spent < 0.3, f"stale events: {spent:.2f} s CPU in 1 s"
            assert echo(second, b"c") == b"c"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loop_cpu.close()


def test_writes_from_another_thread_through_call_soon_threadsafe(ioloop: IOLoop) -> None:
    class Deferred(Handler):
        __slots__ = ()

        def on_data(self, conn: Connection, data: bytes) -> None:
            def worker() -> None:
                for i in range(50):
                    ioloop.call_soon_threadsafe(conn.write, b"%d:" % i + data)
                ioloop.call_soon_threadsafe(conn.close)
                ioloop.call_soon_threadsafe(conn.write, b"after close")

            threading.Thread(target=worker).start()

    server = TcpServer(ioloop, handler=Deferred)
    port = server.start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"x")
        got = read_until_eof(lambda: s.recv(65536))
    assert got == b"".join(b"%d:x" % i for i in range(50))
    assert wait_for(lambda: server.connxs == 0)


def test_plain_connections_outlive_the_handshake_timeout_tls_silent_ones_do_not(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    tls, tport = tls_server(ioloop, ca, tmp_path, handshake_timeout=0.2)
    plain = TcpServer(ioloop, handshake_timeout=0.2)
    pport = plain.start_listening()
    with (
        socket.create_connection(("127.0.0.1", pport), timeout=10) as p,
        socket.create_connection(("127.0.0.1", tport), timeout=10) as t,
    ):
        assert closed_by_server(t)
        time.sleep(0.5)
        assert echo(p, b"still here") == b"still here"
    assert tls.handshake_failures == 1


# OpenSSL 3 refuses client-initiated renegotiation unless this option (no ssl constant).
_SSL_OP_ALLOW_CLIENT_RENEGOTIATION = 1 << 8


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
def test_client_renegotiation_never_breaks_the_server(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, allow: bool
) -> None:
    closes: list[BaseException | None] = []
    issued = ca.issue(tmp_path, "srv")
    if allow:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(issued.cert_path, issued.key_path)
        ctx.options |= _SSL_OP_ALLOW_CLIENT_RENEGOTIATION
        provider = lambda: ctx  # noqa: E731
    else:
        provider = Ytls(issued.crypto()).get_context  # ssl_disable_renegotiation by default
    server = TcpServer(ioloop, tls=provider, on_connection_close=lambda c, e: closes.append(e))
    port = server.start_listening()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_2",
            "-CAfile",
            str(ca.write_ca(tmp_path / "ca.pem")),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdin is not None
        for line in (b"hello one\n", b"R\n", b"hello two\n", b"R\n", b"hello three\n"):
            with contextlib.suppress(BrokenPipeError):  # s_client quits once refused
                proc.stdin.write(line)
                proc.stdin.flush()
            time.sleep(0.4)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    assert b"RENEGOTIATING" in out and b"hello one" in out
    if allow:
        assert b"hello two" in out and b"hello three" in out
    else:
        assert b"no renegotiation" in out and b"hello two" not in out
        assert wait_for(lambda: len(closes) == 1) and closes[0] is not None
    # The server is unharmed either way.
    with tls_connect(port, ca.client_context()) as s:
        assert echo(s, b"after") == b"after"
    assert wait_for(lambda: server.connxs == 0)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_clients_echo(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, version: str
) -> None:
    server, port = tls_server(ioloop, ca, tmp_path)
    ctx = ca.client_context()
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with tls_connect(port, ctx) as s:
        assert s.version() == version.replace("_", ".")
        big = os.urandom(300_000)
        assert echo(s, big) == big
        assert server.connections()[0].tls_version == s.version()


def s_client(port: int, ca_file: Path, *args: str, line: bytes = b"") -> str:
    """Run `openssl s_client`; with `line`, send it, give the echo time, then quit ("Q")."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None
    if line:
        proc.stdin.write(line)
        proc.stdin.flush()
        time.sleep(0.5)
        proc.stdin.write(b"Q\n")
    out, _ = proc.communicate(timeout=30)
    return out.decode(errors="replace")


def test_openssl_s_client_resumes_sessions_tls12_reconnect_and_tls13_tickets(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path
) -> None:
    server, port = tls_server(ioloop, ca, tmp_path)
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    out = s_client(port, ca_file, "-tls1_2", "-reconnect")
    assert out.count("Reused,") == 5, out[-2000:]
    # s_client -reconnect never resumes TLS 1.3 (not even against s_server): use a ticket file.
    sess = tmp_path / "tls13.sess"
    out = s_client(port, ca_file, "-tls1_3", "-sess_out", str(sess), line=b"ping\n")
    assert "New, TLSv1.3" in out and "ping" in out and sess.exists()
    out = s_client(port, ca_file, "-tls1_3", "-sess_in", str(sess), line=b"ping\n")
    assert "Reused, TLSv1.3" in out, out[-2000:]
    assert wait_for(lambda: server.connxs == 0 and server.handshaking == 0)
    assert server.handshake_failures == 0 and server.tconnxs == 8


@pytest.mark.parametrize("depth", [0, 1])
def test_client_chain_longer_than_ssl_verify_depth_is_refused_and_counted(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, depth: int
) -> None:
    # A client leaf signed by an intermediate CA: one untrusted CA between leaf and root,
    # so depth 0 refuses it and depth 1 (OpenSSL's meaning) accepts it.
    client_root = trustme.CA()
    client_leaf = client_root.create_child_ca().issue_cert("client.test")
    ca_file = tmp_path / "client-root.pem"
    client_root.cert_pem.write_to_path(str(ca_file))
    crypto = ca.issue(tmp_path, "srv").crypto(
        ssl_trusted_certificate=str(ca_file), ssl_verify_depth=depth
    )
    reasons: list[str] = []
    server = TcpServer(
        ioloop, tls=Ytls(crypto).get_context, on_handshake_failed=lambda p, r: reasons.append(r)
    )
    port = server.start_listening()
    client_ctx = ca.client_context()
    client_leaf.configure_cert(client_ctx)  # leaf + intermediate

    with tls_connect(port, client_ctx) as sock:
        if depth == 1:
            assert echo(sock, b"deep enough") == b"deep enough"
            assert server.handshake_failures == 0
            return
        sock.sendall(b"too deep")
        assert closed_by_server(sock)
    assert wait_for(lambda: server.handshake_failures == 1)
    assert reasons == ["client certificate chain has 1 intermediate CA(s), ssl_verify_depth 0"]
    assert server.tconnxs == 0 and server.handshaking == 0
