"""TLS contexts for Yuneta listeners with Python's `ssl`: build, prove, hot-reload (the C "ytls").

Validation lives in `yuneta.tls_material` (files -> `TlsMaterial`, engine-neutral); this
module is the stdlib-`ssl` context factory on top of it. `server_context` loads exactly the
validated bytes (through anonymous memory files, so the key never touches disk) and
`probe_handshake` then runs one TLS handshake in memory against the new context, because
OpenSSL loads material it cannot serve with (a DSA key, a curve no TLS 1.3 peer signs with):
a context is only ever handed out after it has completed a handshake. `check_crypto` is that
whole check (what a reload and `yuneta check` run). `Ytls` owns the current context of one
listener: `reload()` builds and proves a fresh one and swaps a single reference, so new
sessions get the new certificate while live sessions keep the context their `SSLObject` was
wrapped from; an old context is freed when its last session ends. Threading: `Ytls` is safe to
call from any thread; reloads are serialised by a lock, and readers (the I/O loop thread,
calling `get_context` at accept time) see either the old or the new context, never a mix.
"""

from __future__ import annotations

import os
import ssl
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from yuneta import sslcompat
from yuneta.tls_material import (
    CRYPTO_KEYS,
    DEFAULT_CIPHERS,
    DEFAULT_MIN_VERSION,
    CertificateFileError,
    CertInfo,
    KeyMismatchError,
    TlsError,
    TlsMaterial,
    TlsSettingError,
    load_material,
)

__all__ = [
    "CRYPTO_KEYS",
    "DEFAULT_CIPHERS",
    "DEFAULT_MIN_VERSION",
    "CertInfo",
    "CertificateFileError",
    "KeyMismatchError",
    "TlsError",
    "TlsSettingError",
    "Ytls",
    "build_server_context",
    "build_server_context_with_info",
    "check_crypto",
    "probe_handshake",
    "server_context",
    "session_context",
]

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


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


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """A brand-new stdlib server context loaded from `material` (not yet proven: see
    `probe_handshake`). Raises `TlsError` when `ssl` refuses a setting or the chain."""
    settings = material.settings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[settings.min_version]
    ciphers = settings.ciphers or DEFAULT_CIPHERS
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TlsSettingError("ssl_ciphers", None, f"no cipher matches {ciphers!r}") from None
    if settings.disable_renegotiation:
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    # A peer's TCP EOF without close_notify is an ordinary end, as it is to the I/O layer:
    # OpenSSL 3 would otherwise answer it with a fatal decode_error alert on the socket.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    try:
        ctx.set_ecdh_curve(settings.ecdh_curve)
    except (ValueError, ssl.SSLError):
        raise TlsSettingError(
            "ssl_ecdh_curve", None, f"unknown group {settings.ecdh_curve!r}"
        ) from None
    try:
        _load_cert_chain_from_memory(ctx, material.cert_chain_pem, material.key_pem)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateFileError(
            "ssl_certificate", material.cert_path, f"chain does not load ({exc.__class__.__name__})"
        ) from None
    if material.ca_der:
        try:
            ctx.load_verify_locations(cadata=b"".join(material.ca_der))
        except (ssl.SSLError, OSError) as exc:
            raise CertificateFileError(
                "ssl_trusted_certificate",
                os.fspath(material.crypto["ssl_trusted_certificate"]),
                f"CA file does not load ({exc.__class__.__name__})",
            ) from None
    ctx.verify_mode = _VERIFY_MODES[settings.verify_mode]
    if settings.verify_depth is not None:
        if not sslcompat.HAS_VERIFIED_CHAIN:
            raise TlsSettingError(
                "ssl_verify_depth", None, "not supported on this Python (no verified chain)"
            )
        # Python's ssl has no verify-depth setter: the I/O layer checks the verified chain
        # of each finished handshake against this and refuses (and counts) a longer one.
        ctx.yuneta_verify_depth = settings.verify_depth  # type: ignore[attr-defined]
    # netio reads this to report which certificate a session was served with.
    ctx.yuneta_cert_serial = material.info.serial  # type: ignore[attr-defined]
    return ctx


