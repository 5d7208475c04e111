"""What every TLS listener gclass shares: the certificate commands and their attributes.

C_TCP_S, C_UDP_S and C_IEVENT_SRV mix `TlsListener` in. It owns the listener's
`Ytls` and gives `reload-certs`, `view-cert` and reload-on-write of `crypto`, with the
answers of SPEC 5: a refused reload keeps the old context, says exactly why, and is logged.

With `cert_watch` on, the listener also watches the directories of its crypto files (for a
yuno with no agent, e.g. one per Kubernetes pod with the certificate in a mounted Secret)
and reloads itself after a change. certbot moves its `live/` links one at a time, so a new
certificate can meet the old key for a moment: a refusal that may be such a moment
(`is_transient_failure`) is retried after `RETRY_DELAYS`, and only the last one is final.
The watcher thread only posts EV_CERT_FILES_CHANGED; each gclass writes the two rows
(EV_CERT_FILES_CHANGED, EV_CERT_RELOAD_RETRY) into its own FSM.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from yuneta.command import envelope
from yuneta.errors import CommandError
from yuneta.gclass import Attr, Command, Flag, Param
from yuneta.scheduler import scheduler
from yuneta.watch import DEFAULT_DEBOUNCE, DirWatcher
from yuneta.ytls import TlsError, Ytls, check_crypto

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
    Attr(
        "bool",
        "cert_watch",
        Flag.RD | Flag.WR,
        False,
        "Watch the directories of the crypto files and reload when they change",
    ),
    Attr(
        "real",
        "cert_watch_debounce",
        Flag.RD | Flag.WR,
        DEFAULT_DEBOUNCE,
        "Seconds of quiet after the last file event before reloading",
    ),
)

#: Files of a `crypto` dict, whose directories `cert_watch` watches.
CRYPTO_FILE_KEYS = ("ssl_certificate", "ssl_certificate_key", "ssl_trusted_certificate")

#: Seconds between the attempts of a reload refused for a reason that may pass (bounded:
#: after the last one the refusal is final and the old certificate keeps serving).
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)

#: Refusals that a file swap in progress explains (certbot's links moved one at a time,
#: a copy not finished): what `ytls` says for a half-updated pair.
TRANSIENT_REASONS = (
    "does not match",
    "file not found",
    "dangling symlink",
    "empty file",
    "truncated",
    "cannot read",
)


def days_remaining(not_after: int, now: float | None = None) -> int:
    """Whole days from `now` (epoch s; default: the clock) until `not_after`, rounded down:
    0 on the last day, negative once expired. The expiry monitor's thresholds compare
    against this (C_YUNO `cert_warn_days`, `cert_critical_days`)."""
    now = time.time() if now is None else now
    return math.floor((not_after - now) / 86400)


def cert_view(facts: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """`view-cert` data: a certificate's facts (`Ytls.cert_info`) with `days_remaining`
    after `serial`, in the original's order of keys."""
    view: dict[str, Any] = {}
    for key, value in facts.items():
        view[key] = value
        if key == "serial":
            view["days_remaining"] = days_remaining(facts["not_after"], now)
    return view


def is_transient_failure(comment: str) -> bool:
    """True when a refused reload's reason may go away by itself within seconds."""
    return any(reason in comment for reason in TRANSIENT_REASONS)


def crypto_paths(crypto: dict[str, Any]) -> dict[str, str]:
    """The absolute paths of the files named in `crypto` (for view-cert and the agent)."""
    return {k: os.path.abspath(str(crypto[k])) for k in CRYPTO_FILE_KEYS if crypto.get(k)}


#: `reload-certs forget-sessions=1`: also drop every session and ticket key (key compromise).
FORGET_SESSIONS = Param(
    "bool", "forget-sessions", False, "Also forget TLS sessions: no client resumes after this"
)

