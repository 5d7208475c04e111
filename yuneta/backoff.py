"""Per-address back-off after failed authentications: token guessing slowed to a crawl.

Each address gets a few free failures; after that every failure doubles the time before the
next attempt from that address is even checked (up to `max_delay`). An attempt inside that
window is refused without looking at its token, so a guesser learns nothing from it, and
one address's failures never slow another address. A success, or `forget_after` seconds
without failures, clears an address. At most `max_addresses` are remembered (the oldest
go first), so a flood of sources cannot grow it without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    not_before: float = 0.0
    last_failure: float = 0.0


class FailureBackoff:
    """Failure counts and waiting windows per address (one thread: the I/O loop's)."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_delay: float = 0.25,
        max_delay: float = 60.0,
        forget_after: float = 600.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait_left(self, address: str) -> float:
        """Seconds before an attempt from `address` may be checked (0 when it may now)."""
        record = self._records.get(address)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last_failure > self.forget_after:
            del self._records[address]
            return 0.0
        return max(0.0, record.not_before - now)

    def failed(self, address: str) -> None:
        now = self.clock()
        record = self._records.pop(address, None) or _Record()
        record.failures += 1
        record.last_failure = now
        extra = record.failures - self.free_failures
        if extra > 0:
            record.not_before = now + min(
                self.max_delay, self.first_delay * 2 ** min(extra - 1, 32)
            )
        self._records[address] = record  # most recent last
        while len(self._records) > self.max_addresses:
            self._records.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._records.pop(address, None)
