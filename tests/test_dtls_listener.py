"""C_UDP_S in a yuno, end to end: real certificates, real UDP sockets on 127.0.0.1, DTLS
clients driven by pyOpenSSL and by `openssl s_client -dtls1_2`."""

from __future__ import annotations

import gc
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest
from certs import TestCA
from clients import wait_for
from dtls_helpers import DtlsClient, client_context, rss_kib
from test_c_tcp_s import _bad_material

from yuneta.config import load_config
from yuneta.dtls import DtlsSession
from yuneta.errors import ConfigError
from yuneta.runtime import YunoRuntime
from yuneta.udpio import EchoDatagramHandler
from yuneta.ytls import TlsError


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def yunos():
    made: list[YunoRuntime] = []
    yield made
    for rt in made:
        rt.shutdown()


def make_yuno(yunos, tmp_path, services: list[dict], yuno: dict | None = None) -> YunoRuntime:
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "echo_dtls", "yuno_name": "t1", **(yuno or {})},
                "services": [
                    {
                        "name": s.pop("name"),
                        "gclass": s.pop("gclass", "C_UDP_S"),
                        "as_service": True,
                        "kw": s,
                    }
                    for s in services
                ],
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    yunos.append(rt)
    rt.start()
    return rt


def dtls_listener(yunos, tmp_path, crypto: dict, **kw) -> tuple[YunoRuntime, object, int]:
    rt = make_yuno(
        yunos,
        tmp_path,
        [{"name": "echo_dtls", "url": "udps://127.0.0.1:0", "crypto": crypto, **kw}],
    )
    listener = rt.find_service("echo_dtls")
    return rt, listener, listener.read_attr("lPort")


def attrs(listener) -> dict:
    return listener.command("view-attrs")["data"]


def test_pyopenssl_client_handshakes_echoes_and_sees_the_certificate(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(yunos, tmp_path, issued.crypto())
    assert listener.read_attr("use_ssl") is True and port > 0
    with DtlsClient(port, ca).handshake() as client:
        assert client.serial == issued.serial
        assert client.session.connection.get_protocol_version_name() == "DTLSv1.2"
        assert client.echo(b"hello over dtls") == b"hello over dtls"
        wait_for(lambda: attrs(listener)["sessions"] == 1)
    wait_for(lambda: attrs(listener)["sessions"] == 0)  # our close_notify ended it
    stats = attrs(listener)
    assert stats["tsessions"] == 1 and stats["cookie_rejections"] == 1
    view = listener.command("view-cert")
    assert view["result"] == 0 and view["data"]["serial"] == issued.serial
    assert view["data"]["url"] == "udps://127.0.0.1:0"


def test_openssl_s_client_dtls12_gets_its_line_echoed(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    _, listener, port = dtls_listener(yunos, tmp_path, issued.crypto())
    client = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-dtls1_2",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(ca_file),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello dtls yuneta\n")
        client.stdin.flush()
        out = b""
        deadline = time.monotonic() + 30
        while out.count(b"hello dtls yuneta") < 1 and time.monotonic() < deadline:
            if select.select([client.stdout], [], [], 0.5)[0]:
                chunk = client.stdout.read1(65536)
                if not chunk:
                    break
                out += chunk
        rest, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    text = (out + rest).decode()
    assert "Verify return code: 0 (ok)" in text, err.decode()
    assert "Protocol  : DTLSv1.2" in text or "DTLSv1.2" in text
    assert "hello dtls yuneta" in text.split("Verify return code: 0 (ok)", 1)[1]
    assert attrs(listener)["tsessions"] == 1


def test_hundred_live_sessions_echo_across_ten_reloads_and_new_ones_see_the_new_serial(
    tmp_path, ca, yunos
):
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    first = ca.issue(tmp_path / "c0", "gen0")
    shutil.copy(first.cert_path, live_dir / "srv.crt")
    shutil.copy(first.key_path, live_dir / "srv.key")
    crypto = {
        "ssl_certificate": str(live_dir / "srv.crt"),
        "ssl_certificate_key": str(live_dir / "srv.key"),
    }
    _, listener, port = dtls_listener(yunos, tmp_path, crypto)
    clients = [DtlsClient(port, ca).handshake() for _ in range(100)]
    try:
        assert {c.serial for c in clients} == {first.serial}
        for generation in range(1, 11):
            issued = ca.issue(tmp_path / f"c{generation}", f"gen{generation}")
            shutil.copy(issued.key_path, live_dir / "srv.key")
            shutil.copy(issued.cert_path, live_dir / "srv.crt")
            answer = listener.command("reload-certs")
            assert answer["result"] == 0 and answer["comment"] == "TLS certificates reloaded"
            assert answer["data"]["serial"] == issued.serial
            for i, client in enumerate(clients):
                line = f"gen {generation} client {i}".encode()
                assert client.echo(line) == line
            with DtlsClient(port, ca).handshake() as fresh:
                assert fresh.serial == issued.serial
        assert {c.serial for c in clients} == {first.serial}  # born before every reload
        # The server's side agrees: every live peer still holds the first context (the last
        # fresh client's close_notify is handled by the I/O loop, asynchronously).
        wait_for(lambda: len(listener.server.peers()) == 100)
        peers = listener.server.peers()
        assert len(peers) == 100 and {p.cert_serial for p in peers} == {first.serial}
        assert all(p.is_tls for p in peers)
        del peers  # they hold their sessions, hence the old contexts checked below
        stats = attrs(listener)
        assert stats["reloads"] == 10 and stats["sessions"] >= 100
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: attrs(listener)["sessions"] == 0)

    def only_current_context_left() -> bool:
        gc.collect()
        return listener.ytls.alive_contexts() == 1

    # Old contexts go with their last session.
    wait_for(only_current_context_left)


