"""Validated TLS material: a listener's `crypto` files turned into checked bytes and facts.

`load_material` reads each configured file once, checks it with `cryptography` (PEM shape,
key matches certificate, CA parses, settings known) and returns a `TlsMaterial`: the exact
bytes that were validated (certificate chain PEM, key PEM, client CA as DER), the parsed
`CertInfo` and the `TlsSettings`, all engine-neutral. Context factories (the stdlib `ssl` one
in `yuneta.ytls`, the pyOpenSSL one for DTLS) build from this object only and never reopen a
path: certbot swaps its links one at a time, so a second read could pair a new certificate
with the old key. Every problem is a `TlsError` naming the crypto key, the file and the
reason, never any key material.
"""

from __future__ import annotations

import datetime as _dt
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from yuneta.errors import YunetaError

#: Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults, all AEAD),
#: in its order: forward secrecy and AEAD only, no CBC, CCM, CAMELLIA or ARIA. The DHE suites
#: stay unused unless DH parameters are loaded, which is within the profile too.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
#: The original C Yuneta's default, for operators who set it explicitly in `ssl_ciphers`.
ORIGINAL_CIPHERS = "HIGH:!aNULL:!kRSA:!PSK:!SRP:!MD5:!RC4"
#: The key-exchange group by default. Python's `ssl` sets one group only (no groups list
#: before 3.15), and OpenSSL's own list adds X448 and P-521, outside Mozilla's profile.
#: X25519 is what current clients offer first, so none needs a HelloRetryRequest; clients
#: without it (Java 8, IE 11) need `ssl_ecdh_curve: "prime256v1"`. Some Pythons (Debian
#: 12's 3.11.2) set the group through EC_KEY, which has no X25519: there the default is
#: P-256, also in Mozilla's intermediate profile (TLS 1.3 clients then pay a
#: HelloRetryRequest).


def _default_ecdh_curve() -> str:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve("X25519")
    except (ValueError, ssl.SSLError):
        return "prime256v1"
    return "X25519"


DEFAULT_ECDH_CURVE = _default_ecdh_curve()
# A certificate chain or key is a few KiB: a bigger file is a mistake, and reading it whole
# would stall the yuno and hold its size in memory.
MAX_PEM_BYTES = 1024 * 1024
DEFAULT_MIN_VERSION = "TLSv1.2"

CRYPTO_KEYS = frozenset(
    {
        "library",  # Yuneta configs carry "library": "openssl"; accepted for compatibility.
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_trusted_certificate",
        "ssl_verify_mode",
        "ssl_ciphers",
        "ssl_min_version",
        "ssl_verify_depth",
        "ssl_disable_renegotiation",
        "ssl_ecdh_curve",
    }
)

#: Accepted spellings of `ssl_min_version`, to the canonical "1.2" / "1.3".
MIN_VERSIONS = {"tlsv1.2": "1.2", "1.2": "1.2", "tlsv1.3": "1.3", "1.3": "1.3"}
VERIFY_MODES = ("none", "optional", "required")
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class TlsError(YunetaError):
    """A TLS material or setting problem (a kernel error: a command answers `-1 str(exc)`).

    `key` is the crypto key at fault (e.g. "ssl_certificate_key"), `path` the file (or None),
    `reason` the problem. `str()` reads "<key> <path>: <reason>".
    """

    def __init__(self, key: str, path: str | None, reason: str) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        where = f"{key} {path}" if path else key
        super().__init__(f"{where}: {reason}")


class CertificateFileError(TlsError):
    """A certificate or key file is missing, unreadable or not what it should be."""


class KeyMismatchError(TlsError):
    """The private key does not belong to the certificate (certbot may be mid-update)."""


