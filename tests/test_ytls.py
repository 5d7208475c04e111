"""ytls: building, validating, describing and hot-reloading TLS contexts."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA, serial_of_peer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gclasses.tls_listener import cert_view, days_remaining
from yuneta.netio import TlsSession
from yuneta.tls_material import TlsSettings, load_material
from yuneta.ytls import (
    CertificateFileError,
    KeyMismatchError,
    TlsError,
    Ytls,
    build_server_context,
    build_server_context_with_info,
    check_crypto,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.mark.parametrize(
    ("days", "not_before_days"),
    [(1.5, -1), (365.5, -1), (-2.5, -30)],
    ids=["one-day", "one-year", "expired"],
)
def test_cert_info_describes_the_leaf(
    ca: TestCA, tmp_path: Path, days: float, not_before_days: float
) -> None:
    issued = ca.issue(tmp_path, "web", days=days, not_before_days=not_before_days)
    ytls = Ytls(issued.crypto())
    now = issued.cert.not_valid_before_utc.timestamp() - not_before_days * 86400
    facts = ytls.cert_info()
    info = cert_view(facts, now=now)

    assert "days_remaining" not in facts  # the engine has no clock policy: the gclasses do
    assert list(info) == [
        "subject",
        "issuer",
        "not_before",
        "not_after",
        "serial",
        "days_remaining",  # where the original puts it
        "not_before_iso",
        "not_after_iso",
        "subject_rfc4514",
        "issuer_rfc4514",
        "san",
        "fingerprint_sha256",
        "key_type",
        "chain_length",
    ]
    assert info["subject"] == "/CN=web" and info["subject_rfc4514"] == "CN=web"
    assert "/O=Yuneta Test CA" in info["issuer"] and "O=Yuneta Test CA" in info["issuer_rfc4514"]
    assert info["serial"] == issued.serial and info["serial"] == info["serial"].upper()
    assert ISO.match(info["not_before_iso"]) and ISO.match(info["not_after_iso"])
    assert info["not_after"] == int(issued.cert.not_valid_after_utc.timestamp())
    assert type(info["not_before"]) is int and type(info["not_after"]) is int
    assert info["days_remaining"] == math.floor(days)
    assert info["san"] == ["web.test", "127.0.0.1"]
    assert info["key_type"] == "EC P-256"
    assert info["chain_length"] == 2
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", info["fingerprint_sha256"])


def test_expired_certificate_has_negative_days_remaining(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path, "old", days=-3.5, not_before_days=-40)
    assert cert_view(Ytls(issued.crypto()).cert_info())["days_remaining"] == -4


@pytest.mark.parametrize(
    ("seconds_left", "expected"),
    [(86400 * 2, 2), (86400 * 2 - 1, 1), (1, 0), (0, 0), (-1, -1), (-86400, -1), (-86401, -2)],
)
def test_days_remaining_rounds_down(seconds_left: int, expected: int) -> None:
    now = 1_800_000_000.0
    assert days_remaining(int(now) + seconds_left, now=now) == expected


def test_rsa_key_type_is_reported(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path, "rsa", key_type="rsa")
    assert Ytls(issued.crypto()).cert_info()["key_type"] == "RSA 2048"


def test_reload_to_new_certificate_changes_subject(ca: TestCA, tmp_path: Path) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    old_ctx = ytls.context
    ytls.reload(b.crypto())
    assert ytls.cert_info()["subject"] == "/CN=b"
    assert ytls.context is not old_ctx
    assert ytls.reload_count == 1
    assert ytls.crypto["ssl_certificate"] == str(b.cert_path)


def test_failed_reload_keeps_the_current_certificate(ca: TestCA, tmp_path: Path) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    ytls.reload(b.crypto())
    current = ytls.context
    os.remove(b.cert_path)
    with pytest.raises(TlsError, match="file not found"):
        ytls.reload()
    assert ytls.context is current
    assert ytls.cert_info()["subject"] == "/CN=b"


def test_reload_without_arguments_rereads_the_same_files(ca: TestCA, tmp_path: Path) -> None:
    a, b = ca.issue(tmp_path / "a", "site"), ca.issue(tmp_path / "b", "site")
    ytls = Ytls(a.crypto())
    os.replace(b.cert_path, a.cert_path)
    os.replace(b.key_path, a.key_path)
    ytls.reload()
    assert ytls.cert_info()["serial"] == b.serial


def _bad_inputs(ca: TestCA, tmp: Path) -> dict[str, tuple[dict, type, str]]:
    good = ca.issue(tmp, "good")
    other = ca.issue(tmp, "other")
    encrypted = ca.issue(tmp / "enc", "enc", encrypt_key=b"secret-pass")
    cert_pem = good.cert_path.read_bytes()
    key_pem = good.key_path.read_bytes()

    def write(name: str, data: bytes) -> str:
        path = tmp / name
        path.write_bytes(data)
        return str(path)

    der = good.cert.public_bytes(serialization.Encoding.DER)
    dangling = tmp / "dangling.crt"
    dangling.symlink_to(tmp / "nowhere.crt")
    directory = tmp / "adir.crt"
    directory.mkdir()
    cert, key = str(good.cert_path), str(good.key_path)
    missing = str(tmp / "missing.crt")
    return {
        "missing-file": (
            {"ssl_certificate": missing, "ssl_certificate_key": key},
            TlsError,
            f"ssl_certificate {missing}: file not found",
        ),
        "empty-file": (
            {"ssl_certificate": write("empty.crt", b""), "ssl_certificate_key": key},
            TlsError,
            "empty.crt: empty file",
        ),
        "garbage-pem": (
            {
                "ssl_certificate": write(
                    "garbage.crt",
                    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==!!\n-----END CERTIFICATE-----\n",
                ),
                "ssl_certificate_key": key,
            },
            TlsError,
            "garbage.crt: truncated/garbage PEM",
        ),
        "der-not-pem": (
            {"ssl_certificate": write("cert.der", der), "ssl_certificate_key": key},
            TlsError,
            "cert.der: not a PEM certificate (DER?)",
        ),
        "key-mismatch": (
            {"ssl_certificate": cert, "ssl_certificate_key": str(other.key_path)},
            KeyMismatchError,
            f"ssl_certificate_key {other.key_path}: private key does not match certificate {cert}",
        ),
        "encrypted-key": (
            {
                "ssl_certificate": str(encrypted.cert_path),
                "ssl_certificate_key": str(encrypted.key_path),
            },
            TlsError,
            "encrypted private key (no passphrase configured)",
        ),
        "dangling-symlink": (
            {"ssl_certificate": str(dangling), "ssl_certificate_key": key},
            TlsError,
            "dangling.crt: dangling symlink",
        ),
        "directory": (
            {"ssl_certificate": str(directory), "ssl_certificate_key": key},
            TlsError,
            "adir.crt: is a directory",
        ),
        "truncated-cert": (
            {
                "ssl_certificate": write("trunc.crt", cert_pem[: len(cert_pem) // 3]),
                "ssl_certificate_key": key,
            },
            TlsError,
            "trunc.crt: truncated/garbage PEM",
        ),
        "truncated-key": (
            {"ssl_certificate": cert, "ssl_certificate_key": write("trunc.key", key_pem[:60])},
            TlsError,
            "ssl_certificate_key",
        ),
        "missing-key": (
            {"ssl_certificate": cert, "ssl_certificate_key": str(tmp / "no.key")},
            TlsError,
            "no.key: file not found",
        ),
        "unknown-crypto-key": (
            {"ssl_certificate": cert, "ssl_certificate_key": key, "ssl_bogus": 1},
            TlsError,
            "ssl_bogus: unknown crypto key",
        ),
        "bad-min-version": (
            {"ssl_certificate": cert, "ssl_certificate_key": key, "ssl_min_version": "SSLv3"},
            TlsError,
            "ssl_min_version",
        ),
        "bad-ciphers": (
            {"ssl_certificate": cert, "ssl_certificate_key": key, "ssl_ciphers": "NOPE-NOTHING"},
            TlsError,
            "ssl_ciphers",
        ),
        "bad-trusted-ca": (
            {
                "ssl_certificate": cert,
                "ssl_certificate_key": key,
                "ssl_trusted_certificate": write("ca.pem", b"junk"),
            },
            TlsError,
            "ssl_trusted_certificate",
        ),
        "verify-mode-without-ca": (
            {"ssl_certificate": cert, "ssl_certificate_key": key, "ssl_verify_mode": "required"},
            TlsError,
            "ssl_verify_mode",
        ),
    }


BAD_CASES = [
    "missing-file",
    "empty-file",
    "garbage-pem",
    "der-not-pem",
    "key-mismatch",
    "encrypted-key",
    "dangling-symlink",
    "directory",
    "truncated-cert",
    "truncated-key",
    "missing-key",
    "unknown-crypto-key",
    "bad-min-version",
    "bad-ciphers",
    "bad-trusted-ca",
    "verify-mode-without-ca",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_material_is_refused_precisely_and_old_context_stays(
    ca: TestCA, tmp_path: Path, case: str
) -> None:
    current = ca.issue(tmp_path / "current", "current")
    ytls = Ytls(current.crypto())
    before = ytls.context
    crypto, exc_type, message = _bad_inputs(ca, tmp_path / "bad")[case]

    with pytest.raises(exc_type) as err:
        ytls.reload(crypto)
    assert message in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)
    assert err.value.key in str(err.value)
    assert ytls.context is before
    assert ytls.cert_info()["subject"] == "/CN=current"
    with pytest.raises(exc_type):
        build_server_context(crypto)


def test_error_message_never_contains_key_material(ca: TestCA, tmp_path: Path) -> None:
    good, other = ca.issue(tmp_path, "good"), ca.issue(tmp_path, "other")
    key_body = other.key_path.read_text().splitlines()[1]
    with pytest.raises(TlsError) as err:
        build_server_context(
            {"ssl_certificate": str(good.cert_path), "ssl_certificate_key": str(other.key_path)}
        )
    assert key_body not in str(err.value)


def test_alternating_reloads_leave_only_the_current_context_alive(
    ca: TestCA, tmp_path: Path
) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    for i in range(1000):
        ytls.reload((b if i % 2 == 0 else a).crypto())
    gc.collect()
    assert ytls.reload_count == 1000
    assert ytls.alive_contexts() == 1
    assert ytls.cert_info()["subject"] == "/CN=a"


def test_old_context_lives_while_a_session_holds_it(ca: TestCA, tmp_path: Path) -> None:
    a, b = ca.issue(tmp_path, "a"), ca.issue(tmp_path, "b")
    ytls = Ytls(a.crypto())
    session = TlsSession(ytls.get_context())
    client = TlsSession(ca.client_context(), server_side=False, server_hostname="a.test")
    client.start()
    for _ in range(3):
        session.receive(client.data_to_send())
        client.receive(session.data_to_send())
    assert session.context is ytls.context  # selected at the ClientHello
    ytls.reload(b.crypto())
    gc.collect()
    assert ytls.alive_contexts() == 2
    del session
    gc.collect()
    assert ytls.alive_contexts() == 1


def test_trusted_certificate_enables_required_client_verification(
    ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "srv")
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    ctx = build_server_context(issued.crypto(ssl_trusted_certificate=str(ca_file)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    ctx = build_server_context(
        issued.crypto(ssl_trusted_certificate=str(ca_file), ssl_verify_mode="optional")
    )
    assert ctx.verify_mode == ssl.CERT_OPTIONAL


def test_settings_are_applied(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path, "srv")
    ctx = build_server_context(
        issued.crypto(ssl_min_version="1.3", ssl_verify_depth=3, ssl_disable_renegotiation=True)
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    default = build_server_context(issued.crypto())
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(TlsError, match="ssl_verify_depth"):
        build_server_context(issued.crypto(ssl_verify_depth=-1))


def test_fingerprint_matches_cryptography(ca: TestCA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes

    issued = ca.issue(tmp_path, "srv")
    expected = issued.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert Ytls(issued.crypto()).cert_info()["fingerprint_sha256"] == expected
    assert isinstance(issued.cert, x509.Certificate)


# ---------------------------------------------------------------------------
# The context holds exactly what was validated
# ---------------------------------------------------------------------------

_audit_listener: list[Any] = []  # the one process-wide audit hook forwards here while set


def _audit(event: str, args: tuple) -> None:
    for listener in list(_audit_listener):
        listener(event, args)


sys.addaudithook(_audit)  # audit hooks cannot be removed: install once, forward on demand


def _handshake_serial(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """A full TLS handshake over memory BIOs; the serial of the certificate the server sent."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {client: False, server: False}
    for _ in range(20):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return serial_of_peer(client)
    raise AssertionError("handshake did not complete")


