"""C_TCP_S and the yuno's certificate commands, end to end: real certificates, real sockets."""

from __future__ import annotations

import shutil
import socket
import ssl

import pytest
from certs import TestCA, serial_of_peer
from clients import echo, tls_connect, wait_for

from yuneta.config import load_config
from yuneta.runtime import YunoRuntime
from yuneta.ytls import TlsError


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def make_yuno(tmp_path, listeners: list[dict], yuno: dict | None = None) -> YunoRuntime:
    services = [
        {"name": name, "gclass": "C_TCP_S", "as_service": True, "kw": kw}
        for name, kw in ((d.pop("name"), d) for d in listeners)
    ]
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "echo_tls", "yuno_name": "t1", **(yuno or {})},
                "services": services,
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    rt.start()
    return rt


@pytest.fixture
def yunos():
    made: list[YunoRuntime] = []
    yield made
    for rt in made:
        rt.shutdown()


def served_serial(port: int, ca: TestCA) -> str:
    with tls_connect(port, ca.client_context()) as s:
        assert echo(s) == b"ping"
        return serial_of_peer(s)


def test_view_cert_after_start_and_reload_to_b_with_live_session(tmp_path, ca, yunos):
    a = ca.issue(tmp_path / "a", "alpha", days=365)
    b = ca.issue(tmp_path / "b", "bravo", days=90)
    live_crypto = tmp_path / "live"
    live_crypto.mkdir()
    shutil.copy(a.cert_path, live_crypto / "srv.crt")
    shutil.copy(a.key_path, live_crypto / "srv.key")
    crypto = {
        "ssl_certificate": str(live_crypto / "srv.crt"),
        "ssl_certificate_key": str(live_crypto / "srv.key"),
    }
    rt = make_yuno(tmp_path, [{"name": "echo_tls", "url": "tcps://127.0.0.1:0", "crypto": crypto}])
    yunos.append(rt)
    listener = rt.find_service("echo_tls")
    port = listener.read_attr("lPort")
    assert port > 0 and listener.read_attr("use_ssl") is True

    info = listener.command("view-cert")
    assert info["result"] == 0
    assert info["data"]["subject"] == "/CN=alpha" and info["data"]["serial"] == a.serial
    assert (
        info["data"]["url"] == "tcps://127.0.0.1:0" and 364 <= info["data"]["days_remaining"] <= 365
    )

    live = tls_connect(port, ca.client_context())
    assert echo(live, b"before") == b"before" and serial_of_peer(live) == a.serial

    shutil.copy(b.cert_path, live_crypto / "srv.crt")
    shutil.copy(b.key_path, live_crypto / "srv.key")
    answer = listener.command("reload-certs")
    assert answer["result"] == 0 and answer["comment"] == "TLS certificates reloaded"
    assert listener.command("view-cert")["data"]["subject"] == "/CN=bravo"

    assert echo(live, b"after") == b"after"  # the live session survived
    assert served_serial(port, ca) == b.serial  # a new session sees B
    live.close()

    # A missing file: -1 naming the file, B still served.
    (live_crypto / "srv.crt").unlink()
    failed = listener.command("reload-certs")
    assert failed["result"] == -1
    assert str(live_crypto / "srv.crt") in failed["comment"] and "not found" in failed["comment"]
    assert served_serial(port, ca) == b.serial
    assert listener.command("view-cert")["data"]["serial"] == b.serial
    assert listener.read_attr("reloads") == 1 and listener.read_attr("reload_failures") == 1


