"""What every TLS listener gclass shares: the certificate commands and their attributes.

C_TCP_S and C_IEVENT_SRV (and C_UDP_S later) mix `TlsListener` in. It owns the listener's
`Ytls` and gives `reload-certs`, `view-cert` and reload-on-write of `crypto`, with the
answers of SPEC 5: a refused reload keeps the old context, says exactly why, and is logged.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from yuneta.command import envelope
from yuneta.errors import CommandError
from yuneta.gclass import Attr, Command, Flag
from yuneta.ytls import TlsError, Ytls

#: The URL scheme decides TLS (SPEC 4): these are secure, their plain twins are not.
SECURE_SCHEMES = {
    "tcps": True,
    "ssl": True,
    "wss": True,
    "https": True,
    "mqtts": True,
    "udps": True,
    "tcp": False,
    "ws": False,
    "http": False,
    "mqtt": False,
    "udp": False,
}

NOT_TLS = "Listener is not TLS-enabled or not running"
NO_CERT = "Listener is not TLS-enabled or has no certificate"

TLS_ATTRS = (
    Attr(
        "dict",
        "crypto",
        Flag.RD | Flag.WR,
        {},
        "TLS settings: ssl_certificate, ssl_certificate_key, ...",
    ),
    Attr("bool", "use_ssl", Flag.RD, False, "TLS enabled (from the URL scheme)"),
    Attr("int", "reloads", Flag.RSTATS, 0, "Successful certificate reloads"),
    Attr("int", "reload_failures", Flag.RSTATS, 0, "Refused certificate reloads"),
    Attr("str", "last_reload_error", Flag.RD, "", "Why the last refused reload was refused"),
)

TLS_COMMANDS = (
    Command("reload-certs", "cmd_reload_certs", (), "Reload this listener's TLS certificates"),
    Command("view-cert", "cmd_view_cert", (), "View the certificate this listener serves"),
)


def parse_url(url: str, schemes: tuple[str, ...]) -> tuple[str, str, int, bool]:
    """(scheme, host, port, use_ssl) of a listener URL whose scheme is one of `schemes`.

    Raises ValueError naming the URL and the problem. Port 0 picks a free port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"url {url!r}: scheme must be one of {', '.join(schemes)}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url {url!r}: {exc}") from None
    if port is None:
        raise ValueError(f"url {url!r}: a port is required (0 picks a free one)")
    return scheme, parts.hostname or "127.0.0.1", port, SECURE_SCHEMES[scheme]


class TlsListener:
    # Mixed in before GObj, which provides attrs, running and log().
    """Mixin for a GObj with the TLS_ATTRS; `self.ytls` is set by the listener's mt_start."""

    ytls: Ytls | None = None

    def build_ytls(self) -> Ytls:
        """The listener's Ytls from its `crypto` (raises TlsError: a start failure)."""
        self.ytls = Ytls(self.attrs["crypto"])
        return self.ytls

    def cert_fields(self) -> dict[str, Any]:
        if self.ytls is None:
            return {}
        info = self.ytls.cert_info()
        return {
            "subject": info["subject"],
            "serial": info["serial"],
            "not_after": info["not_after"],
        }

    def reload_tls(self) -> dict[str, Any]:
        """Build, validate and swap in a context from `crypto`; CommandError when refused."""
        if self.ytls is None or not self.running:
            raise CommandError(NOT_TLS)
        try:
            self.ytls.reload(self.attrs["crypto"])
        except TlsError as exc:
            self.attrs["reload_failures"] += 1
            self.attrs["last_reload_error"] = str(exc)
            self.log(
                "error",
                "TLS reload refused, old certificate kept",
                error=str(exc),
                key=exc.key,
                path=exc.path,
            )
            raise CommandError(str(exc)) from None
        self.attrs["reloads"] += 1
        self.attrs["last_reload_error"] = ""
        info = self.ytls.cert_info()
        self.log(
            "info",
            "TLS certificates reloaded",
            subject=info["subject"],
            serial=info["serial"],
            not_after=info["not_after"],
            days_remaining=info["days_remaining"],
        )
        return info

    def mt_writing(self, name: str) -> None:
        if name == "crypto" and self.ytls is not None and self.running:
            self.reload_tls()  # raises on bad material: the write is refused, old value restored

    def cmd_reload_certs(self, cmd: str, kw: dict, src: Any) -> dict:
        info = self.reload_tls()
        return envelope(0, "TLS certificates reloaded", None, {**info, "url": self.attrs["url"]})

    def cmd_view_cert(self, cmd: str, kw: dict, src: Any) -> dict:
        if self.ytls is None or not self.running:
            return envelope(-1, NO_CERT)
        return envelope(0, "", None, {**self.ytls.cert_info(), "url": self.attrs["url"]})
