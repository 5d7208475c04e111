"""netio: the yuno's I/O loop, TLS listeners and hot certificate swaps, over real sockets."""

from __future__ import annotations

import gc
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestCA, serial_of_peer

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


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock)


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server ended the connection (EOF, reset or a TLS alert)."""
    try:
        return sock.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_plain_tcp_echo_and_counters(ioloop: IOLoop) -> None:
    opened: list[Connection] = []
    closed: list[Connection] = []
    server = TcpServer(ioloop, on_connection_open=opened.append,
                       on_connection_close=lambda c, exc: closed.append(c))
    port = server.start_listening()
    assert port > 0 and server.listening and not server.is_tls
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert echo(s, b"hello yuneta") == b"hello yuneta"
        assert server.connxs == 1 and server.tconnxs == 1
    assert wait_for(lambda: server.connxs == 0)
    assert server.tconnxs == 1 and len(opened) == 1 and closed == opened


def test_tls_session_handshakes_and_echoes_large_and_small(ioloop: IOLoop, ca: TestCA,
                                                           tmp_path: Path) -> None:
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


def test_failed_reload_keeps_serving_the_old_certificate(ioloop: IOLoop, ca: TestCA,
                                                         tmp_path: Path) -> None:
    a, other = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "other")
    ytls = Ytls(a.crypto())
    server = TcpServer(ioloop, tls=ytls.get_context)
    port = server.start_listening()
    with pytest.raises(Exception, match="does not match"):
        ytls.reload({"ssl_certificate": str(a.cert_path),
                     "ssl_certificate_key": str(other.key_path)})
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
    server = TcpServer(ioloop, tls=ytls.get_context,
                       on_handshake_failed=lambda peer, reason: failures.append((peer, reason)))
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
        ytls.reload(issued.crypto(ssl_trusted_certificate=str(clients_2.write_ca(tmp_path / "c2.pem"))))
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


def test_handshake_failures_are_counted_and_reported(ioloop: IOLoop, ca: TestCA,
                                                     tmp_path: Path) -> None:
    reasons: list[str] = []
    ytls = Ytls(ca.issue(tmp_path, "srv").crypto(ssl_min_version="TLSv1.3"))
    server = TcpServer(ioloop, tls=ytls.get_context,
                       on_handshake_failed=lambda peer, reason: reasons.append(reason))
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


def test_half_open_client_is_dropped_after_handshake_timeout(ioloop: IOLoop, ca: TestCA,
                                                             tmp_path: Path) -> None:
    reasons: list[str] = []
    ytls = Ytls(ca.issue(tmp_path, "srv").crypto())
    server = TcpServer(ioloop, tls=ytls.get_context, handshake_timeout=0.3,
                       on_handshake_failed=lambda peer, reason: reasons.append(reason))
    port = server.start_listening()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert wait_for(lambda: server.handshaking == 1)
        assert closed_by_server(s)
    assert reasons == ["handshake timeout"] and server.handshaking == 0


def test_openssl_s_client_handshakes_and_gets_echo(ioloop: IOLoop, ca: TestCA,
                                                   tmp_path: Path) -> None:
    issued = ca.issue(tmp_path, "srv")
    ytls = Ytls(issued.crypto())
    port = TcpServer(ioloop, tls=ytls.get_context).start_listening()
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
         "-CAfile", str(ca.write_ca(tmp_path / "ca.pem"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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


def test_no_drop_while_reloading_under_500_tls_connections(ioloop: IOLoop, ca: TestCA,
                                                           tmp_path: Path) -> None:
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
    while thread.is_alive() or rounds < 3:
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
