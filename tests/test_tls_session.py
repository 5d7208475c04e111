"""The sans-I/O TLS session, driven without a socket: bytes in, events and bytes out."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from certs import TestCA

from yuneta.netio import CLOSED_BY_PEER, HANDSHAKE_DONE, TlsFailed, TlsSession
from yuneta.tls_material import DEFAULT_ECDH_CURVE
from yuneta.ytls import Ytls


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def client_ctx(ca: TestCA) -> ssl.SSLContext:
    return one_rtt_client(ca)  # loads the system CAs: once, not per handshake


def one_rtt_client(ca: TestCA) -> ssl.SSLContext:
    """A client offering the server's one group, so every handshake here is the two client
    flights the tests step through (where the default group is P-256, a client offering
    X25519 first would get a HelloRetryRequest: a third flight)."""
    ctx = ca.client_context()
    ctx.set_ecdh_curve(DEFAULT_ECDH_CURVE)
    return ctx


@pytest.fixture(scope="module")
def server_ctx(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return Ytls(ca.issue(tmp_path_factory.mktemp("srv"), "srv").crypto()).context


class Peer:
    """The other end: a stdlib client SSLObject over memory BIOs."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="srv.test")

    def step(self, data: bytes = b"") -> bytes:
        """Feed what the server sent; returns the client's next bytes."""
        if data:
            self.incoming.write(data)
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def records(self, plaintext: bytes) -> bytes:
        self.obj.write(plaintext)
        return self.outgoing.read()

    def read_all(self, data: bytes) -> bytes:
        self.incoming.write(data)
        got = b""
        while True:
            try:
                got += self.obj.read(65536)
            except ssl.SSLWantReadError:
                return got


def handshake(server: TlsSession, peer: Peer) -> list[object]:
    hello = peer.step()
    events = server.receive(hello)
    assert events == []
    finished = peer.step(server.data_to_send())
    events = server.receive(finished)
    peer.step(server.data_to_send())  # the session tickets
    return events


def test_handshake_then_plaintext_both_ways(ca: TestCA, server_ctx: ssl.SSLContext) -> None:
    server, peer = TlsSession(server_ctx), Peer(one_rtt_client(ca))
    assert handshake(server, peer) == [HANDSHAKE_DONE]
    assert server.version() == "TLSv1.3" and server.cipher()
    assert server.receive(peer.records(b"hello")) == [b"hello"]
    assert server.send(b"world") is None
    assert peer.read_all(server.data_to_send()) == b"world"
    assert server.data_to_send() == b""


@pytest.mark.parametrize("which", ["client-hello", "client-finished", "app-records"])
def test_a_peers_bytes_split_at_every_offset_give_the_same_events(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, which: str
) -> None:
    """Whatever TCP does to the peer's bytes, the session sees the same stream."""
    probe_peer = Peer(client_ctx)
    length = len(probe_peer.step())  # the ClientHello's size, for the offsets below
    if which != "client-hello":
        probe_server = TlsSession(server_ctx)
        probe_server.receive(probe_peer.step())
        second = probe_peer.step(probe_server.data_to_send())
        length = len(second) if which == "client-finished" else 2 * 300
    for offset in range(length + 1):
        server, peer = TlsSession(server_ctx), Peer(client_ctx)
        hello = peer.step()
        if which == "client-hello":
            events = server.receive(hello[:offset]) + server.receive(hello[offset:])
            assert events == [], offset
            finished = peer.step(server.data_to_send())
            assert server.receive(finished) == [HANDSHAKE_DONE], offset
            continue
        server.receive(hello)
        finished = peer.step(server.data_to_send())
        if which == "client-finished":
            events = server.receive(finished[:offset]) + server.receive(finished[offset:])
            assert events == [HANDSHAKE_DONE], offset
            continue
        assert server.receive(finished) == [HANDSHAKE_DONE]
        peer.step(server.data_to_send())
        records = peer.records(b"a" * 150) + peer.records(b"b" * 150)
        offset = min(offset, len(records))
        first, second = server.receive(records[:offset]), server.receive(records[offset:])
        assert b"".join(first + second) == b"a" * 150 + b"b" * 150, offset  # type: ignore[arg-type]
        assert all(isinstance(e, bytes) for e in first + second)


