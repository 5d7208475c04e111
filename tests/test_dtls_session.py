"""The sans-I/O DTLS layer (yuneta.dtls) without a socket: a DtlsServer and pyOpenSSL client
sessions exchanging datagrams in memory, real certificates, OpenSSL's real timers."""

from __future__ import annotations

import random
import time

import pytest
from certs import TestCA
from dtls_helpers import client_context, rss_kib, server_context

from yuneta.dtls import (
    CookieJar,
    DataReceived,
    DtlsServer,
    DtlsSession,
    HandshakeDone,
    SessionClosed,
    is_client_hello,
    pack_records,
)

PEER = ("127.0.0.1", 40000)


def fixed(ctx):
    """A context provider that always gives `ctx` (no reload)."""
    return lambda: ctx


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def issued(ca, tmp_path_factory):
    return ca.issue(tmp_path_factory.mktemp("srv"), "dtls-server")


def pump(server, client, now, *, peer=PEER, drop=lambda direction, datagram: False):
    """Move datagrams both ways until quiet; returns the server's (session, event) pairs."""
    events, client_events = [], []
    for _ in range(50):
        to_server = client.datagrams_to_send()
        to_client = [d for d, addr in server.datagrams_to_send() if addr == peer]
        if not to_server and not to_client:
            break
        for d in to_server:
            if not drop("to_server", d):
                events += server.receive(peer, d, now)
        for d in to_client:
            if not drop("to_client", d):
                client_events += client.receive_datagram(d, now)
    return events, client_events


def connect(server, ca, now=0.0, *, peer=PEER, mtu=1200):
    client = DtlsSession.client(client_context(ca), peer, now, mtu=mtu)
    events, client_events = pump(server, client, now, peer=peer)
    return client, events, client_events


