"""The private CPython shortcuts: self-tested at import, and the public fallbacks serve alike."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestCA
from clients import echo, tls_connect, wait_for

from yuneta import sslcompat
from yuneta.netio import Connection, IOLoop, TcpServer
from yuneta.netio.tls_connection import SocketTlsConnection
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
