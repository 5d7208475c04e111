"""DTLS server contexts (pyOpenSSL) from validated TLS material, and their hot reload.

The DTLS twin of `yuneta.ytls`: `yuneta.tls_material.load_material` checks a listener's
`crypto` files exactly as for TCP (so a bad certificate is refused with the same words), and
`server_context` builds a pyOpenSSL `DTLS_SERVER_METHOD` context from those very bytes, never
reopening a path. Every new context is then proven by one DTLS handshake in memory through
`yuneta.dtls` itself (cookie exchange included) before it may serve. `Ydtls` is `Ytls` with
this factory: `reload()` swaps one reference, so new sessions get the new certificate while
live sessions keep the context they were born with; an old context goes with its last
session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL
from OpenSSL.crypto import X509
from OpenSSL.crypto import Error as CryptoError

from yuneta.dtls import DEFAULT_MTU, DtlsServer, DtlsSession, SessionClosed, enable_cookies
from yuneta.tls_material import (
    DEFAULT_CIPHERS,
    CertificateFileError,
    CertInfo,
    TlsMaterial,
    TlsSettingError,
    load_material,
)
from yuneta.ytls import Ytls

__all__ = ["Ydtls", "server_context", "probe_handshake", "check_crypto"]

#: DTLS 1.2's wire version (pyOpenSSL exports only the TLS ones); DTLS 1.0 stays refused.
_DTLS1_2_VERSION = 0xFEFD

#: Key types pyOpenSSL can serve with (others, e.g. DH or ML-DSA, are refused by name).
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)

_VERIFY_FLAGS = {
    "none": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


def server_context(material: TlsMaterial) -> SSL.Context:
    """A brand-new DTLS 1.2 server context from `material`, cookies on (not yet proven: see
    `probe_handshake`). Raises `TlsError` when OpenSSL refuses a setting or the chain."""
    settings = material.settings
    if settings.min_version != "1.2":
        raise TlsSettingError(
            "ssl_min_version", None, f"DTLS listeners speak DTLS 1.2 (got {settings.min_version})"
        )
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.set_min_proto_version(_DTLS1_2_VERSION)
    ciphers = settings.ciphers or DEFAULT_CIPHERS
    try:
        ctx.set_cipher_list(ciphers.encode())
    except SSL.Error:
        raise TlsSettingError("ssl_ciphers", None, f"no cipher matches {ciphers!r}") from None
    options = SSL.OP_NO_QUERY_MTU  # memory BIOs cannot answer; sessions set the MTU
    if settings.disable_renegotiation:
        options |= SSL.OP_NO_RENEGOTIATION
    ctx.set_options(options)
    # Idle sessions give their record buffers back (measured: about 6 of ~79 KiB per live
    # session; the rest is OpenSSL's DTLS state, which pyOpenSSL offers no knob to shrink).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        chain = x509.load_pem_x509_certificates(material.cert_chain_pem)
        ctx.use_certificate(chain[0])
        for cert in chain[1:]:
            ctx.add_extra_chain_cert(cert)
        key = serialization.load_pem_private_key(material.key_pem, password=None)
        if not isinstance(key, _SERVER_KEY_TYPES):
            raise CertificateFileError(
                "ssl_certificate_key",
                str(material.crypto["ssl_certificate_key"]),
                f"{type(key).__name__} cannot sign a DTLS handshake",
            )
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except (SSL.Error, ValueError, TypeError) as exc:
        raise CertificateFileError(
            "ssl_certificate", material.cert_path, f"chain does not load ({exc.__class__.__name__})"
        ) from None
    if material.ca_der:
        store = ctx.get_cert_store()
        assert store is not None
        try:
            for der in material.ca_der:
                ca = x509.load_der_x509_certificate(der)
                store.add_cert(X509.from_cryptography(ca))
                ctx.add_client_ca(ca)
        except (SSL.Error, CryptoError, ValueError) as exc:
            raise CertificateFileError(
                "ssl_trusted_certificate",
                str(material.crypto["ssl_trusted_certificate"]),
                f"CA file does not load ({exc.__class__.__name__})",
            ) from None
    ctx.set_verify(_VERIFY_FLAGS[settings.verify_mode])  # OpenSSL's own chain check
    if settings.verify_depth is not None:
        ctx.set_verify_depth(settings.verify_depth)
    enable_cookies(ctx)
    # Sessions report which certificate they were served with (HandshakeDone.cert_serial).
    ctx.yuneta_cert_serial = material.info.serial  # type: ignore[attr-defined]
    return ctx


_probe_client: SSL.Context | None = None


def _probe_client_context() -> SSL.Context:
    # Any certificate is accepted: the probe asks whether the server can complete a handshake
    # with what it loaded (sign with its key), not whether someone trusts it.
    global _probe_client
    if _probe_client is None:
        _probe_client = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    return _probe_client


def probe_handshake(ctx: SSL.Context, material: TlsMaterial) -> None:
    """Run one DTLS handshake in memory between a default client and `ctx`.

    Passes when the client was served `material`'s leaf and either completed the handshake
    or, under a required client certificate, got as far as the server's demand for one.
    Raises `CertificateFileError` naming the certificate and OpenSSL's reason otherwise.
    """
    peer = ("probe", 0)
    server = DtlsServer(lambda: ctx, mtu=DEFAULT_MTU)
    client = DtlsSession.client(_probe_client_context(), peer, 0.0)
    server_failure = ""
    for _ in range(8):  # HelloVerifyRequest, then two flights each way; a bound, not a budget
        for datagram in client.datagrams_to_send():
            for _session, event in server.receive(peer, datagram, 0.0):
                if isinstance(event, SessionClosed) and event.handshake_failed:
                    server_failure = event.reason
        for datagram, _addr in server.datagrams_to_send():
            client.receive_datagram(datagram, 0.0)
        if client.is_open or client.is_closed:
            break
    served = client.connection.get_peer_certificate(as_cryptography=True)
    served_der = served.public_bytes(serialization.Encoding.DER) if served is not None else b""
    needs_client_cert = material.settings.verify_mode == "required"
    if client.is_open or (needs_client_cert and served_der and "certificate" in server_failure):
        if served_der != material.leaf_der:
            raise CertificateFileError(
                "ssl_certificate", material.cert_path, "served another certificate"
            )
        return
    reason = server_failure or client.close_reason or "did not complete in memory"
    raise CertificateFileError(
        "ssl_certificate",
        material.cert_path,
        f"certificate cannot be used for a DTLS handshake ({reason})",
    )


def _checked(crypto: Mapping[str, Any]) -> tuple[SSL.Context, TlsMaterial]:
    material = load_material(crypto)
    ctx = server_context(material)
    probe_handshake(ctx, material)
    return ctx, material


def check_crypto(crypto: Mapping[str, Any]) -> CertInfo:
    """The whole check a DTLS reload runs, building nothing that stays; raises `TlsError`."""
    return _checked(crypto)[1].info


class Ydtls(Ytls):
    """The current DTLS context of one listener, hot-reloadable: `Ytls` with the pyOpenSSL
    factory. `get_context` is what `udpio.UdpServer` calls for each new session; `reload()`
    swaps in a validated, proven fresh context or raises `TlsError` leaving the old one."""

    build = staticmethod(_checked)
    session_factory = None  # DTLS sessions do not resume across reloads (yet)

    def dtls_context(self) -> SSL.Context:
        """Zero-arg provider for `udpio.UdpServer(tls=...)`: the current DTLS context
        (`get_context` under its pyOpenSSL type, which `build` guarantees)."""
        return cast(SSL.Context, self._current[0])
