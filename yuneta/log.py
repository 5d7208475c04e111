"""Structured logging: one JSON object a line.

Every record carries time, level, the gobj's full name (`gobj`), the message (`msg`) and
the fields passed by the caller. Handlers (stderr, file) are set from a yuno config's
`environment`. A filter redacts anything that looks like private key material, so a key
never reaches a log even when a caller passes one by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "yuneta"
_logger = logging.getLogger(LOGGER_NAME)
_logger.propagate = False
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _redact(value: Any) -> Any:
    if isinstance(value, str) and "PRIVATE KEY" in value:
        return "<redacted: private key material>"
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Format a record as one compact JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t % 1 * 1e6):06d}Z",
            "level": record.levelname.lower(),
            "gobj": getattr(record, "gobj", "") or "",
            "msg": _redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out and not key.startswith("_"):
                out[key] = _redact(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["traceback"] = _redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_logging(handlers: dict[str, dict] | None = None, level: str = "info") -> None:
    """Install JSON handlers. `handlers` maps a name to `{"handler_type": "stderr"|"stdout"
    |"file", "filename": ..., "level": ...}`; none means stderr only."""
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
        old.close()
    _logger.setLevel(LEVELS.get(level, logging.INFO))
    handlers = handlers or {"to_stderr": {"handler_type": "stderr"}}
    for spec in handlers.values():
        kind = spec.get("handler_type", "stderr")
        if kind == "file":
            h: logging.Handler = logging.FileHandler(spec["filename"], encoding="utf-8")
        elif kind == "stdout":
            h = logging.StreamHandler(sys.stdout)
        else:
            h = logging.StreamHandler(sys.stderr)
        h.setLevel(LEVELS.get(spec.get("level", level), logging.INFO))
        h.setFormatter(JsonFormatter())
        _logger.addHandler(h)


_OWN_KEYS = {"gobj", "msg", "level", "time"}


def log(level: str, gobj: str, msg: str, /, **fields: Any) -> None:
    """Log `msg` at `level` for the gobj named `gobj` with extra structured `fields`.

    A field whose name the record itself uses (`gobj`, `msg`, `level`, `time`, or one of
    logging's) is kept with a trailing underscore."""
    lvl = LEVELS[level]
    if not _logger.isEnabledFor(lvl):
        return
    exc_info = bool(fields.pop("exc_info", False))
    extra = {
        k if k not in _RESERVED and k not in _OWN_KEYS else f"{k}_": v for k, v in fields.items()
    }
    extra["gobj"] = gobj
    _logger.log(lvl, msg, extra=extra, exc_info=exc_info)


if not _logger.handlers:
    setup_logging()
