"""TLS contexts for Yuneta listeners: build, validate, hot-reload, describe (the C "ytls").

`build_server_context` turns a listener's `crypto` dict into a brand-new `ssl.SSLContext`
after checking every file with `cryptography` first, so a bad certificate yields a precise
operator-facing `TlsError` (naming the crypto key, the file and the problem, never any key
material) instead of a half-configured live context. Each file is read once: the context is
loaded from exactly the bytes that were validated (through anonymous memory files, so the key
never touches disk), not by re-reading paths that certbot may be swapping meanwhile. `Ytls` owns the current context of one
listener: `reload()` builds and validates a fresh one and swaps a single reference, so new
sessions get the new certificate while live sessions keep the context their `SSLObject` was
wrapped from; an old context is freed when its last session ends. Threading: `Ytls` is safe to
call from any thread; reloads are serialised by a lock, and readers (the I/O loop thread,
calling `get_context` at accept time) see either the old or the new context, never a mix.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import math
import os
import ssl
import stat
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from yuneta.errors import YunetaError

DEFAULT_CIPHERS = "HIGH:!aNULL:!kRSA:!PSK:!SRP:!MD5:!RC4"
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
    }
)

_MIN_VERSIONS = {
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
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
    """Static facts of a leaf certificate, computed once per build."""

    subject: str
    issuer: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    serial: str
    san: tuple[str, ...]
    fingerprint_sha256: str
    key_type: str
    chain_length: int

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """The `view-cert` data; `days_remaining` is computed against `now` (epoch seconds)."""
        now = time.time() if now is None else now
        not_after_epoch = int(self.not_after.timestamp())
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "not_before_epoch": int(self.not_before.timestamp()),
            "not_after_epoch": not_after_epoch,
            "serial": self.serial,
            "days_remaining": math.floor((not_after_epoch - now) / 86400),
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
    try:
        with open(path, "rb") as f:
            data = f.read()
    except PermissionError:
        raise CertificateFileError(key, path, "permission denied") from None
    except OSError as exc:
        raise CertificateFileError(key, path, exc.strerror or "cannot read") from None
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


def _cert_info(certs: list[x509.Certificate]) -> CertInfo:
    leaf = certs[0]
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=format(leaf.serial_number, "X"),
        san=_san(leaf),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        key_type=_key_type(leaf.public_key()),
        chain_length=len(certs),
    )


def _load_cert_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # `load_cert_chain` only takes paths. Re-reading the configured paths would load whatever
    # is on disk now (certbot swaps its links one at a time), not what was validated; a temp
    # file would put the key on disk. An anonymous memory file (memfd, close-on-exec, never
    # linked in any directory) opened through /proc/self/fd holds exactly the validated bytes.
    fds: list[int] = []
    try:
        for name, data in (("yuneta-cert", cert_pem), ("yuneta-key", key_pem)):
            fd = os.memfd_create(name)
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)


# Python's ssl has no verify-depth setter, so `_set_verify_depth` calls libssl through ctypes
# with the SSL_CTX pointer read from CPython's private PySSLContext struct (its first field
# after PyObject_HEAD, stable from CPython 3.7 to 3.13). RISK: if a CPython release reorders
# that struct, the pointer is garbage and writing through it corrupts memory. So it is only
# done when ssl_verify_depth is configured, on CPython, on a context we just created, and only
# after two reads through the pointer agree with what the public API says: the options word
# equals `ctx.options` and the verify depth is still OpenSSL's unset default (-1 in OpenSSL
# 1.1 and 3.x; 100, the effective limit, in older builds). Anything else refuses the setting.
_DEFAULT_VERIFY_DEPTHS = (-1, 100)


def _set_verify_depth(ctx: ssl.SSLContext, depth: int) -> None:
    if sys.implementation.name != "cpython" or type(ctx) is not ssl.SSLContext:
        raise TlsSettingError(
            "ssl_verify_depth", None, "not supported on this Python (no verify-depth API)"
        )
    libssl = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
    try:
        get_options = libssl.SSL_CTX_get_options
        get_depth = libssl.SSL_CTX_get_verify_depth
        set_depth = libssl.SSL_CTX_set_verify_depth
    except AttributeError:
        raise TlsSettingError(
            "ssl_verify_depth", None, "not supported by this OpenSSL build (no verify-depth API)"
        ) from None
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    get_depth.argtypes, get_depth.restype = [ctypes.c_void_p], ctypes.c_int
    set_depth.argtypes, set_depth.restype = [ctypes.c_void_p, ctypes.c_int], None
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if (
        not ssl_ctx
        or get_options(ssl_ctx) != int(ctx.options)
        or get_depth(ssl_ctx) not in _DEFAULT_VERIFY_DEPTHS
    ):
        raise TlsSettingError(
            "ssl_verify_depth",
            None,
            "cannot be applied safely on this Python build (unexpected SSLContext layout)",
        )
    set_depth(ssl_ctx, depth)
    if get_depth(ssl_ctx) != depth:
        raise TlsSettingError("ssl_verify_depth", None, "could not be applied")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise TlsSettingError(key, None, f"not a boolean: {value!r}")


# ---------------------------------------------------------------------------
# Context building
# ---------------------------------------------------------------------------


def build_server_context_with_info(crypto: Mapping[str, Any]) -> tuple[ssl.SSLContext, CertInfo]:
    """Build and validate a brand-new server context; return it with its leaf `CertInfo`.

    Raises `TlsError` (naming key, file and problem) before anything is returned.
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
    if _spki(private_key.public_key()) != _spki(certs[0].public_key()):
        raise KeyMismatchError(
            "ssl_certificate_key",
            os.fspath(key_path),
            f"private key does not match certificate {os.fspath(cert_path)}",
        )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    min_version = str(crypto.get("ssl_min_version") or DEFAULT_MIN_VERSION)
    try:
        ctx.minimum_version = _MIN_VERSIONS[min_version.lower()]
    except KeyError:
        raise TlsSettingError(
            "ssl_min_version", None, f"unsupported version {min_version!r} (TLSv1.2 or TLSv1.3)"
        ) from None
    ciphers = crypto.get("ssl_ciphers") or DEFAULT_CIPHERS
    try:
        ctx.set_ciphers(str(ciphers))
    except ssl.SSLError:
        raise TlsSettingError("ssl_ciphers", None, f"no cipher matches {ciphers!r}") from None
    if _bool("ssl_disable_renegotiation", crypto.get("ssl_disable_renegotiation", True)):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        _load_cert_chain_from_memory(ctx, cert_pem, key_pem)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateFileError(
            "ssl_certificate",
            os.fspath(cert_path),
            f"chain does not load ({exc.__class__.__name__})",
        ) from None

    trusted = crypto.get("ssl_trusted_certificate")
    mode_name = crypto.get("ssl_verify_mode")
    if mode_name is not None and str(mode_name).lower() not in _VERIFY_MODES:
        raise TlsSettingError(
            "ssl_verify_mode", None, f"unknown mode {mode_name!r} (none, optional, required)"
        )
    if trusted:
        _, ca_certs = _load_certs("ssl_trusted_certificate", trusted)
        # The very certificates validated above, as DER (cadata bytes), not the path again.
        ca_der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in ca_certs)
        try:
            ctx.load_verify_locations(cadata=ca_der)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateFileError(
                "ssl_trusted_certificate",
                os.fspath(trusted),
                f"CA file does not load ({exc.__class__.__name__})",
            ) from None
        ctx.verify_mode = _VERIFY_MODES[str(mode_name or "required").lower()]
    elif mode_name is not None and str(mode_name).lower() != "none":
        raise TlsSettingError(
            "ssl_verify_mode", None, "requires ssl_trusted_certificate (the client CA)"
        )
    depth = crypto.get("ssl_verify_depth")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise TlsSettingError(
                "ssl_verify_depth", None, f"not a non-negative integer: {depth!r}"
            )
        _set_verify_depth(ctx, depth)

    info = _cert_info(certs)
    # netio reads this to report which certificate a session was served with.
    ctx.yuneta_cert_serial = info.serial  # type: ignore[attr-defined]
    return ctx, info