def test_context_serves_the_validated_bytes_even_if_the_files_change_meanwhile(
    ca: TestCA, tmp_path: Path
) -> None:
    # certbot updates its links one at a time: here the certificate file is replaced by
    # another one at the very moment the key is being read (after the certificate was read).
    # What was validated (a's certificate and a's key) must be what the context serves.
    a, b = ca.issue(tmp_path / "a", "a"), ca.issue(tmp_path / "b", "b")
    key_path, cert_path = str(a.key_path), a.cert_path
    swapped: list[str] = []

    def swap_certificate_when_the_key_is_opened(event: str, args: tuple) -> None:
        if event == "open" and str(args[0]) == key_path and not swapped:
            swapped.append(key_path)
            cert_path.write_bytes(b.cert_path.read_bytes())

    _audit_listener.append(swap_certificate_when_the_key_is_opened)
    try:
        ytls = Ytls(a.crypto())
    finally:
        _audit_listener.clear()
    assert swapped and cert_path.read_bytes() == b.cert_path.read_bytes()
    assert ytls.cert_info()["serial"] == a.serial
    assert _handshake_serial(ytls.context, ca.client_context()) == a.serial
    # The next build reads the files as they are now: b's certificate with a's key.
    with pytest.raises(KeyMismatchError):
        ytls.reload()
    assert _handshake_serial(ytls.context, ca.client_context()) == a.serial


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_building_a_context_writes_no_file(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "certs", "srv")
    ca_file = ca.write_ca(tmp_path / "certs" / "ca.pem")
    crypto = issued.crypto(ssl_trusted_certificate=str(ca_file))
    client_ctx = ca.client_cert_context(tmp_path / "client")
    key_body = issued.key_path.read_bytes().splitlines()[1]
    tmp_dir = Path(tempfile.gettempdir())
    cert_dir_before, tmp_before = _tree(tmp_path), set(os.listdir(tmp_dir))
    events: list[tuple[str, tuple]] = []

    def record(event: str, args: tuple) -> None:
        if event.startswith("tempfile.") or (
            event == "open" and isinstance(args[1], str) and set(args[1]) & set("wax+")
        ):
            events.append((event, args))

    _audit_listener.append(record)
    try:
        ctx, info = build_server_context_with_info(crypto)
    finally:
        _audit_listener.clear()

    assert events == []
    assert _tree(tmp_path) == cert_dir_before
    # /tmp is shared with other processes: none of its new files may hold our key.
    for name in set(os.listdir(tmp_dir)) - tmp_before:
        with contextlib.suppress(OSError):
            assert key_body not in (tmp_dir / name).read_bytes()
    assert _handshake_serial(ctx, client_ctx) == info.serial == issued.serial