def test_handshake_needs_the_cookie_then_echoes(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    client = DtlsSession.client(client_context(ca), PEER, 0.0)
    first = client.datagrams_to_send()
    assert len(first) == 1 and is_client_hello(first[0])
    # The cookie-less ClientHello: one HelloVerifyRequest back, no session.
    assert server.receive(PEER, first[0], 0.0) == []
    (reply, addr), *rest = server.datagrams_to_send()
    assert addr == PEER and not rest and reply[13] == 3  # handshake type hello_verify_request
    assert server.sessions == {} and server.cookie_rejections == 1
    client.receive_datagram(reply, 0.0)
    events, client_events = pump(server, client, 0.0)
    (session, done), *_ = events
    assert isinstance(done, HandshakeDone) and done.version == "DTLSv1.2"
    assert done.cert_serial == issued.serial and session.is_open
    assert [type(e) for e in client_events] == [HandshakeDone]
    assert client_events[0].cert_serial == issued.serial
    assert server.stats()["sessions"] == 1 and server.tsessions == 1

    client.send(b"hello dtls")
    events, _ = pump(server, client, 0.0)
    assert events == [(session, DataReceived(b"hello dtls"))]
    server.send(session, b"back")
    _, client_events = pump(server, client, 0.0)
    assert client_events == [DataReceived(b"back")]


def test_every_datagram_fits_the_mtu_and_long_messages_split_into_records(ca, tmp_path):
    # An RSA chain makes the server's flight far longer than the MTU.
    rsa = ca.issue(tmp_path, "rsa-server", key_type="rsa")
    mtu = 300
    server = DtlsServer(fixed(server_context(rsa)), mtu=mtu)
    sizes = []

    def watch(direction, datagram):
        sizes.append(len(datagram))
        return False

    client = DtlsSession.client(client_context(ca), PEER, 0.0, mtu=mtu)
    events, client_events = pump(server, client, 0.0, drop=watch)
    assert any(isinstance(e, HandshakeDone) for _, e in events)
    assert max(sizes) <= mtu and len(sizes) > 8  # the RSA flight really was cut up
    session = server.sessions[PEER]
    message = bytes(random.Random(1).randbytes(3000))
    sizes.clear()
    server.send(session, message)
    _, client_events = pump(server, client, 0.0, drop=watch)
    assert max(sizes) <= mtu and len(sizes) >= 3000 // mtu
    assert b"".join(e.data for e in client_events) == message


def test_pack_records_keeps_records_whole_and_datagrams_within_the_mtu():
    records = [bytes([23, 254, 253]) + bytes(8) + n.to_bytes(2) + bytes(n) for n in (50, 60, 70)]
    blob = b"".join(records)
    assert pack_records(blob, 1000) == [blob]
    assert pack_records(blob, 140) == [records[0] + records[1], records[2]]
    assert pack_records(blob, 20) == records  # too large records travel alone
    assert pack_records(b"", 100) == []


def test_a_dropped_flight_is_retransmitted_with_backoff_and_completes(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    client = DtlsSession.client(client_context(ca), PEER, time.monotonic())
    server_flights: list[float] = []
    state = {"drop": 2}

    def drop(direction, datagram):
        # Drop the server's first flight (ServerHello...) twice, and the client's own
        # retransmissions meanwhile, so only the server's timer can bring it through.
        if direction == "to_client" and datagram[13] == 2:  # ServerHello
            server_flights.append(time.monotonic())
            if state["drop"]:
                state["drop"] -= 1
                return True
        return direction == "to_server" and state["drop"] and not is_client_hello(datagram)

    start = time.monotonic()
    pump(server, client, start, drop=drop)
    assert server.sessions[PEER].state == "handshaking" and len(server_flights) == 1
    done = False
    while not done and time.monotonic() - start < 12:
        deadline = server.next_deadline()
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
        now = time.monotonic()
        server.handle_timeout(now)
        events, _ = pump(server, client, now, drop=drop)
        done = any(isinstance(e, HandshakeDone) for _, e in events)
    assert done and client.is_open
    assert len(server_flights) >= 3
    first, second = server_flights[1] - server_flights[0], server_flights[2] - server_flights[1]
    # OpenSSL's timer: 1 s, then doubled (upper bounds loose: the machine is shared).
    assert 0.8 <= first <= 3.0 and 1.7 <= second <= 6.0 and second >= first + 0.5, (first, second)


def test_idle_peer_is_reaped_and_handshakes_time_out(ca, issued):
    server = DtlsServer(fixed(server_context(issued)), idle_timeout=30, handshake_timeout=5)
    client, events, _ = connect(server, ca, 100.0)
    assert server.sessions
    assert server.handle_timeout(110.0) == []  # not idle yet
    client.send(b"still here")
    pump(server, client, 125.0)
    assert server.handle_timeout(150.0) == []  # activity at 125 moved the deadline
    assert server.next_deadline() <= 156.0
    (session, closed), *rest = server.handle_timeout(156.0)
    assert closed == SessionClosed("idle timeout") and not rest
    assert server.sessions == {} and server.next_deadline() is None

    # A peer that passes the cookie and then vanishes mid-handshake.
    stalled = DtlsSession.client(client_context(ca), PEER, 200.0)
    pump(server, stalled, 200.0, drop=lambda direction, d: direction == "to_client" and d[13] == 2)
    assert server.stats()["handshaking"] == 1
    (session, failed), *_ = server.handle_timeout(206.0)
    assert failed == SessionClosed("handshake timeout", handshake_failed=True)
    assert server.sessions == {} and server.handshake_failures == 1


def test_spoofed_client_hellos_create_no_session_and_no_memory(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    hello = DtlsSession.client(client_context(ca), PEER, 0.0).datagrams_to_send()[0]
    for port in range(1000):  # warm up allocator pools
        server.receive(("10.0.0.1", port), hello, 0.0)
        server.datagrams_to_send()
    before = rss_kib()
    for i in range(10_000):
        server.receive((f"10.{i % 200}.0.1", 1024 + i), hello, 0.0)
        assert len(server.datagrams_to_send()) == 1
    grown = rss_kib() - before
    assert server.sessions == {} and server.tsessions == 0
    assert server.cookie_rejections == 11_000
    # A session costs tens of KiB (OpenSSL's SSL object and buffers): 10,000 would be 100+ MiB.
    assert grown < 2048, f"RSS grew {grown} KiB"


def test_a_forged_or_foreign_cookie_is_refused(ca, issued):
    jar = CookieJar()
    server = DtlsServer(fixed(server_context(issued)), cookies=jar)
    client = DtlsSession.client(client_context(ca), PEER, 0.0)
    server.receive(PEER, client.datagrams_to_send()[0], 0.0)
    ((hvr, _),) = server.datagrams_to_send()
    client.receive_datagram(hvr, 0.0)
    hello_with_cookie = client.datagrams_to_send()[0]
    # The same cookie from another address is refused statelessly.
    assert server.receive(("127.0.0.2", 40000), hello_with_cookie, 0.0) == []
    assert server.sessions == {} and server.cookie_rejections == 2
    server.datagrams_to_send()
    # A cookie with a flipped bit: refused too.
    tampered = bytearray(hello_with_cookie)
    cookie_at = 13 + 12 + 2 + 32 + 1 + tampered[13 + 12 + 2 + 32] + 1
    tampered[cookie_at] ^= 1
    assert server.receive(PEER, bytes(tampered), 0.0) == [] and server.sessions == {}


def test_cookie_secret_rotates_and_an_old_cookie_expires():
    clock = [0.0]
    jar = CookieJar(lifetime=60, clock=lambda: clock[0])
    cookie = jar.cookie(PEER)
    assert jar.verify(PEER, cookie) and not jar.verify(("127.0.0.1", 40001), cookie)
    clock[0] = 70  # rotated once: the previous secret still counts
    assert jar.verify(PEER, cookie) and jar.cookie(PEER) != cookie
    clock[0] = 140  # rotated twice
    assert not jar.verify(PEER, cookie)
    fresh = jar.cookie(PEER)
    clock[0] = 1000  # a long silence: neither secret of that time comes back
    assert not jar.verify(PEER, fresh) and jar.verify(PEER, jar.cookie(PEER))


def test_close_notify_ends_the_session_on_both_sides(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    client, _, _ = connect(server, ca)
    client.close()
    events, _ = pump(server, client, 0.0)
    assert [e for _, e in events] == [SessionClosed("closed by peer")]
    assert server.sessions == {}


def test_new_sessions_get_the_new_context_and_live_ones_keep_theirs(ca, issued, tmp_path):
    other = ca.issue(tmp_path, "renewed")
    current = [server_context(issued)]
    server = DtlsServer(lambda: current[0])
    old_client, events, _ = connect(server, ca, peer=PEER)
    current[0] = server_context(other)
    new_client, new_events, _ = connect(server, ca, peer=("127.0.0.1", 40001))
    assert events[0][1].cert_serial == issued.serial
    assert new_events[0][1].cert_serial == other.serial
    old_client.send(b"still old")
    got, _ = pump(server, old_client, 0.0)
    assert got == [(server.sessions[PEER], DataReceived(b"still old"))]


def test_a_restarted_peer_replaces_its_session_only_with_a_valid_cookie(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    _, _, _ = connect(server, ca)
    old = server.sessions[PEER]
    restarted = DtlsSession.client(client_context(ca), PEER, 1.0)
    hello = restarted.datagrams_to_send()
    assert server.receive(PEER, hello[0], 1.0) == []  # HVR, the old session untouched
    assert server.sessions[PEER] is old
    ((hvr, _),) = server.datagrams_to_send()
    restarted.receive_datagram(hvr, 1.0)
    events, _ = pump(server, restarted, 1.0)
    assert (old, SessionClosed("peer started a new session")) in events
    assert server.sessions[PEER] is not old and server.sessions[PEER].is_open


def test_garbage_never_raises_and_never_opens_a_session(ca, issued):
    server = DtlsServer(fixed(server_context(issued)))
    client, _, _ = connect(server, ca)
    hello = DtlsSession.client(client_context(ca), PEER, 0.0).datagrams_to_send()[0]
    rng = random.Random(7)
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:  # a mangled ClientHello
            data = bytearray(hello)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[: rng.randrange(14, len(data) + 1)])
        else:  # an application-data-looking record
            data = bytes([23, 254, 253, 0, 1]) + rng.randbytes(rng.randrange(8, 200))
        server.receive(("10.1.1.1", 5000 + i), data, 0.0)
        server.receive(PEER, data if kind != 1 else data[:13], 0.0)  # into the live session
        server.datagrams_to_send()
    assert list(server.sessions) == [PEER] and server.tsessions == 1
    client.send(b"survived")
    events, _ = pump(server, client, 0.0)
    assert [e for _, e in events] == [DataReceived(b"survived")]


def test_a_wrong_certificate_fails_the_handshake_and_is_counted(issued):
    stranger = TestCA("someone else")
    server = DtlsServer(fixed(server_context(issued)))
    client = DtlsSession.client(client_context(stranger), PEER, 0.0)
    events, client_events = pump(server, client, 0.0)
    assert isinstance(client_events[-1], SessionClosed) and client_events[-1].handshake_failed
    assert "certificate verify failed" in client_events[-1].reason
    ((_, closed),) = events
    assert closed.handshake_failed and server.handshake_failures == 1 and server.sessions == {}


def test_mtu_below_the_dtls_minimum_is_refused(issued):
    with pytest.raises(ValueError, match="mtu 100"):
        DtlsServer(fixed(server_context(issued)), mtu=100)
