"""The private CPython shortcuts: self-tested at import, and the public fallbacks serve alike."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA
from clients import BioTlsClient, echo, tls_connect, wait_for

from yuneta import sslcompat
from yuneta.netio import Connection, IOLoop, TcpServer
from yuneta.netio.tls_connection import _LONE_PROBE, SocketTlsConnection
from yuneta.ytls import Ytls


@pytest.fixture
def public_only() -> Iterator[None]:
    sslcompat.use_public()
    try:
        yield
    finally:
        sslcompat.use_private()


def test_the_self_tests_pass_on_this_cpython() -> None:
    assert sslcompat.PRIVATE == {"wrap_bio": True, "accept": True, "socket_bio": True}
    assert sslcompat.HAS_VERIFIED_CHAIN
    obj = sslcompat.wrap_server(
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.MemoryBIO(), ssl.MemoryBIO()
    )
    assert not isinstance(obj, ssl.SSLObject)  # the C object itself


def test_a_tls_listener_runs_its_sessions_on_the_socket_itself(tmp_path: Path) -> None:
    ca = TestCA()
    ioloop = IOLoop()
    ioloop.start()
    try:
        ytls = Ytls(ca.issue(tmp_path, "srv").crypto())
        server = TcpServer(ioloop, tls=ytls.get_context)
        with tls_connect(server.start_listening(), ca.client_context()) as sock:
            assert echo(sock, b"direct") == b"direct"
            conn = server.connections()[0]
            assert type(conn) is SocketTlsConnection
            assert conn.context is ytls.context  # selected through its owner at the hello
    finally:
        ioloop.stop()


def test_the_public_fallbacks_serve_tls_and_count_like_the_shortcuts(
    public_only: None, tmp_path: Path
) -> None:
    ca = TestCA()
    assert sslcompat.PRIVATE == {"wrap_bio": False, "accept": False, "socket_bio": False}
    ioloop = IOLoop()
    ioloop.start()
    try:
        server = TcpServer(ioloop, tls=Ytls(ca.issue(tmp_path, "srv").crypto()).get_context)
        port = server.start_listening()
        with tls_connect(port, ca.client_context()) as sock:
            assert echo(sock, b"public") == b"public"
            conn = server.connections()[0]
            assert conn.tls_version == "TLSv1.3" and conn.cert_serial
            assert type(conn) is Connection  # a TlsSession over memory BIOs
        assert wait_for(lambda: server.connxs == 0)
        assert server.tconnxs == 1 and server.handshake_failures == 0
    finally:
        ioloop.stop()


@pytest.mark.parametrize(
    "only",
    [("socket_bio",), ("wrap_bio", "accept"), ("accept",), ("wrap_bio", "socket_bio")],
    ids=lambda only: "+".join(only),
)
def test_each_shortcut_serves_without_the_others(tmp_path: Path, only: tuple[str, ...]) -> None:
    """Any one self-test may fail on some Python while the others pass: every mix serves."""
    ca = TestCA()
    sslcompat.use_private(only=only)
    ioloop = IOLoop()
    ioloop.start()
    try:
        assert {name for name, used in sslcompat.PRIVATE.items() if used} == set(only)
        server = TcpServer(ioloop, tls=Ytls(ca.issue(tmp_path, "srv").crypto()).get_context)
        with tls_connect(server.start_listening(), ca.client_context()) as sock:
            assert echo(sock, b"mixed") == b"mixed"
            conn = server.connections()[0]
            direct = "socket_bio" in only
            assert type(conn) is (SocketTlsConnection if direct else Connection)
        assert wait_for(lambda: server.connxs == 0)
        assert server.tconnxs == 1 and server.handshake_failures == 0
    finally:
        ioloop.stop()
        sslcompat.use_private()


def test_an_unknown_shortcut_is_refused_and_any_iterable_names_them() -> None:
    with pytest.raises(ValueError, match="unknown sslcompat shortcut.*nope"):
        sslcompat.use_private(only=("accept", "nope"))
    assert sslcompat.PRIVATE == {"wrap_bio": True, "accept": True, "socket_bio": True}
    try:
        sslcompat.use_private(only=(name for name in ["accept"]))  # read once, not twice
        assert sslcompat.PRIVATE == {"wrap_bio": False, "accept": True, "socket_bio": False}
    finally:
        sslcompat.use_private()


def test_records_that_arrive_together_are_each_served_in_order(tmp_path: Path) -> None:
    """A socket-BIO session may stop after one record; the ones behind it in the socket
    keep it readable, and the (level-triggered) poller brings them in turn."""
    ca = TestCA()
    ioloop = IOLoop()
    ioloop.start()
    try:
        server = TcpServer(ioloop, tls=Ytls(ca.issue(tmp_path, "srv").crypto()).get_context)
        client = BioTlsClient(server.start_listening(), ca.client_context())
        try:
            chunks = [f"record-{i};".encode() for i in range(40)]
            client.sendall(*chunks)
            expected = b"".join(chunks)
            assert client.receive(len(expected)) == expected
            client.sendall(b"x" * 16384, b"y" * 16384, b"z")  # full records too
            assert client.receive(32769) == b"x" * 16384 + b"y" * 16384 + b"z"
            assert type(server.connections()[0]) is SocketTlsConnection
        finally:
            client.close()
    finally:
        ioloop.stop()


def _profile_loop(ioloop: IOLoop, hook: Any) -> None:
    """Run `hook` as the profiler of the loop's thread (None: stop)."""

    async def set_profile() -> None:
        sys.setprofile(hook)

    ioloop.run_sync(set_profile(), timeout=10)


