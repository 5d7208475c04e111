"""The client side of TLS: one way to build the context that verifies a `wss://` server.

ycommand and a yuno's link to its agent (C_IEVENT_CLI) both connect to an agent and must
verify it the same way: the default context of the running Python (on 3.13 that includes
VERIFY_X509_STRICT, so certificates need key identifiers), trusting `cafile` when given or
else the system CAs. Server contexts are built from validated material by `yuneta.ytls`.
"""

from __future__ import annotations

import ssl


def client_context(url: str, cafile: str = "", *, insecure: bool = False) -> ssl.SSLContext | None:
    """The context to connect to `url`: None for a plain `ws://` URL.

    `insecure` (ycommand's `--insecure`, an operator's explicit choice) turns off both the
    hostname check and verification.
    """
    if not url.lower().startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=cafile or None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
