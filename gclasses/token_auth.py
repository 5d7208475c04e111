"""What the two listeners that admit clients by token share (C_IEVENT_SRV's control port and
C_METRICS's scrape port): the token-length rule, the comparison, and the loopback test that
decides when a plain (non-TLS) port is acceptable."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from yuneta.errors import AttrError


def check_auth_tokens(gclass: str, attrs: dict[str, Any]) -> None:
    """Refuse (AttrError naming the token by position, never its text) an `auth_tokens`
    entry that is not a string of at least `min_token_length` characters."""
    shortest = attrs["min_token_length"]
    for i, token in enumerate(attrs["auth_tokens"]):
        if not isinstance(token, str) or len(token) < shortest:
            raise AttrError(
                gclass,
                "auth_tokens",
                f"token #{i + 1} is shorter than min_token_length ({shortest} characters)",
            )


def token_matches(given: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether `given` is one of `tokens`. Compared with every token, always, in constant
    time: how long it takes tells nothing about which token, or how much of one, matched."""
    return any([hmac.compare_digest(given, token) for token in tokens])


def is_loopback(host: str) -> bool:
    """Whether a listener bound to `host` can only be reached from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