def test_bad_certificate_matrix_answers_as_the_tcp_listener_does(tmp_path, ca, yunos):
    good = ca.issue(tmp_path / "good", "good")
    other = ca.issue(tmp_path / "other", "other")
    ca.issue(tmp_path / "other", "enc", encrypt_key=b"secret")
    rt = make_yuno(
        yunos,
        tmp_path,
        [
            {
                "name": "tls",
                "gclass": "C_TCP_S",
                "url": "tcps://127.0.0.1:0",
                "crypto": good.crypto(),
            },
            {"name": "dtls", "url": "udps://127.0.0.1:0", "crypto": good.crypto()},
        ],
    )
    tcp, udp = rt.find_service("tls"), rt.find_service("dtls")
    port = udp.read_attr("lPort")
    live = DtlsClient(port, ca).handshake()
    cases = _bad_material(tmp_path, good, other)
    for label, crypto in cases.items():
        tcp_answer = tcp.command("write-attr", {"attr_name": "crypto", "value": crypto})
        udp_answer = udp.command("write-attr", {"attr_name": "crypto", "value": crypto})
        assert udp_answer["result"] == -1 and tcp_answer["result"] == -1, label
        assert udp_answer["comment"] == tcp_answer["comment"], label
        assert udp.read_attr("crypto") == good.crypto(), label
        with DtlsClient(port, ca).handshake() as fresh:
            assert fresh.serial == good.serial, label
        assert live.echo(label.encode()) == label.encode(), label
    assert attrs(udp)["reload_failures"] == len(cases)
    # And through reload-certs on the files themselves: the same words again.
    good.key_path.write_bytes(other.key_path.read_bytes())
    tcp_answer, udp_answer = tcp.command("reload-certs"), udp.command("reload-certs")
    assert udp_answer["result"] == tcp_answer["result"] == -1
    assert (
        udp_answer["comment"] == tcp_answer["comment"] and "does not match" in udp_answer["comment"]
    )
    live.close()


def test_a_bad_certificate_at_start_starts_nothing(tmp_path, ca):
    good = ca.issue(tmp_path / "g", "good")
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "echo_dtls", "yuno_name": "t1"},
                "services": [
                    {
                        "name": "broken",
                        "gclass": "C_UDP_S",
                        "as_service": True,
                        "kw": {
                            "url": "udps://127.0.0.1:0",
                            "crypto": {**good.crypto(), "ssl_certificate": str(tmp_path / "x.crt")},
                        },
                    }
                ],
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    try:
        with pytest.raises(TlsError, match="x.crt: file not found"):
            rt.start()
        assert rt.find_service("broken").running is False
    finally:
        rt.shutdown()