def _bad_material(tmp_path, good, other):
    d = tmp_path / "bad"
    d.mkdir()
    cases = {}

    def case(name, cert=None, key=None):
        cases[name] = {
            "ssl_certificate": str(cert or good.cert_path),
            "ssl_certificate_key": str(key or good.key_path),
        }

    case("missing file", cert=d / "nope.crt")
    (d / "empty.crt").write_bytes(b"")
    case("empty file", cert=d / "empty.crt")
    (d / "garbage.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n"
    )
    case("garbage PEM", cert=d / "garbage.crt")
    (d / "der.crt").write_bytes(
        good.cert.public_bytes(
            __import__(
                "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
            ).Encoding.DER
        )
    )
    case("DER instead of PEM", cert=d / "der.crt")
    case("key does not match", key=other.key_path)
    case("encrypted key", key=other.key_path.parent / "enc.key")
    (d / "dangling.crt").symlink_to(d / "vanished.crt")
    case("dangling symlink", cert=d / "dangling.crt")
    (d / "adir.crt").mkdir()
    case("directory instead of file", cert=d / "adir.crt")
    pem = good.cert_path.read_bytes()
    (d / "truncated.crt").write_bytes(pem[: len(pem) // 3])
    case("truncated PEM", cert=d / "truncated.crt")
    return cases


def test_bad_material_is_refused_with_a_precise_comment_and_the_old_cert_kept(
    tmp_path, ca, yunos, yuneta_logs
):
    good = ca.issue(tmp_path / "good", "good")
    other = ca.issue(tmp_path / "other", "other")
    ca.issue(tmp_path / "other", "enc", encrypt_key=b"secret")
    rt = make_yuno(
        tmp_path, [{"name": "echo_tls", "url": "tcps://127.0.0.1:0", "crypto": good.crypto()}]
    )
    yunos.append(rt)
    listener = rt.find_service("echo_tls")
    port = listener.read_attr("lPort")
    live = tls_connect(port, ca.client_context())
    comments = {}
    for label, crypto in _bad_material(tmp_path, good, other).items():
        answer = listener.command("write-attr", {"attr_name": "crypto", "value": crypto})
        assert answer["result"] == -1, label
        comments[label] = answer["comment"]
        assert listener.read_attr("crypto") == good.crypto(), label  # the write was refused
        assert served_serial(port, ca) == good.serial, label
        assert echo(live, label.encode()) == label.encode(), label
        assert "PRIVATE KEY" not in answer["comment"]
    # Each comment says what is wrong and where.
    assert "not found" in comments["missing file"]
    assert "empty" in comments["empty file"]
    assert "DER" in comments["DER instead of PEM"]
    assert "does not match" in comments["key does not match"]
    assert "encrypted" in comments["encrypted key"]
    assert "symlink" in comments["dangling symlink"]
    assert "directory" in comments["directory instead of file"]
    for label in ("garbage PEM", "truncated PEM"):
        assert "ssl_certificate" in comments[label] and comments[label] != comments["missing file"]
    refused = yuneta_logs.find(msg="TLS reload refused, old certificate kept")
    assert [r["error"] for r in refused] == list(comments.values())
    assert all(r["gobj"] == "C_YUNO^t1`C_TCP_S^echo_tls" and r["level"] == "error" for r in refused)
    live.close()


def test_a_listener_that_fails_to_start_is_not_running(tmp_path, ca):
    good = ca.issue(tmp_path / "g", "good")
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "echo_tls", "yuno_name": "t1"},
                "services": [
                    {
                        "name": "broken",
                        "gclass": "C_TCP_S",
                        "as_service": True,
                        "kw": {
                            "url": "tcps://127.0.0.1:0",
                            "crypto": {
                                **good.crypto(),
                                "ssl_certificate": str(tmp_path / "missing.crt"),
                            },
                        },
                    }
                ],
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    try:
        with pytest.raises(TlsError, match="missing.crt: file not found"):
            rt.start()
        listener = rt.find_service("broken")
        assert listener.running is False
        assert (
            rt.root.command("reload-certs")["data"]["reloaded"] == 0
        )  # not counted as a TLS listener
    finally:
        rt.shutdown()


def test_plain_listener_refuses_cert_commands(tmp_path, yunos):
    rt = make_yuno(tmp_path, [{"name": "plain", "url": "tcp://127.0.0.1:0"}])
    yunos.append(rt)
    listener = rt.find_service("plain")
    assert listener.command("reload-certs") == {
        "result": -1,
        "comment": "Listener is not TLS-enabled or not running",
        "schema": None,
        "data": None,
    }
    assert listener.command("view-cert")["result"] == -1
    with socket.create_connection(("127.0.0.1", listener.read_attr("lPort")), timeout=10) as s:
        assert echo(s, b"plain") == b"plain"
        wait_for(lambda: listener.command("view-attrs")["data"]["connxs"] == 1)
    wait_for(lambda: listener.command("view-attrs")["data"]["connxs"] == 0)
    assert listener.command("view-attrs")["data"]["tconnxs"] == 1


def test_yuno_reload_certs_reports_each_listener_and_fails_if_any_failed(tmp_path, ca, yunos):
    one = ca.issue(tmp_path / "one", "one")
    two = ca.issue(tmp_path / "two", "two")
    rt = make_yuno(
        tmp_path,
        [
            {"name": "tls_one", "url": "tcps://127.0.0.1:0", "crypto": one.crypto()},
            {"name": "tls_two", "url": "tcps://127.0.0.1:0", "crypto": two.crypto()},
            {"name": "plain", "url": "tcp://127.0.0.1:0"},
        ],
    )
    yunos.append(rt)
    ok = rt.root.command("reload-certs")
    assert ok["result"] == 0
    assert ok["comment"] == "echo_tls^t1: reloaded 2 TLS listener(s), 0 failed"
    assert ok["data"]["reloaded"] == 2 and ok["data"]["failed"] == 0
    assert {d["gobj"] for d in ok["data"]["details"]} == {"tls_one", "tls_two"}

    two.key_path.write_bytes(one.key_path.read_bytes())  # key no longer matches
    bad = rt.root.command("reload-certs")
    assert bad["result"] == -1
    assert bad["comment"] == "echo_tls^t1: reloaded 1 TLS listener(s), 1 failed"
    failed = next(d for d in bad["data"]["details"] if d["gobj"] == "tls_two")
    assert failed["result"] == -1 and "does not match" in failed["comment"]
    assert served_serial(rt.find_service("tls_two").read_attr("lPort"), ca) == two.serial


def test_cert_expiry_status_and_expired_or_future_certs_load(tmp_path, ca, yunos):
    expired = ca.issue(tmp_path / "e", "expired", days=-5, not_before_days=-30)
    future = ca.issue(tmp_path / "f", "future", days=60, not_before_days=10)
    soon = ca.issue(tmp_path / "s", "soon", days=1.5)
    rt = make_yuno(
        tmp_path,
        [
            {"name": "expired", "url": "tcps://127.0.0.1:0", "crypto": expired.crypto()},
            {"name": "future", "url": "tcps://127.0.0.1:0", "crypto": future.crypto()},
            {"name": "soon", "url": "tcps://127.0.0.1:0", "crypto": soon.crypto()},
        ],
    )
    yunos.append(rt)
    status = rt.root.command("cert-expiry-status")
    assert status["result"] == 0
    data = status["data"]
    assert (
        data["listeners"] == 3 and data["warn_threshold"] == 7 and data["critical_threshold"] == 2
    )
    days = {d["gobj"]: d["days_remaining"] for d in data["details"]}
    # floor((not_after - now) / 86400): an expiry 5 days ago is day -6, one in 1.5 days is day 1.
    assert days == {"expired": -6, "future": 59, "soon": 1}
    assert data["min_days_remaining"] == min(days.values())


def test_expiry_monitor_logs_critical_warning_and_nothing(tmp_path, ca, yunos, yuneta_logs):
    listeners = [
        {
            "name": f"d{days}",
            "url": "tcps://127.0.0.1:0",
            "crypto": ca.issue(tmp_path / str(days), f"d{days}", days=days + 0.5).crypto(),
        }
        for days in (1, 5, 30)
    ]
    rt = make_yuno(tmp_path, listeners, {"timeout_periodic": 50, "timeout_cert_check": 1})
    yunos.append(rt)
    wait_for(lambda: yuneta_logs.find(msg="TLS certificate expires soon (warning)"), timeout=15)
    wait_for(lambda: yuneta_logs.find(msg="TLS certificate expires soon (critical)"), timeout=15)
    critical = yuneta_logs.find(level="critical")
    warning = yuneta_logs.find(msg="TLS certificate expires soon (warning)")
    assert {r["listener"] for r in critical} == {"d1"}
    assert {r["listener"] for r in warning} == {"d5"}
    assert (
        critical[0]["days_remaining"] == 1
        and critical[0]["subject"] == "/CN=d1"
        and critical[0]["not_after"]
    )
    # The monitor never reloads.
    assert all(rt.find_service(n).read_attr("reloads") == 0 for n in ("d1", "d5", "d30"))


def test_mtls_listener_requires_a_client_cert_and_a_new_ca_applies_to_new_handshakes(
    tmp_path, ca, yunos
):
    server = ca.issue(tmp_path / "srv", "server")
    client_ca_1, client_ca_2 = TestCA("clients one"), TestCA("clients two")
    ca1 = client_ca_1.write_ca(tmp_path / "ca1.pem")
    ca2 = client_ca_2.write_ca(tmp_path / "ca2.pem")
    crypto = server.crypto(ssl_trusted_certificate=str(ca1))
    rt = make_yuno(tmp_path, [{"name": "mtls", "url": "tcps://127.0.0.1:0", "crypto": crypto}])
    yunos.append(rt)
    listener = rt.find_service("mtls")
    port = listener.read_attr("lPort")

    def try_client(client_ca: TestCA | None, name: str) -> bool:
        ctx = ca.client_context()
        if client_ca is not None:
            issued = client_ca.issue(tmp_path / name, name, client=True)
            ctx.load_cert_chain(str(issued.cert_path), str(issued.key_path))
        try:
            with tls_connect(port, ctx) as s:
                return echo(s) == b"ping"
        except (ssl.SSLError, ConnectionError, OSError):
            return False

    assert not try_client(None, "anon")
    assert try_client(client_ca_1, "c1")
    assert not try_client(client_ca_2, "c2")
    assert (
        listener.command(
            "write-attr",
            {"attr_name": "crypto", "value": server.crypto(ssl_trusted_certificate=str(ca2))},
        )["result"]
        == 0
    )
    assert try_client(client_ca_2, "c2b")
    assert not try_client(client_ca_1, "c1b")
    wait_for(lambda: listener.command("view-attrs")["data"]["handshake_failures"] >= 3)