def build_server_context(crypto: Mapping[str, Any]) -> ssl.SSLContext:
    """Build and validate a brand-new server `SSLContext` from a `crypto` dict.

    Never touches a live context. Raises `TlsError` with a precise message on any problem.
    """
    return build_server_context_with_info(crypto)[0]


class Ytls:
    """The current TLS context of one listener, hot-reloadable.

    `get_context` (zero-arg) is what the I/O layer calls at accept time. `reload()` swaps in
    a validated fresh context or raises `TlsError` leaving the old one serving.
    """

    def __init__(self, crypto: Mapping[str, Any]) -> None:
        self._lock = threading.Lock()
        self._built: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self.reload_count = 0
        ctx, info = build_server_context_with_info(crypto)
        self._built.add(ctx)
        # One tuple, one assignment: readers never see a context with another's info.
        self._current: tuple[ssl.SSLContext, CertInfo, dict[str, Any]] = (ctx, info, dict(crypto))

    @property
    def context(self) -> ssl.SSLContext:
        """The context new sessions are wrapped from."""
        return self._current[0]

    def get_context(self) -> ssl.SSLContext:
        """Zero-arg provider for `netio.TcpServer(tls=...)`: the current context."""
        return self._current[0]

    @property
    def crypto(self) -> dict[str, Any]:
        """A copy of the crypto dict the current context was built from."""
        return dict(self._current[2])

    def reload(self, crypto: Mapping[str, Any] | None = None) -> CertInfo:
        """Build a fresh context from `crypto` (default: the current one), validate, swap.

        Returns the new `CertInfo`. On failure raises `TlsError`; the old context stays.
        """
        with self._lock:
            new_crypto = dict(self._current[2] if crypto is None else crypto)
            ctx, info = build_server_context_with_info(new_crypto)
            self._built.add(ctx)
            self._current = (ctx, info, new_crypto)
            self.reload_count += 1
            return info

    def cert_info(self, now: float | None = None) -> dict[str, Any]:
        """`view-cert` data of the current certificate (see `CertInfo.as_dict`)."""
        return self._current[1].as_dict(now)

    def alive_contexts(self) -> int:
        """How many contexts built by this Ytls are still referenced (current included)."""
        return len(self._built)