def test_a_peer_that_waits_for_each_answer_costs_no_failed_read_per_message(
    tmp_path: Path,
) -> None:
    """After a record, reading on would fail (EAGAIN) and raise SSLWantReadError: one syscall
    and one exception per message for nothing. Once a wakeup has shown a lone record, the
    next ones stop after theirs, and only every _LONE_PROBE-th reads on to look."""
    ca = TestCA()
    ioloop = IOLoop()
    ioloop.start()
    failed_reads: list[str] = []

    def profile(_frame: Any, event: str, arg: Any) -> None:
        if event == "c_exception" and getattr(arg, "__name__", "") == "read":
            failed_reads.append(type(getattr(arg, "__self__", None)).__name__)

    try:
        server = TcpServer(ioloop, tls=Ytls(ca.issue(tmp_path, "srv").crypto()).get_context)
        with tls_connect(server.start_listening(), ca.client_context()) as sock:
            assert echo(sock, b"first") == b"first"  # the handshake's reads are behind us
            assert type(server.connections()[0]) is SocketTlsConnection
            _profile_loop(ioloop, profile)
            for i in range(40):
                message = f"message {i}".encode()
                assert echo(sock, message) == message
            _profile_loop(ioloop, None)
        # Reading on after every message: 40. One probe per _LONE_PROBE wakeups: 5.
        assert 1 <= len(failed_reads) <= 40 // _LONE_PROBE + 1
        assert set(failed_reads) == {"_SSLSocket"}
    finally:
        ioloop.stop()


def test_a_peer_that_streams_records_is_read_out_in_few_wakeups(tmp_path: Path) -> None:
    """A session that stops after one record would take one poll per record of a burst; the
    probe finds the burst and the session reads it out in the same wakeup."""
    ca = TestCA()
    ioloop = IOLoop()
    ioloop.start()
    wakeups: list[int] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == "_on_readable":
            if code.co_filename.endswith("tls_connection.py"):
                wakeups.append(1)

    try:
        server = TcpServer(ioloop, tls=Ytls(ca.issue(tmp_path, "srv").crypto()).get_context)
        client = BioTlsClient(server.start_listening(), ca.client_context())
        try:
            client.sendall(b"first")
            assert client.receive(5) == b"first"
            client.sendall(b"second")  # a lone record: the session stops after each
            assert client.receive(6) == b"second"
            _profile_loop(ioloop, profile)
            chunks = [f"burst-{i};".encode() for i in range(100)]
            client.sendall(*chunks)
            expected = b"".join(chunks)
            assert client.receive(len(expected)) == expected
            _profile_loop(ioloop, None)
        finally:
            client.close()
        assert 1 <= len(wakeups) <= _LONE_PROBE + 1  # not one per record (100)
    finally:
        ioloop.stop()