_probe_client: ssl.SSLContext | None = None


def _probe_client_context() -> ssl.SSLContext:
    # Any certificate is accepted: the probe asks whether the server can complete a
    # handshake with what it loaded (sign with its key), not whether someone trusts it.
    global _probe_client
    if _probe_client is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _probe_client = ctx
    return _probe_client


def probe_handshake(ctx: ssl.SSLContext, material: TlsMaterial) -> None:
    """Run one handshake in memory between a default client and `ctx`.

    Passes when the client completes it and was served `material`'s leaf (under mTLS the
    client finishes before the server asks for its certificate, so that is not needed).
    Raises `CertificateFileError` naming the certificate and OpenSSL's reason otherwise.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _probe_client_context().wrap_bio(c_in, c_out, server_side=False)
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    server_error: ssl.SSLError | None = None
    for _ in range(6):  # a full handshake takes two client flights; a bound, not a budget
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            raise CertificateFileError(
                "ssl_certificate",
                material.cert_path,
                f"certificate cannot be used for a TLS handshake ({_reason(server_error or exc)})",
            ) from None
        else:
            if client.getpeercert(binary_form=True) != material.leaf_der:
                raise CertificateFileError(
                    "ssl_certificate", material.cert_path, "served another certificate"
                )
            return
        s_in.write(c_out.read())
        if server_error is None:
            try:
                server.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                server_error = exc
        c_in.write(s_out.read())
    raise CertificateFileError(
        "ssl_certificate", material.cert_path, "TLS handshake did not complete in memory"
    )


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.__class__.__name__).lower().replace("_", " ")


def _checked(crypto: Mapping[str, Any]) -> tuple[ssl.SSLContext, TlsMaterial]:
    material = load_material(crypto)
    ctx = server_context(material)
    probe_handshake(ctx, material)
    return ctx, material


def check_crypto(crypto: Mapping[str, Any]) -> CertInfo:
    """The whole check a reload runs (files, key match, settings, a handshake in memory),
    building nothing that stays. Returns the leaf's `CertInfo`; raises `TlsError`."""
    return _checked(crypto)[1].info


def build_server_context_with_info(crypto: Mapping[str, Any]) -> tuple[ssl.SSLContext, CertInfo]:
    """Build, validate and prove a brand-new server context; return it with its `CertInfo`.

    Raises `TlsError` (naming key, file and problem) before anything is returned.
    """
    ctx, material = _checked(crypto)
    return ctx, material.info


def build_server_context(crypto: Mapping[str, Any]) -> ssl.SSLContext:
    """Build, validate and prove a brand-new server `SSLContext` from a `crypto` dict.

    Never touches a live context. Raises `TlsError` with a precise message on any problem.
    """
    return _checked(crypto)[0]


def session_context(material: TlsMaterial, select: Any) -> ssl.SSLContext:
    """A listener-lifetime context carrying `material`'s settings but no certificate.

    Every connection is wrapped from it; `select(sslobj, server_name, ctx)`, called by
    OpenSSL on every ClientHello (with or without SNI), switches the session to the current
    certificate's context. OpenSSL keeps the session cache and the ticket keys on the context
    a session was created from (`SSL_CTX` `session_ctx`), so they outlive certificate reloads:
    a client resumes after `reload-certs` (TLS 1.2 ticket or id, TLS 1.3 ticket). Verify mode
    and protocol options are copied from here at wrap time, so they must match the
    certificate context's: a reload that changes them builds a new session context.
    """
    settings = material.settings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[settings.min_version]
    ctx.set_ciphers(settings.ciphers or DEFAULT_CIPHERS)  # already accepted by server_context
    if settings.disable_renegotiation:
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # as server_context
    ctx.set_ecdh_curve(settings.ecdh_curve)  # also accepted by server_context already
    if material.ca_der:
        ctx.load_verify_locations(cadata=b"".join(material.ca_der))
    ctx.verify_mode = _VERIFY_MODES[settings.verify_mode]
    ctx.sni_callback = select
    return ctx