class TlsSettingError(TlsError):
    """A crypto setting (unknown key, bad cipher string, bad version...) is invalid."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Static facts of a leaf certificate, computed once per build. `subject`/`issuer` are
    in OpenSSL's one-line form (`/CN=host/O=org`), as the original prints them."""

    subject: str
    issuer: str
    subject_rfc4514: str
    issuer_rfc4514: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    serial: str
    san: tuple[str, ...]
    fingerprint_sha256: str
    key_type: str
    chain_length: int

    def as_dict(self) -> dict[str, Any]:
        """The certificate's facts for `view-cert` (SPEC 4): the original's keys with the
        original's types, then ours under keys of their own. Nothing here depends on the
        clock: life-cycle figures (`days_remaining`) are the gclasses' (`tls_listener`)."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": int(self.not_before.timestamp()),
            "not_after": int(self.not_after.timestamp()),
            "serial": self.serial,
            "not_before_iso": _iso(self.not_before),
            "not_after_iso": _iso(self.not_after),
            "subject_rfc4514": self.subject_rfc4514,
            "issuer_rfc4514": self.issuer_rfc4514,
            "san": list(self.san),
            "fingerprint_sha256": self.fingerprint_sha256,
            "key_type": self.key_type,
            "chain_length": self.chain_length,
        }


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# File checks: each returns the file's bytes or raises a precise CertificateFileError.
# ---------------------------------------------------------------------------


def _read_file(key: str, path: Any) -> bytes:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise TlsSettingError(key, None, "must be a file path")
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CertificateFileError(key, path, "dangling symlink") from None
        raise CertificateFileError(key, path, "file not found") from None
    except PermissionError:
        raise CertificateFileError(key, path, "permission denied") from None
    except OSError as exc:
        raise CertificateFileError(key, path, exc.strerror or "cannot stat") from None
    if stat.S_ISDIR(st.st_mode):
        raise CertificateFileError(key, path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise CertificateFileError(key, path, "not a regular file")
    if st.st_size > MAX_PEM_BYTES:
        raise CertificateFileError(
            key, path, f"file too large ({st.st_size} bytes, at most {MAX_PEM_BYTES})"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except PermissionError:
        raise CertificateFileError(key, path, "permission denied") from None
    except OSError as exc:
        raise CertificateFileError(key, path, exc.strerror or "cannot read") from None
    if len(data) > MAX_PEM_BYTES:  # grew between stat and read
        raise CertificateFileError(key, path, f"file too large (more than {MAX_PEM_BYTES} bytes)")
    if not data.strip():
        raise CertificateFileError(key, path, "empty file")
    return data


def _not_pem_reason(data: bytes, what: str) -> str:
    # DER is an ASN.1 SEQUENCE: first byte 0x30. Naming it saves the operator a guess.
    if data[:1] == b"\x30":
        return f"not a PEM {what} (DER?)"
    return f"not a PEM {what} (garbage)"


def _load_certs(key: str, path: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read_file(key, path)
    if b"-----BEGIN" not in data:
        raise CertificateFileError(key, path, _not_pem_reason(data, "certificate"))
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateFileError(key, path, "no CERTIFICATE block in PEM file")
    if data.count(b"-----BEGIN CERTIFICATE-----") != data.count(b"-----END CERTIFICATE-----"):
        raise CertificateFileError(key, path, "truncated/garbage PEM")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateFileError(key, path, "truncated/garbage PEM") from None
    if not certs:
        raise CertificateFileError(key, path, "truncated/garbage PEM")
    return data, certs


def _load_key(key: str, path: str) -> tuple[bytes, Any]:
    data = _read_file(key, path)
    if b"-----BEGIN" not in data:
        raise CertificateFileError(key, path, _not_pem_reason(data, "private key"))
    if b"ENCRYPTED" in data.split(b"-----END", 1)[0]:
        raise CertificateFileError(key, path, "encrypted private key (no passphrase configured)")
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateFileError(
            key, path, "encrypted private key (no passphrase configured)"
        ) from None
    except ValueError:
        raise CertificateFileError(key, path, "truncated/garbage PEM") from None
    except Exception:  # cryptography raises backend errors on unsupported key types
        raise CertificateFileError(key, path, "unreadable private key") from None


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_type(public_key: Any) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVE_NAMES.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size}"
    return type(public_key).__name__


def _san(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(getattr(name, "value", name)) for name in ext)


# OpenSSL's short names where RFC 4514 has none (X509_NAME_oneline prints these).
_ONELINE_NAMES = {"1.2.840.113549.1.9.1": "emailAddress", "2.5.4.5": "serialNumber"}


def _oneline(name: x509.Name) -> str:
    """`/CN=host/O=org`: OpenSSL's X509_NAME_oneline form, RDNs in the certificate's order."""
    out = []
    for attr in name:
        short = attr.rfc4514_attribute_name
        out.append(f"/{_ONELINE_NAMES.get(short, short)}={attr.value!s}")
    return "".join(out)


def _cert_info(certs: list[x509.Certificate]) -> CertInfo:
    leaf = certs[0]
    return CertInfo(
        subject=_oneline(leaf.subject),
        issuer=_oneline(leaf.issuer),
        subject_rfc4514=leaf.subject.rfc4514_string(),
        issuer_rfc4514=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=format(leaf.serial_number, "X"),
        san=_san(leaf),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        key_type=_key_type(leaf.public_key()),
        chain_length=len(certs),
    )


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise TlsSettingError(key, None, f"not a boolean: {value!r}")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The non-file crypto settings, checked and canonical (engine-neutral).

    `min_version` is "1.2" or "1.3"; `ciphers` the OpenSSL cipher string (None: the
    engine's secure default); `verify_mode` one of VERIFY_MODES; `verify_depth` the most
    intermediate CAs allowed in a client chain (None: no limit of ours).
    """

    min_version: str = "1.2"
    ciphers: str | None = None
    verify_mode: str = "none"
    verify_depth: int | None = None
    disable_renegotiation: bool = True
    ecdh_curve: str = DEFAULT_ECDH_CURVE


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Everything a context factory needs, exactly as validated; no path is read again.

    `cert_chain_pem` and `key_pem` are the files' bytes (leaf first, then the chain), `leaf_der`
    the leaf in DER, `ca_der` the client CA certificates in DER (empty: no client CA), `info`
    the leaf's facts, `crypto` a copy of the dict this was built from (paths name the files
    in errors). Never log or answer `key_pem`.
    """

    cert_chain_pem: bytes
    key_pem: bytes = field(repr=False)
    leaf_der: bytes
    ca_der: tuple[bytes, ...]
    info: CertInfo
    settings: TlsSettings
    crypto: Mapping[str, Any]

    @property
    def cert_path(self) -> str:
        return os.fspath(self.crypto["ssl_certificate"])


def _settings(crypto: Mapping[str, Any], has_ca: bool) -> TlsSettings:
    min_version = str(crypto.get("ssl_min_version") or DEFAULT_MIN_VERSION)
    if min_version.lower() not in MIN_VERSIONS:
        raise TlsSettingError(
            "ssl_min_version", None, f"unsupported version {min_version!r} (TLSv1.2 or TLSv1.3)"
        )
    mode_name = crypto.get("ssl_verify_mode")
    if mode_name is not None and str(mode_name).lower() not in VERIFY_MODES:
        raise TlsSettingError(
            "ssl_verify_mode", None, f"unknown mode {mode_name!r} (none, optional, required)"
        )
    if has_ca:
        mode = str(mode_name or "required").lower()
    elif mode_name is not None and str(mode_name).lower() != "none":
        raise TlsSettingError(
            "ssl_verify_mode", None, "requires ssl_trusted_certificate (the client CA)"
        )
    else:
        mode = "none"
    depth = crypto.get("ssl_verify_depth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise TlsSettingError("ssl_verify_depth", None, f"not a non-negative integer: {depth!r}")
    ciphers = crypto.get("ssl_ciphers")
    curve = crypto.get("ssl_ecdh_curve") or DEFAULT_ECDH_CURVE
    if not isinstance(curve, str):
        raise TlsSettingError("ssl_ecdh_curve", None, f"not a group name: {curve!r}")
    return TlsSettings(
        min_version=MIN_VERSIONS[min_version.lower()],
        ciphers=str(ciphers) if ciphers else None,
        verify_mode=mode,
        verify_depth=depth,
        disable_renegotiation=_bool(
            "ssl_disable_renegotiation", crypto.get("ssl_disable_renegotiation", True)
        ),
        ecdh_curve=curve,
    )


def _check_chain_order(path: str, certs: list[x509.Certificate], key_spki: bytes) -> None:
    """Leaf first, then each certificate's issuer: a chain in another order is said so, not
    reported as a key mismatch (the key matches a certificate further down)."""
    for i, cert in enumerate(certs[1:], start=1):
        if _spki(cert.public_key()) == key_spki:
            raise CertificateFileError(
                "ssl_certificate",
                path,
                f"chain in wrong order: the certificate of the key is #{i + 1}, it must be first",
            )
    for i in range(len(certs) - 1):
        if certs[i].issuer != certs[i + 1].subject:
            raise CertificateFileError(
                "ssl_certificate",
                path,
                f"chain in wrong order: certificate #{i + 2} ({certs[i + 1].subject.rfc4514_string()})"
                f" is not the issuer of #{i + 1} ({certs[i].issuer.rfc4514_string()} is)",
            )


def load_material(crypto: Mapping[str, Any]) -> TlsMaterial:
    """Read and validate the files and settings of a `crypto` dict, each file once.

    Raises `TlsError` (naming key, file and problem) on the first thing wrong. Checks what
    can be checked without a TLS engine; a factory then proves the engine can use it.
    """
    for k in crypto:
        if k not in CRYPTO_KEYS:
            raise TlsSettingError(str(k), None, "unknown crypto key")
    cert_path = crypto.get("ssl_certificate")
    key_path = crypto.get("ssl_certificate_key")
    if not cert_path:
        raise TlsSettingError("ssl_certificate", None, "not configured")
    if not key_path:
        raise TlsSettingError("ssl_certificate_key", None, "not configured")

    cert_pem, certs = _load_certs("ssl_certificate", cert_path)
    key_pem, private_key = _load_key("ssl_certificate_key", key_path)
    key_spki = _spki(private_key.public_key())
    if key_spki != _spki(certs[0].public_key()):
        _check_chain_order(os.fspath(cert_path), certs, key_spki)
        raise KeyMismatchError(
            "ssl_certificate_key",
            os.fspath(key_path),
            f"private key does not match certificate {os.fspath(cert_path)}",
        )
    _check_chain_order(os.fspath(cert_path), certs, key_spki)
    trusted = crypto.get("ssl_trusted_certificate")
    ca_der: tuple[bytes, ...] = ()
    if trusted:
        _, ca_certs = _load_certs("ssl_trusted_certificate", trusted)
        ca_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in ca_certs)
    return TlsMaterial(
        cert_chain_pem=cert_pem,
        key_pem=key_pem,
        leaf_der=certs[0].public_bytes(serialization.Encoding.DER),
        ca_der=ca_der,
        info=_cert_info(certs),
        settings=_settings(crypto, bool(ca_der)),
        crypto=dict(crypto),
    )
