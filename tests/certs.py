"""Certificate factories for the TLS tests and the benchmark.

A `TestCA` (trustme for the root) issues leaf certificates with chosen validity, key type and
common name via `cryptography`, and writes them as PEM files (fullchain and key) into a
directory, returning the `crypto` dict a Yuneta listener would be configured with.

Leaves carry the extensions a real CA puts on them (`leaf_extensions`): subject and authority
key identifiers, basic constraints CA:FALSE, key usage, extended key usage and the SAN. Python
3.13's default client context sets VERIFY_X509_STRICT, which refuses a chain whose leaf has no
authority key identifier, so certificates without them would only fail on 3.13.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    """One issued leaf: its files, serial (upper-case hex) and the `crypto` dict."""

    cert_path: Path
    key_path: Path
    serial: str
    cert: x509.Certificate

    def crypto(self, **extra: Any) -> dict[str, Any]:
        return {
            "ssl_certificate": str(self.cert_path),
            "ssl_certificate_key": str(self.key_path),
            **extra,
        }


def leaf_extensions(
    builder: x509.CertificateBuilder,
    *,
    public_key: Any,
    issuer: x509.Certificate,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    """Add the extensions of a CA-issued end-entity certificate (RFC 5280, CA/B baseline)."""
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # RSA key exchange (TLS 1.2 static RSA) needs keyEncipherment; ECDSA keys only sign.
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=rsa_key,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )


def _private_key(key_type: str) -> Any:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type}")


class TestCA:
    """A throw-away CA (trustme) that issues server and client leaves."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "Yuneta Test CA") -> None:
        self.ca = trustme.CA(organization_name=name)
        self._ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        self._ca_key = serialization.load_pem_private_key(
            self.ca.private_key_pem.bytes(), password=None
        )

    def write_ca(self, path: Path) -> Path:
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this CA (hostname check off: we connect by IP)."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        ctx.check_hostname = False
        return ctx

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        days: float = 365,
        not_before_days: float = -1,
        key_type: str = "ec",
        client: bool = False,
        encrypt_key: bytes | None = None,
    ) -> Issued:
        """Issue a leaf valid from now+not_before_days to now+days; write `name`.crt/.key."""
        now = dt.datetime.now(dt.UTC)
        key = _private_key(key_type)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=not_before_days))
            .not_valid_after(now + dt.timedelta(days=days))
        )
        cert = leaf_extensions(
            builder,
            public_key=key.public_key(),
            issuer=self._ca_cert,
            sans=[x509.DNSName(f"{name}.test"), x509.IPAddress(_loopback())],
            usage=usage,
        ).sign(self._ca_key, hashes.SHA256())
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        # Full chain, as certbot's fullchain.pem: leaf then the issuing CA.
        cert_path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self._ca_cert.public_bytes(serialization.Encoding.PEM)
        )
        encryption = (
            serialization.BestAvailableEncryption(encrypt_key)
            if encrypt_key
            else serialization.NoEncryption()
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
        return Issued(cert_path, key_path, format(cert.serial_number, "X"), cert)

    def client_cert_context(self, directory: Path, name: str = "client") -> ssl.SSLContext:
        """A client context trusting this CA and presenting a client cert issued by it."""
        issued = self.issue(directory, name, client=True)
        ctx = self.client_context()
        ctx.load_cert_chain(str(issued.cert_path), str(issued.key_path))
        return ctx


def _loopback() -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address("127.0.0.1")


def serial_of_peer(sslobj: Any) -> str:
    """Upper-case hex serial of the certificate the peer presented (client side)."""
    der = sslobj.getpeercert(binary_form=True)
    return format(x509.load_der_x509_certificate(der).serial_number, "X")
