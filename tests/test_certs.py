"""Test and demo certificates are issued as a real CA issues them.

Python 3.13's default client context verifies with VERIFY_X509_STRICT, which refuses a leaf
without an authority key identifier (and a CA without a subject key identifier). These tests
turn the strict flag on explicitly so they fail on every Python when an extension is missing,
and check with OpenSSL's own `verify -x509_strict` as a second, independent verifier.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent


def _make_certs() -> Any:
    spec = importlib.util.spec_from_file_location("make_certs", ROOT / "scripts" / "make-certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strict_handshake(server_chain: Path, server_key: Path, ca: Path) -> None:
    """A full TLS handshake in memory (no socket) with a strict-verifying client."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(server_chain), str(server_key))
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes 2 flights each way
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def _openssl_strict_verify(ca: Path, leaf_pem: bytes, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    leaf = tmp_path / "leaf-only.pem"
    leaf.write_bytes(leaf_pem)
    proc = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(ca), str(leaf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _ext(cert: x509.Certificate, cls: type) -> Any:
    return cert.extensions.get_extension_for_class(cls)


def _assert_leaf_profile(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    ca_ski = _ext(ca, x509.SubjectKeyIdentifier).value
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    assert _ext(leaf, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    )
    basic = _ext(leaf, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_test_ca_leaves_pass_strict_verification(tmp_path: Path, key_type: str) -> None:
    ca = TestCA()
    ca_path = ca.write_ca(tmp_path / "ca.pem")
    issued = ca.issue(tmp_path / "leaf", "strict", key_type=key_type)
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    _assert_leaf_profile(issued.cert, ca_cert)
    if key_type == "rsa":
        assert _ext(issued.cert, x509.KeyUsage).value.key_encipherment
    _strict_handshake(issued.cert_path, issued.key_path, ca_path)
    _openssl_strict_verify(ca_path, issued.cert.public_bytes(serialization.Encoding.PEM), tmp_path)


def test_make_certs_store_passes_strict_verification(tmp_path: Path) -> None:
    store = tmp_path / "store"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-certs.py"), "--store", str(store)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    ca = x509.load_pem_x509_certificate((store / "ca.crt").read_bytes())
    assert _ext(ca, x509.BasicConstraints).value.ca is True
    assert _ext(ca, x509.KeyUsage).value.key_cert_sign
    leaf = x509.load_pem_x509_certificate((store / "localhost.crt").read_bytes())
    _assert_leaf_profile(leaf, ca)
    _strict_handshake(
        store / "localhost.crt", store / "private" / "localhost.key", store / "ca.crt"
    )
    _openssl_strict_verify(
        store / "ca.crt", leaf.public_bytes(serialization.Encoding.PEM), tmp_path
    )


def test_make_certs_reissues_an_old_ca_without_ski_keeping_its_key(tmp_path: Path) -> None:
    """A store from before key identifiers: the CA is re-issued from the same key and name,
    so a leaf it signed earlier still verifies against the new ca.crt."""
    store = tmp_path / "store"
    (store / "private").mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Yuneta demo CA")])
    now = dt.datetime.now(dt.UTC)
    old_ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (store / "ca.crt").write_bytes(old_ca.public_bytes(serialization.Encoding.PEM))
    (store / "private" / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _make_certs().issue(store, "localhost", 90)
    new_ca = x509.load_pem_x509_certificate((store / "ca.crt").read_bytes())
    assert new_ca.public_key() == old_ca.public_key() and new_ca.subject == old_ca.subject
    assert _ext(new_ca, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    _strict_handshake(
        store / "localhost.crt", store / "private" / "localhost.key", store / "ca.crt"
    )