def _session_key(material: TlsMaterial) -> tuple[Any, ...]:
    # What a session context copies into each session; the client CA too, because a session
    # resumed under a changed CA would skip checking the client against the new one.
    return (material.settings, material.ca_der)


class Ytls:
    """The TLS contexts of one listener: a listener-lifetime session context and the
    current certificate's context, hot-reloadable (see `session_context`).

    `get_context` (zero-arg) is what the I/O layer calls at accept time: the session
    context. `context` is the current certificate's. `reload()` swaps in a validated, proven
    fresh certificate context or raises `TlsError` leaving the old one serving;
    `forget_sessions=True` also replaces the session context, so no ticket or session id
    issued before resumes (for a key compromise).
    """

    #: crypto -> (proven context, its material); the DTLS listener's `Ydtls` plugs in the
    #: pyOpenSSL factory (yuneta.dtls_context) and keeps the rest of this class as it is.
    build: Callable[[Mapping[str, Any]], tuple[Any, TlsMaterial]] = staticmethod(_checked)
    #: (material, selector) -> the listener-lifetime session context; None: no such context.
    session_factory: Callable[[TlsMaterial, Any], Any] | None = staticmethod(session_context)

    def __init__(self, crypto: Mapping[str, Any]) -> None:
        self._lock = threading.Lock()
        self._built: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self.reload_count = 0
        self.sessions_forgotten = 0
        ctx, material = self.build(crypto)
        self._built.add(ctx)
        # One tuple, one assignment: readers never see a context with another's material.
        self._current: tuple[ssl.SSLContext, TlsMaterial] = (ctx, material)
        self._session_ctx = self._new_session_context(material)

    def _new_session_context(self, material: TlsMaterial) -> Any:
        # Engines that keep sessions otherwise (DTLS) have no session context: the provider
        # is then the current certificate's context itself.
        if self.session_factory is None:
            return None
        return self.session_factory(material, self._select)

    def _forgets(self, material: TlsMaterial, forget_sessions: bool) -> bool:
        """Whether a reload to `material` replaces the session context."""
        if self.session_factory is None:
            return False
        return forget_sessions or _session_key(material) != _session_key(self._current[1])

    def _select(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # OpenSSL calls this in the I/O thread inside each handshake; returning None goes on.
        sslobj.context = self._current[0]

    @property
    def context(self) -> ssl.SSLContext:
        """The current certificate's context (what new sessions are switched to)."""
        return self._current[0]

    def get_context(self) -> ssl.SSLContext:
        """Zero-arg provider for `netio.TcpServer(tls=...)`: the session context (or the
        current context, without a session factory)."""
        return self._session_ctx or self._current[0]

    @property
    def material(self) -> TlsMaterial:
        """The validated material the current context was built from."""
        return self._current[1]

    @property
    def crypto(self) -> dict[str, Any]:
        """A copy of the crypto dict the current context was built from."""
        return dict(self._current[1].crypto)

    def reload(
        self, crypto: Mapping[str, Any] | None = None, *, forget_sessions: bool = False
    ) -> CertInfo:
        """Build a fresh context from `crypto` (default: the current one), prove it, swap.

        Returns the new `CertInfo`. On failure raises `TlsError`; the old context stays (and
        sessions are not forgotten). Sessions survive unless `forget_sessions` or a change of
        the settings a session context carries.
        """
        with self._lock:
            ctx, material = self.build(self._current[1].crypto if crypto is None else crypto)
            renew = self._forgets(material, forget_sessions)
            session_ctx = self._new_session_context(material) if renew else None
            self._built.add(ctx)
            self._current = (ctx, material)
            if session_ctx is not None:
                self._session_ctx = session_ctx
                self.sessions_forgotten += 1
            self.reload_count += 1
            return material.info

    def cert_info(self) -> dict[str, Any]:
        """The current certificate's facts (see `CertInfo.as_dict`)."""
        return self._current[1].info.as_dict()

    def alive_contexts(self) -> int:
        """How many certificate contexts built by this Ytls are still referenced (current
        included)."""
        return len(self._built)
