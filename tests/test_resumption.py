"""TLS sessions resume across certificate reloads, and `forget-sessions=1` ends that.

The session cache and ticket keys live on the listener's session context, not on the
certificate's, so a reload keeps them; clients here are Python's `ssl` (sessions kept by the
client object) and `openssl s_client` (sessions in files).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA
from clients import echo, wait_for

from yuneta.config import load_config
from yuneta.netio import Connection, IOLoop, TcpServer
from yuneta.runtime import YunoRuntime
from yuneta.ytls import Ytls

pytestmark = pytest.mark.timeout(120)

KINDS = ["tls1.2-ticket", "tls1.2-session-id", "tls1.3-ticket"]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    loop.start()
    yield loop
    loop.stop()


def client_context(ca: TestCA, kind: str) -> ssl.SSLContext:
    ctx = ca.client_context()
    if kind.startswith("tls1.2"):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if kind == "tls1.2-session-id":
        ctx.options |= ssl.OP_NO_TICKET  # the server can only offer a session id
    return ctx


def connect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[Any, bool]:
    """One connection: echo once (TLS 1.3 tickets come after the handshake), close without
    a close_notify; returns the session to resume and whether this one was resumed."""
    with ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), session=session
    ) as sock:
        assert echo(sock, b"x") == b"x"
        return sock.session, sock.session_reused


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_resumes_after_reloads_and_not_after_forget_sessions(
    ioloop: IOLoop, ca: TestCA, tmp_path: Path, kind: str
) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    resumed_by_server: list[bool] = []

    def opened(conn: Connection) -> None:
        resumed_by_server.append(conn.session_reused)

    server = TcpServer(ioloop, tls=ytls.get_context, on_connection_open=opened)
    port = server.start_listening()
    ctx = client_context(ca, kind)

    session, reused = connect(port, ctx, None)
    assert not reused
    if kind == "tls1.2-session-id":
        assert session.has_ticket is False and session.id
    else:
        assert session.has_ticket
    assert connect(port, ctx, session)[1]
    ytls.reload(b.crypto())
    ytls.reload(a.crypto())
    assert connect(port, ctx, session)[1]  # resumed across two reloads
    _, reused_new = connect(port, ctx, None)
    assert not reused_new
    ytls.reload(b.crypto(), forget_sessions=True)
    fresh, reused = connect(port, ctx, session)
    assert not reused  # a full handshake: every earlier session is forgotten
    assert connect(port, ctx, fresh)[1]  # and the new one resumes again
    assert resumed_by_server == [False, True, True, False, False, True]
    assert server.handshake_failures == 0


def s_client(port: int, ca_file: Path, *args: str) -> str:
    """Run `openssl s_client`, echo one line (TLS 1.3 tickets arrive after the handshake,
    so it must read before leaving), then quit; its output."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        lines = []
        while (line := proc.stdout.readline()) and line != b"ping\n":
            lines.append(line)
        proc.stdin.write(b"Q\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=30)
        return (b"".join(lines) + out).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_resumes_a_stored_session_after_reload_certs_on_the_yuno(
    ca: TestCA, tmp_path: Path, version: str
) -> None:
    a, b = ca.issue(tmp_path / "a", "a"), ca.issue(tmp_path / "b", "b")
    live = tmp_path / "live"
    live.mkdir()
    crypto = {
        "ssl_certificate": str(live / "srv.crt"),
        "ssl_certificate_key": str(live / "srv.key"),
    }

    def install(issued: object) -> None:
        (live / "srv.crt").write_bytes(issued.cert_path.read_bytes())  # type: ignore[attr-defined]
        (live / "srv.key").write_bytes(issued.key_path.read_bytes())  # type: ignore[attr-defined]

    install(a)
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "echo_tls", "yuno_name": "r1"},
                "services": [
                    {
                        "name": "echo_tls",
                        "gclass": "C_TCP_S",
                        "as_service": True,
                        "kw": {"url": "tcps://127.0.0.1:0", "crypto": crypto},
                    }
                ],
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    rt.start()
    try:
        listener = rt.find_service("echo_tls")
        port = listener.read_attr("lPort")
        ca_file = ca.write_ca(tmp_path / "ca.pem")
        sess = tmp_path / "s.pem"
        assert "New, TLSv1." in s_client(port, ca_file, version, "-sess_out", str(sess))
        install(b)
        assert rt.root.command("reload-certs")["result"] == 0
        assert listener.command("view-cert")["data"]["serial"] == b.serial
        out = s_client(port, ca_file, version, "-sess_in", str(sess))
        assert "Reused, TLSv1." in out, out[-1500:]
        answer = rt.root.command("reload-certs forget-sessions=1")
        assert answer["result"] == 0, answer
        out = s_client(port, ca_file, version, "-sess_in", str(sess))
        assert "New, TLSv1." in out and "Reused," not in out
        # The listener's own command forgets too.
        new_sess = tmp_path / "new.pem"
        s_client(port, ca_file, version, "-sess_out", str(new_sess))
        assert "Reused, TLSv1." in s_client(port, ca_file, version, "-sess_in", str(new_sess))
        assert listener.command("reload-certs forget-sessions=1")["result"] == 0
        assert "Reused," not in s_client(port, ca_file, version, "-sess_in", str(new_sess))
        wait_for(lambda: listener.read_attr("reloads") == 3)
    finally:
        rt.shutdown()
