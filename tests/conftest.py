"""Shared fixtures. Test gclasses are registered on import of kernel_helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The thread rule's debug check is on for the whole suite, and for every yuno it starts
# (children inherit the environment): a write to a gobj's attrs off its actor raises.
os.environ["YUNETA_CHECK_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import kernel_helpers  # noqa: E402,F401  (registers T_LAMP, T_COLLECTOR)

import gclasses  # noqa: E402,F401  (registers the product's gclasses, as the yuneta CLI does)


@pytest.fixture(autouse=True)
def thread_rule_kept():
    """Fails the test when any gobj's attrs were written off its actor, even if the error
    was caught and logged by the code that made it."""
    from yuneta.gobj import THREAD_RULE_VIOLATIONS

    THREAD_RULE_VIOLATIONS.clear()
    yield
    found = list(THREAD_RULE_VIOLATIONS)
    THREAD_RULE_VIOLATIONS.clear()
    assert not found, f"thread rule broken: {found}"


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the repo and the tests' gclasses importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Capture:
    """Collects the JSON log lines the yuneta logger emits, parsed."""

    def __init__(self) -> None:
        import logging

        from yuneta.log import JsonFormatter

        self.records: list[dict] = []
        capture = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                import json

                capture.records.append(json.loads(JsonFormatter().format(record)))

        self.handler = Handler(level=logging.DEBUG)

    def find(self, **fields: object) -> list[dict]:
        return [r for r in list(self.records) if all(r.get(k) == v for k, v in fields.items())]


@pytest.fixture
def yuneta_logs():
    """Every structured log line emitted during the test, as dicts."""
    import logging

    cap = _Capture()
    logger = logging.getLogger("yuneta")
    logger.addHandler(cap.handler)
    try:
        yield cap
    finally:
        logger.removeHandler(cap.handler)
