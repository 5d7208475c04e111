#!/usr/bin/env python3
"""Make a private CA and a server certificate in the store layout, for demos and tests.

    python3 scripts/make-certs.py --store demo-run/store/certs --name localhost [--days 90]

Writes <store>/ca.crt, <store>/<name>.crt (leaf + CA, like certbot's fullchain),
<store>/<name>.chain (the CA) and <store>/private/<name>.key (mode 0600, directory 0700).
The CA key stays in <store>/private/ca.key so that later runs issue from the same CA
(a rotation keeps clients' trust). Files are written to a temporary name and renamed.

Certificates carry the extensions a real CA issues: key identifiers (SKI on both, AKI on the
leaf), basic constraints, key usage, and on the leaf extended key usage and SAN. Python 3.13's
default client context (VERIFY_X509_STRICT) refuses a chain without them. A CA made by an
earlier version without an SKI is re-issued from its same key and name, so leaves signed before
still verify against it and clients that trust the old ca.crt still trust the new leaves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca_cert(key: ec.EllipticCurvePrivateKey, name: x509.Name) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _has_ski(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True


def load_or_make_ca(store: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_crt, ca_key = store / "ca.crt", store / "private" / "ca.key"
    if ca_crt.exists() and ca_key.exists():
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"make-certs: {ca_key}: not an EC private key")
        cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        if _has_ski(cert):
            return cert, key
        cert = _make_ca_cert(key, cert.subject)  # same key and name: old leaves still verify
        _write(ca_crt, _pem(cert), 0o644)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Yuneta demo CA")])
    cert = _make_ca_cert(key, name)
    _write(
        ca_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(ca_crt, _pem(cert), 0o644)
    return cert, key


def issue(store: Path, name: str, days: float) -> x509.Certificate:
    (store / "private").mkdir(parents=True, exist_ok=True)
    os.chmod(store / "private", 0o700)
    ca, ca_key = load_or_make_ca(store)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Key first: a reader that sees the new certificate then finds its key already there.
    _write(
        store / "private" / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(store / f"{name}.chain", _pem(ca), 0o644)
    _write(store / f"{name}.crt", _pem(cert) + _pem(ca), 0o644)
    return cert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="certificate store directory")
    parser.add_argument("--name", default="localhost", help="certificate name (CN and DNS SAN)")
    parser.add_argument("--days", type=float, default=90, help="validity in days")
    args = parser.parse_args()
    cert = issue(Path(args.store), args.name, args.days)
    print(
        f"{args.store}/{args.name}.crt serial {format(cert.serial_number, 'X')} "
        f"valid until {cert.not_valid_after_utc.isoformat()}"
    )


if __name__ == "__main__":
    main()
