"""DTLS test helpers: pyOpenSSL contexts from a TestCA's files, blocking clients, RSS."""

from __future__ import annotations

import os

from certs import Issued, TestCA
from OpenSSL import SSL, crypto

from yuneta.dtls import enable_cookies


def server_context(issued: Issued) -> SSL.Context:
    """A DTLS server context serving `issued`, cookies on (what the listener builds)."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(str(issued.cert_path))
    ctx.use_privatekey_file(str(issued.key_path))
    enable_cookies(ctx)
    ctx.yuneta_cert_serial = issued.serial
    return ctx


def client_context(ca: TestCA) -> SSL.Context:
    """A DTLS client context that verifies the server against `ca`."""
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca._ca_cert))
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def rss_kib() -> int:
    """Resident set size of this process, KiB."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