def test_ten_thousand_spoofed_hellos_create_no_session_and_no_memory(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(yunos, tmp_path, issued.crypto())
    hello = DtlsSession.client(client_context(ca), ("x", 0), 0.0).datagrams_to_send()[0]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(1000)]
    try:
        for s in senders:
            s.bind(("127.0.0.1", 0))

        def flood(count: int) -> None:
            """Until the listener has answered `count` more hellos, 100 at a time."""
            target = listener.server.cookie_rejections + count
            for r in range(10 * count // 100):  # a bound: UDP may drop some of ours
                answered = listener.server.cookie_rejections
                if answered >= target:
                    return
                for s in senders[(r % 10) * 100 : (r % 10 + 1) * 100]:
                    s.sendto(hello, ("127.0.0.1", port))
                wanted = min(target, answered + 90)
                deadline = time.monotonic() + 1
                while listener.server.cookie_rejections < wanted and time.monotonic() < deadline:
                    time.sleep(0.001)
                for s in senders[(r % 10) * 100 : (r % 10 + 1) * 100]:  # drain the answers
                    while select.select([s], [], [], 0)[0]:
                        s.recv(2048)
            raise AssertionError("the listener did not answer the hellos")

        flood(1000)  # warm-up
        before_rss = rss_kib()
        flood(10_000)
        grown = rss_kib() - before_rss
    finally:
        for s in senders:
            s.close()
    stats = attrs(listener)
    assert stats["sessions"] == 0 and stats["tsessions"] == 0
    # One DTLS session costs tens of KiB: 1,000 addresses' worth would be 10+ MiB.
    assert grown < 3072, f"RSS grew {grown} KiB"
    with DtlsClient(port, ca).handshake() as client:  # still serving
        assert client.echo() == b"ping"


def test_a_vanished_peer_is_reaped_after_the_idle_timeout(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(yunos, tmp_path, issued.crypto(), idle_timeout=1.0)
    talker = DtlsClient(port, ca).handshake()
    vanisher = DtlsClient(port, ca).handshake()
    wait_for(lambda: attrs(listener)["sessions"] == 2)
    vanisher.close(notify=False)  # gone without close_notify
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        assert talker.echo(b"alive") == b"alive"
        time.sleep(0.2)
    wait_for(lambda: attrs(listener)["sessions"] == 1, timeout=5)
    assert talker.echo(b"still") == b"still"
    talker.close()


class DroppingRelay:
    """A UDP relay on 127.0.0.1 between one client and the listener; `drop(direction, data)`
    decides which datagrams vanish."""

    def __init__(self, server_port: int, drop) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(("127.0.0.1", server_port))
        self.port = self.front.getsockname()[1]
        self.drop = drop
        self.client_addr = None
        self.dropped: list[tuple[str, float]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            for s in select.select([self.front, self.back], [], [], 0.1)[0]:
                data, addr = s.recvfrom(65535)
                direction = "to_server" if s is self.front else "to_client"
                if s is self.front:
                    self.client_addr = addr
                if self.drop(direction, data):
                    self.dropped.append((direction, time.monotonic()))
                elif s is self.front:
                    self.back.send(data)
                elif self.client_addr is not None:
                    self.front.sendto(data, self.client_addr)

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.front.close()
        self.back.close()


def test_a_dropped_handshake_flight_is_retransmitted_and_completes(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(yunos, tmp_path, issued.crypto())
    budget = {"server_flights": 2}

    def drop(direction: str, data: bytes) -> bool:
        # The server's first flight (its ServerHello) vanishes twice.
        if (
            direction == "to_client"
            and len(data) > 13
            and data[13] == 2
            and budget["server_flights"]
        ):
            budget["server_flights"] -= 1
            return True
        return False

    relay = DroppingRelay(port, drop)
    try:
        started = time.monotonic()
        with DtlsClient(relay.port, ca).handshake(timeout=20) as client:
            took = time.monotonic() - started
            assert client.serial == issued.serial and client.echo(b"made it") == b"made it"
    finally:
        relay.close()
    assert [d for d, _ in relay.dropped] == ["to_client", "to_client"]
    assert took >= 0.9  # it needed a retransmission timer, not luck
    assert attrs(listener)["tsessions"] == 1 and attrs(listener)["handshake_failures"] == 0


def test_plain_udp_echoes_keys_peers_and_refuses_cert_commands(tmp_path, yunos):
    rt = make_yuno(
        yunos, tmp_path, [{"name": "plain", "url": "udp://127.0.0.1:0", "idle_timeout": 1.0}]
    )
    listener = rt.find_service("plain")
    port = listener.read_attr("lPort")
    assert (
        listener.command("reload-certs")["comment"] == "Listener is not TLS-enabled or not running"
    )
    assert listener.command("view-cert")["result"] == -1
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, s in enumerate(socks):
            s.settimeout(10)
            s.sendto(f"datagram {i}".encode(), ("127.0.0.1", port))
            assert s.recvfrom(2048) == (f"datagram {i}".encode(), ("127.0.0.1", port))
        assert attrs(listener)["sessions"] == 3 and attrs(listener)["tsessions"] == 3
        assert not any(p.is_tls for p in listener.server.peers())
        assert listener.server.stats()["listening"] is True
        wait_for(lambda: attrs(listener)["sessions"] == 0, timeout=5)  # idle peers forgotten
    finally:
        for s in socks:
            s.close()


def test_only_allowed_ips_drops_other_addresses_before_any_state(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(
        yunos, tmp_path, issued.crypto(), only_allowed_ips=["10.0.0.0/8"]
    )
    with pytest.raises(AssertionError, match="timeout"):
        DtlsClient(port, ca).handshake(timeout=1.5)
    stats = attrs(listener)
    assert stats["rejected"] >= 1 and stats["cookie_rejections"] == 0 and stats["tsessions"] == 0


def test_yuno_reload_certs_and_expiry_status_include_the_udp_listener(tmp_path, ca, yunos):
    tls = ca.issue(tmp_path / "tls", "tls", days=30)
    dtls = ca.issue(tmp_path / "dtls", "dtls", days=5.5)
    rt = make_yuno(
        yunos,
        tmp_path,
        [
            {
                "name": "tls",
                "gclass": "C_TCP_S",
                "url": "tcps://127.0.0.1:0",
                "crypto": tls.crypto(),
            },
            {"name": "dtls", "url": "udps://127.0.0.1:0", "crypto": dtls.crypto()},
            {"name": "plain_udp", "url": "udp://127.0.0.1:0"},
        ],
    )
    answer = rt.root.command("reload-certs")
    assert answer["result"] == 0
    assert answer["comment"] == "echo_dtls^t1: reloaded 2 TLS listener(s), 0 failed"
    assert {d["gobj"] for d in answer["data"]["details"]} == {"tls", "dtls"}
    status = rt.root.command("cert-expiry-status")["data"]
    assert status["listeners"] == 2 and status["min_days_remaining"] == 5
    assert {d["gobj"]: d["serial"] for d in status["details"]}["dtls"] == dtls.serial
    details = rt.root.check_cert_expiry()
    assert {d["gobj"] for d in details} == {"tls", "dtls"}


def test_client_certificates_are_required_when_a_client_ca_is_configured(tmp_path, ca, yunos):
    server = ca.issue(tmp_path / "srv", "dtls")
    clients_ca, strangers = TestCA("dtls clients"), TestCA("strangers")
    crypto = server.crypto(ssl_trusted_certificate=str(clients_ca.write_ca(tmp_path / "ca.pem")))
    _, listener, port = dtls_listener(yunos, tmp_path, crypto)
    member = clients_ca.issue(tmp_path / "c1", "member", client=True)
    with DtlsClient(port, ca, cert=member).handshake() as client:
        assert client.echo(b"member") == b"member"
    for cert in (None, strangers.issue(tmp_path / "c2", "stranger", client=True)):
        with pytest.raises(AssertionError, match="alert|certificate"):
            DtlsClient(port, ca, cert=cert).handshake(timeout=5)
    wait_for(lambda: attrs(listener)["handshake_failures"] == 2)


def test_cert_watch_reloads_the_dtls_listener_when_its_files_change(tmp_path, ca, yunos):
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    old, new = ca.issue(tmp_path / "old", "old"), ca.issue(tmp_path / "new", "new")
    shutil.copy(old.cert_path, live_dir / "srv.crt")
    shutil.copy(old.key_path, live_dir / "srv.key")
    crypto = {
        "ssl_certificate": str(live_dir / "srv.crt"),
        "ssl_certificate_key": str(live_dir / "srv.key"),
    }
    _, listener, port = dtls_listener(
        yunos, tmp_path, crypto, cert_watch=True, cert_watch_debounce=0.2
    )
    live = DtlsClient(port, ca).handshake()
    shutil.copy(new.key_path, live_dir / "srv.key")
    shutil.copy(new.cert_path, live_dir / "srv.crt")

    def fresh_serial() -> str:
        with DtlsClient(port, ca).handshake() as client:
            return client.serial

    wait_for(lambda: fresh_serial() == new.serial, timeout=20, interval=0.1)
    assert live.echo(b"kept") == b"kept" and live.serial == old.serial
    assert attrs(listener)["reloads"] >= 1
    live.close()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"url": "udps://127.0.0.1:0", "mtu": 100}, "attribute 'mtu': 100 is not between 256"),
        ({"url": "tcps://127.0.0.1:0"}, "attribute 'url'"),
        ({"url": "udp://127.0.0.1:0", "protocol": "nope"}, "unknown protocol 'nope'"),
    ],
)
def test_a_bad_listener_config_is_refused_naming_the_attribute(tmp_path, kw, words):
    with pytest.raises(ConfigError, match=words):
        load_config(
            [],
            extra=[
                {
                    "environment": {"work_dir": str(tmp_path / "work")},
                    "yuno": {"yuno_role": "echo_dtls", "yuno_name": "t1"},
                    "services": [{"name": "l", "gclass": "C_UDP_S", "kw": kw}],
                }
            ],
        )


class Exploding(EchoDatagramHandler):
    """Echoes, except that b"boom" raises (a protocol bug)."""

    __slots__ = ()

    def on_data(self, peer, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("protocol bug")
        super().on_data(peer, data)


def test_a_failing_protocol_ends_its_own_peer_only(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    _, listener, port = dtls_listener(
        yunos, tmp_path, issued.crypto(), protocol="test_dtls_listener:Exploding"
    )
    victim, bystander = DtlsClient(port, ca).handshake(), DtlsClient(port, ca).handshake()
    wait_for(lambda: attrs(listener)["sessions"] == 2)
    victim.session.send(b"boom")
    victim._flush()
    wait_for(lambda: attrs(listener)["sessions"] == 1)
    assert bystander.echo(b"unharmed") == b"unharmed"
    with pytest.raises(AssertionError, match="closed by peer"):
        victim.echo(b"anyone?", timeout=3)  # it got our close_notify
    bystander.close()


def test_max_sessions_bounds_peers_and_handshakes(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    rt = make_yuno(
        yunos,
        tmp_path,
        [
            {
                "name": "dtls",
                "url": "udps://127.0.0.1:0",
                "crypto": issued.crypto(),
                "max_sessions": 2,
            },
            {"name": "plain", "url": "udp://127.0.0.1:0", "max_sessions": 2},
        ],
    )
    dtls, plain = rt.find_service("dtls"), rt.find_service("plain")
    first, second = (DtlsClient(dtls.read_attr("lPort"), ca).handshake() for _ in range(2))
    with pytest.raises(AssertionError, match="timeout"):
        DtlsClient(dtls.read_attr("lPort"), ca).handshake(timeout=1.0)
    assert attrs(dtls)["refused"] >= 1 and attrs(dtls)["sessions"] == 2
    assert first.echo(b"one") == b"one" and second.echo(b"two") == b"two"
    first.close()
    wait_for(lambda: attrs(dtls)["sessions"] == 1)
    with DtlsClient(dtls.read_attr("lPort"), ca).handshake() as third:  # room again
        assert third.echo(b"three") == b"three"
    second.close()

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in socks:
            s.settimeout(1.0)
            s.sendto(b"hi", ("127.0.0.1", plain.read_attr("lPort")))
        answered = []
        for s in socks:
            try:
                answered.append(s.recv(100))
            except TimeoutError:
                pass
        assert answered == [b"hi", b"hi"] and attrs(plain)["refused"] == 1
    finally:
        for s in socks:
            s.close()


def test_each_listener_gclass_checks_crypto_as_its_reload_does(tmp_path, ca):
    from gclasses.c_tcp_s import CTcpS
    from gclasses.c_udp_s import CUdpS

    good = ca.issue(tmp_path / "good", "good")
    assert CUdpS.check_crypto(good.crypto()).serial == good.serial
    assert CTcpS.check_crypto(good.crypto()).serial == good.serial
    assert CUdpS.check_crypto is not CTcpS.check_crypto
    with pytest.raises(TlsError, match="DTLS 1.2"):  # TLS 1.3 only: fine for TCP, not DTLS
        CUdpS.check_crypto(good.crypto(ssl_min_version="TLSv1.3"))
    assert CTcpS.check_crypto(good.crypto(ssl_min_version="TLSv1.3")).serial == good.serial


def test_a_port_in_use_is_a_clear_start_failure(tmp_path, yunos):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = load_config(
            [],
            extra=[
                {
                    "environment": {"work_dir": str(tmp_path / "work")},
                    "yuno": {"yuno_role": "echo_dtls", "yuno_name": "t1"},
                    "services": [
                        {"name": "l", "gclass": "C_UDP_S", "kw": {"url": f"udp://127.0.0.1:{port}"}}
                    ],
                }
            ],
        )
        rt = YunoRuntime(config)
        rt.build()
        yunos.append(rt)
        with pytest.raises(
            ConfigError, match=f"url: cannot listen on udp://127.0.0.1:{port}: .*in use"
        ):
            rt.start()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_peers_get_cookies_and_sessions_too(tmp_path, ca, yunos):
    issued = ca.issue(tmp_path / "srv", "dtls")
    rt = make_yuno(
        yunos, tmp_path, [{"name": "v6", "url": "udps://[::1]:0", "crypto": issued.crypto()}]
    )
    listener = rt.find_service("v6")
    with DtlsClient(listener.read_attr("lPort"), ca, host="::1").handshake() as client:
        assert client.echo(b"over ipv6") == b"over ipv6"
    stats = attrs(listener)
    assert stats["tsessions"] == 1 and stats["cookie_rejections"] == 1


def test_repeated_handshake_failures_are_counted_not_logged_one_by_one(
    tmp_path, ca, yunos, yuneta_logs
):
    issued = ca.issue(tmp_path / "srv", "dtls")
    # A listener name of its own: the log counts repeats per (gobj, message, source).
    rt = make_yuno(
        yunos,
        tmp_path,
        [{"name": "repeats", "url": "udps://127.0.0.1:0", "crypto": issued.crypto()}],
    )
    listener = rt.find_service("repeats")
    port = listener.read_attr("lPort")
    stranger = TestCA("not trusted by the client")
    for _ in range(6):  # the client refuses the server's chain: an alert, a failed handshake
        with pytest.raises(AssertionError, match="certificate verify failed"):
            DtlsClient(port, stranger).handshake(timeout=5)
    wait_for(lambda: attrs(listener)["handshake_failures"] == 6)
    wait_for(lambda: yuneta_logs.find(msg="DTLS handshake failed"))
    time.sleep(0.2)
    lines = yuneta_logs.find(msg="DTLS handshake failed")
    assert len(lines) == 3 and all(r["reason"] for r in lines)  # log.BURST, then counted
