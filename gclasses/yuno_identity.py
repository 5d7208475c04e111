"""Yuno identity that cannot be claimed: a secret per yuno, checked before the ACK.

`list-yunos` shows every yuno's id, and any admitted peer can put an id in its identity card,
so an id alone proves nothing. The agent gives each yuno it launches a secret of its own,
in a 0600 file beside the yuno's run files (`<work_dir>/yunos/<role>^<name>/<id>.secret`, its
path kept in the agent's registry): the yuno's config names the file (`agent_secret_file`), never the secret, so it reaches no argv, no
log and no answer. The yuno reads it and presents it in its identity card (`yuno_secret`).
A yuno started by hand does the same with a file the operator provides, a copy of which
the agent finds as `<yuno_secrets_dir>/<id>.secret`.

The agent judges a claim (`judge`) before its ACK:
* an id whose link is live is refused, whatever is presented: the first link keeps it;
* an id with a known secret needs that secret (compared in constant time);
* an id without one registers as *unverified*, and cannot take over an entry that is
  verified or launched by the agent.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SECRET_KEY = "yuno_secret"  # the identity card's key
#: Shortest secret accepted from a file: shorter is an operator's mistake, not a secret.
MIN_SECRET = 16


class Entry(Protocol):
    """What `judge` reads of a registry entry."""

    launched: bool
    verified: bool

    @property
    def label(self) -> str: ...

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    result: int
    comment: str
    verified: bool = False


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def write_secret(path: Path, secret: str) -> None:
    """Create `path` 0600 with the secret (never wider, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secret + "\n")


def read_secret(path: str | Path) -> str | None:
    """The secret in `path`, or None when there is no such file. Raises ValueError when the
    file is there but holds no usable secret (too short)."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read(4096).strip()
    except FileNotFoundError:
        return None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{path}: a yuno secret needs at least {MIN_SECRET} characters")
    return secret


def operator_secret(yuno_id: str, secrets_dir: Path) -> str | None:
    """The operator's copy of a hand-started yuno's secret (a launched yuno's file is in the
    registry entry). `yuno_id` was checked by `ievent.validate_identity_card` (a safe name)."""
    return read_secret(secrets_dir / f"{yuno_id}.secret")


def judge(
    yuno_id: str, entry: Entry | None, card: Mapping[str, Any], expected: str | None
) -> Verdict:
    """Whether the peer presenting `card` may be yuno `yuno_id` now (see the module doc)."""
    if entry is not None and entry.connected:
        return Verdict(-1, f"Yuno id '{yuno_id}' is already connected ({entry.label})")
    presented = card.get(SECRET_KEY)
    if expected is not None:
        if isinstance(presented, str) and hmac.compare_digest(
            presented.encode(), expected.encode()
        ):
            return Verdict(0, "", verified=True)
        return Verdict(-1, f"Yuno id '{yuno_id}' needs its secret: missing or wrong")
    if entry is not None and (entry.verified or entry.launched):
        return Verdict(-1, f"Yuno id '{yuno_id}' is taken: an unverified yuno cannot claim it")
    return Verdict(0, "", verified=False)