# ---------------------------------------------------------------------------
# Validation (engine-neutral material) and the handshake proof before a swap
# ---------------------------------------------------------------------------


def _self_signed(tmp_path: Path, key: Any, name: str) -> dict[str, str]:
    """A self-signed leaf for `key` written as <name>.crt/.key; returns its crypto dict."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {"ssl_certificate": str(cert_path), "ssl_certificate_key": str(key_path)}


def test_material_is_the_validated_bytes_and_facts_for_any_engine(
    ca: TestCA, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path, "web")
    ca_file = ca.write_ca(tmp_path / "clients-ca.pem")
    material = load_material(issued.crypto(ssl_trusted_certificate=str(ca_file)))

    assert material.cert_chain_pem == issued.cert_path.read_bytes()
    assert material.key_pem == issued.key_path.read_bytes()
    assert material.leaf_der == issued.cert.public_bytes(serialization.Encoding.DER)
    assert [x509.load_der_x509_certificate(d).subject for d in material.ca_der] == [
        x509.load_pem_x509_certificate(ca_file.read_bytes()).subject
    ]
    assert material.info.serial == issued.serial
    assert material.settings == TlsSettings(verify_mode="required")
    assert "PRIVATE KEY" not in repr(material)


def test_a_certificate_openssl_loads_but_cannot_serve_with_is_refused_and_old_kept(
    ca: TestCA, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa

    dsa_crypto = _self_signed(tmp_path, dsa.generate_private_key(key_size=2048), "dsa")
    # OpenSSL accepts the pair: only a handshake shows that no TLS 1.3 peer can use it.
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        dsa_crypto["ssl_certificate"], dsa_crypto["ssl_certificate_key"]
    )
    ytls = Ytls(ca.issue(tmp_path, "good").crypto())
    before = ytls.context

    with pytest.raises(CertificateFileError) as err:
        ytls.reload(dsa_crypto)
    assert str(err.value).startswith(f"ssl_certificate {dsa_crypto['ssl_certificate']}: ")
    assert "cannot be used for a TLS handshake" in str(err.value)
    assert ytls.context is before and ytls.cert_info()["subject"] == "/CN=good"
    with pytest.raises(CertificateFileError, match="cannot be used for a TLS handshake"):
        check_crypto(dsa_crypto)


def test_check_crypto_is_the_reload_check_without_keeping_anything(
    ca: TestCA, tmp_path: Path
) -> None:
    good, other = ca.issue(tmp_path, "good"), ca.issue(tmp_path, "other")
    assert check_crypto(good.crypto()).serial == good.serial
    with pytest.raises(KeyMismatchError):
        check_crypto({**good.crypto(), "ssl_certificate_key": str(other.key_path)})
    # mTLS: the proof completes without a client certificate (the client finishes first).
    ca_file = ca.write_ca(tmp_path / "clients-ca.pem")
    assert check_crypto(good.crypto(ssl_trusted_certificate=str(ca_file))).serial == good.serial