TLS_COMMANDS = (
    Command(
        "reload-certs",
        "cmd_reload_certs",
        (FORGET_SESSIONS,),
        "Reload this listener's TLS certificates",
    ),
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
    """Mixin for a GObj with the TLS_ATTRS; `self.ytls` is set by the listener's mt_start.

    Being a TlsListener is what makes a gobj one: C_YUNO's reload-certs and expiry monitor
    find every running TLS listener by this class, whatever its gclass."""

    ytls: Ytls | None = None
    cert_watcher: DirWatcher | None = None
    _watch_generation = 0
    #: The whole check a reload of this listener runs, building nothing that stays (for
    #: `yuneta check`); C_UDP_S's is the DTLS one.
    check_crypto = staticmethod(check_crypto)
    if TYPE_CHECKING:  # provided by GObj
        attrs: dict[str, Any]
        running: bool
        full_name: str

        def log(self, level: str, msg: str, /, **fields: Any) -> None: ...

        def send_event(self, event: str, kw: dict | None = None, src: Any = None) -> int | None: ...

    def _on_handshake_failed(self, peer: Any, reason: str) -> None:
        """The I/O loop's report of a failed (D)TLS handshake: posted to the actor as
        EV_HANDSHAKE_FAILED, which each listener logs in its own words."""
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        self.send_event(
            "EV_HANDSHAKE_FAILED", {"peer": str(peer), "peer_ip": str(host), "reason": reason}
        )

    def build_ytls(self) -> Ytls:
        """The listener's Ytls from its `crypto` (raises TlsError: a start failure)."""
        self.ytls = Ytls(self.attrs["crypto"])
        return self.ytls

    def cert_info(self) -> dict[str, Any]:
        """`view-cert` data of the certificate served now (see `cert_view`)."""
        assert self.ytls is not None
        return cert_view(self.ytls.cert_info())

    def cert_fields(self) -> dict[str, Any]:
        if self.ytls is None:
            return {}
        info = self.ytls.cert_info()  # facts only: no clock needed
        return {
            "subject": info["subject"],
            "serial": info["serial"],
            "not_after": info["not_after"],
        }

    def reload_tls(self, will_retry: bool = False, forget_sessions: bool = False) -> dict[str, Any]:
        """Build, validate and swap in a context from `crypto`; CommandError when refused.

        `will_retry`: the caller tries again shortly if the reason is transient, so such a
        refusal is only a warning and not yet counted. Sessions survive (clients resume)
        unless `forget_sessions`."""
        if self.ytls is None or not self.running:
            raise CommandError(NOT_TLS)
        try:
            self.ytls.reload(self.attrs["crypto"], forget_sessions=forget_sessions)
        except TlsError as exc:
            if will_retry and is_transient_failure(str(exc)):
                self.log("warning", "TLS reload refused, will retry", error=str(exc))
                raise CommandError(str(exc)) from None
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
        info = self.cert_info()
        self.log(
            "info",
            "TLS certificates reloaded",
            subject=info["subject"],
            serial=info["serial"],
            not_after=info["not_after"],
            days_remaining=info["days_remaining"],
            forget_sessions=forget_sessions,
        )
        return info

    def mt_writing(self, name: str) -> None:
        if name == "crypto" and self.ytls is not None and self.running:
            self.reload_tls()  # raises on bad material: the write is refused, old value restored
        if name in ("crypto", "cert_watch", "cert_watch_debounce") and self.running:
            self.stop_cert_watch()
            self.start_cert_watch()

    def cmd_reload_certs(self, cmd: str, kw: dict, src: Any) -> dict:
        info = self.reload_tls(forget_sessions=bool(kw.get("forget-sessions")))
        return envelope(0, "TLS certificates reloaded", None, {**info, "url": self.attrs["url"]})

    def cmd_view_cert(self, cmd: str, kw: dict, src: Any) -> dict:
        if self.ytls is None or not self.running:
            return envelope(-1, NO_CERT)
        # crypto_paths (ours): the agent compares the served certificate with these files.
        return envelope(
            0,
            "",
            None,
            {
                **self.cert_info(),
                "url": self.attrs["url"],
                "crypto_paths": crypto_paths(self.ytls.crypto),
            },
        )

    # ----- cert_watch ---------------------------------------------------------------

    def start_cert_watch(self) -> None:
        """Watch the crypto files' directories when `cert_watch` is on (the listener's
        mt_start calls this once its Ytls is built)."""
        if not self.attrs["cert_watch"] or self.ytls is None or self.cert_watcher is not None:
            return
        dirs = {os.path.dirname(p) for p in crypto_paths(self.attrs["crypto"]).values()}
        self.cert_watcher = DirWatcher(
            dirs,
            lambda paths: self.send_event("EV_CERT_FILES_CHANGED", {"paths": paths}),
            debounce=self.attrs["cert_watch_debounce"],
            owner=self.full_name,
        )
        self.cert_watcher.start()
        self.log("info", "watching certificate files", **self.cert_watcher.status())

    def stop_cert_watch(self) -> None:
        self._watch_generation += 1  # drops the retries of the watcher being stopped
        if self.cert_watcher is not None:
            self.cert_watcher.stop()
            self.cert_watcher = None

    def ac_cert_files_changed(self, event: str, kw: dict, src: Any) -> int:
        self._watch_generation += 1  # a newer change restarts the retries
        self.log("info", "certificate files changed, reloading", paths=kw.get("paths"))
        return self._watch_reload(0, self._watch_generation)

    def ac_cert_reload_retry(self, event: str, kw: dict, src: Any) -> int:
        if kw.get("generation") != self._watch_generation:
            return 0
        return self._watch_reload(int(kw.get("attempt", 0)), self._watch_generation)

    def _watch_reload(self, attempt: int, generation: int) -> int:
        if self.ytls is None or not self.running:
            return -1
        retry = attempt < len(RETRY_DELAYS)
        try:
            self.reload_tls(will_retry=retry)
        except CommandError as exc:
            if not (retry and is_transient_failure(exc.comment)):
                return -1
            scheduler().call_at(
                time.monotonic() + RETRY_DELAYS[attempt],
                lambda: self.send_event(
                    "EV_CERT_RELOAD_RETRY", {"attempt": attempt + 1, "generation": generation}
                ),
            )
        return 0
