"""`yuneta check`: what `nginx -t` is to nginx, for a yuno config.

After the config itself (syntax, types, variables, log handlers: `yuneta.config`), every
TLS listener's material is validated exactly as `reload-certs` would (the gclass's own
`check_crypto`, DTLS's for C_UDP_S: files, size, PEM, key match, chain order, a handshake in
memory, so a key type TLS cannot use is refused), then its expiry is compared with the yuno's thresholds. One line per
listener says what was found; any failure makes the whole check fail.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterator
from typing import Any

from yuneta.config import ServiceNode, YunoConfig
from yuneta.errors import YunetaError
from yuneta.gclass import find_gclass


def _nodes(nodes: list[ServiceNode], prefix: str = "") -> Iterator[tuple[str, ServiceNode]]:
    for node in nodes:
        name = f"{prefix}{node.name}"
        yield name, node
        yield from _nodes(node.children, f"{name}.")


def _yuno_attr(config: YunoConfig, name: str) -> Any:
    if name in config.yuno:
        return config.yuno[name]
    return next(a.default for a in find_gclass("C_YUNO").GCLASS.attrs if a.name == name)


def check_listener(
    node: ServiceNode, check_crypto: Any, warn: float, critical: float, now: float
) -> tuple[bool, str]:
    """(ok, what was found) for one TLS listener, by the check its reload runs."""
    try:
        info = check_crypto(node.kw.get("crypto") or {})
    except YunetaError as exc:
        return False, f"FAILED: {exc}"
    days = (info.not_after.timestamp() - now) / 86400
    expires = info.not_after.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = f"{info.subject}, {info.key_type}, chain of {info.chain_length}"
    if info.not_before.timestamp() > now:
        return False, f"FAILED: not valid before {info.not_before.isoformat()} ({facts})"
    if days < 0:
        return False, f"FAILED: expired on {expires} ({facts})"
    if days <= critical:
        return False, f"FAILED: expires {expires}, in {days:.1f} days (critical at {critical:g})"
    if days <= warn:
        return (
            True,
            f"WARNING: expires {expires}, in {days:.1f} days (warning at {warn:g}); {facts}",
        )
    return True, f"OK: {facts}, expires {expires} ({int(days)} days)"


def _log_handlers(config: YunoConfig) -> tuple[bool, str]:
    handlers = config.environment.get("log_handlers") or {"to_stderr": {"handler_type": "stderr"}}
    parts = []
    for name, spec in handlers.items():
        kind = spec.get("handler_type", "stderr")
        if kind != "file":
            parts.append(f"{name} ({kind})")
            continue
        filename = os.path.abspath(spec["filename"])
        if os.path.exists(filename) and not os.access(filename, os.W_OK):
            return False, f"FAILED: {name}: {filename} is not writable"
        if os.path.isdir(filename):
            return False, f"FAILED: {name}: {filename} is a directory"
        rotation = f", rotated at {spec['max_bytes']} bytes" if spec.get("max_bytes") else ""
        parts.append(f"{name} (file {filename}{rotation})")
    return True, "OK: " + ", ".join(parts)


def check_config(config: YunoConfig, now: float | None = None) -> tuple[bool, list[str]]:
    """(everything ok, report lines) for a loaded config."""
    from gclasses.tls_listener import SECURE_SCHEMES, TlsListener

    now = time.time() if now is None else now
    warn = float(_yuno_attr(config, "cert_warn_days"))
    critical = float(_yuno_attr(config, "cert_critical_days"))
    ok, text = _log_handlers(config)
    lines = [f"log handlers: {text}"]
    listeners = 0
    for name, node in _nodes(config.services):
        gclass = find_gclass(node.gclass)
        if not issubclass(gclass, TlsListener):
            continue
        url = str(node.kw.get("url", ""))
        if not SECURE_SCHEMES.get(url.partition("://")[0].lower(), False):
            continue
        listeners += 1
        good, text = check_listener(node, gclass.check_crypto, warn, critical, now)
        ok = ok and good
        lines.append(f"listener {name} ({url}): {text}")
    if not listeners:
        lines.append("no TLS listener")
    return ok, lines