def test_garbage_from_the_peer_is_a_failed_event_with_an_alert_never_an_exception(
    server_ctx: ssl.SSLContext,
) -> None:
    server = TlsSession(server_ctx)
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert events == [TlsFailed("HTTP_REQUEST", in_handshake=True)]
    assert server.receive(b"more") == []  # over: nothing more is parsed
    # A handshake record whose ClientHello is cut short: OpenSSL answers with an alert.
    server = TlsSession(server_ctx)
    (event,) = server.receive(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
    assert isinstance(event, TlsFailed) and event.in_handshake
    assert server.data_to_send()[:1] == b"\x15"  # a TLS alert record


def test_a_corrupted_record_after_the_handshake_fails_the_session(
    ca: TestCA, server_ctx: ssl.SSLContext
) -> None:
    server, peer = TlsSession(server_ctx), Peer(one_rtt_client(ca))
    handshake(server, peer)
    record = bytearray(peer.records(b"secret"))
    record[-1] ^= 0xFF  # the AEAD tag no longer matches
    (event,) = server.receive(bytes(record))
    assert isinstance(event, TlsFailed) and not event.in_handshake
    assert server.send(b"x") is not None  # a failed session sends nothing more


def test_peer_close_notify_is_an_event_and_close_answers_it(
    ca: TestCA, server_ctx: ssl.SSLContext
) -> None:
    server, peer = TlsSession(server_ctx), Peer(one_rtt_client(ca))
    handshake(server, peer)
    with pytest.raises(ssl.SSLWantReadError):
        peer.obj.unwrap()
    assert server.receive(peer.outgoing.read()) == [CLOSED_BY_PEER]
    server.close()
    peer.incoming.write(server.data_to_send())
    peer.obj.unwrap()  # the peer gets our close_notify: a clean shutdown both ways


def test_client_session_handshakes_with_a_server_session(
    ca: TestCA, server_ctx: ssl.SSLContext
) -> None:
    server = TlsSession(server_ctx)
    client = TlsSession(one_rtt_client(ca), server_side=False, server_hostname="srv.test")
    client.start()
    events: list[object] = []
    for _ in range(4):
        events += server.receive(client.data_to_send())
        events += client.receive(server.data_to_send())
    assert events.count(HANDSHAKE_DONE) == 2
    client.send(b"ping")
    assert server.receive(client.data_to_send()) == [b"ping"]


def test_a_client_chain_deeper_than_ssl_verify_depth_fails_the_session(
    ca: TestCA, tmp_path: Path
) -> None:
    client_root = trustme.CA()
    leaf = client_root.create_child_ca().issue_cert("client.test")
    ca_file = tmp_path / "client-root.pem"
    client_root.cert_pem.write_to_path(str(ca_file))
    issued = ca.issue(tmp_path, "srv")
    for depth, expected in ((1, None), (0, "1 intermediate CA(s), ssl_verify_depth 0")):
        ctx = Ytls(
            issued.crypto(ssl_trusted_certificate=str(ca_file), ssl_verify_depth=depth)
        ).context
        server = TlsSession(ctx)
        client_ctx = one_rtt_client(ca)
        leaf.configure_cert(client_ctx)
        peer = Peer(client_ctx)
        server.receive(peer.step())
        events = server.receive(peer.step(server.data_to_send()))
        if expected is None:
            assert events == [HANDSHAKE_DONE]
        else:
            assert len(events) == 1 and isinstance(events[0], TlsFailed)
            assert events[0].in_handshake and expected in events[0].reason
