"""Structured logging: one JSON object a line.

Every record carries time, level, the gobj's full name (`gobj`), the message (`msg`) and
the fields passed by the caller. Handlers (stderr, stdout, file) are set from a yuno
config's `environment.log_handlers`. What makes the stream safe to keep and to parse:

- a filter redacts anything that looks like private key material, so a key never reaches
  a log even when a caller passes one by mistake, and every field value is capped
  (`MAX_FIELD` characters), so a peer cannot make one line megabytes long;
- other libraries' loggers (asyncio's, websockets') go through the same JSON handlers:
  no plain-text line ever breaks the stream;
- a repeated event (`log(..., repeat=("handshake failures", peer_ip))`) is written the
  first `BURST` times in a `WINDOW`, then counted and summarised in one line ("312
  handshake failures from 127.0.0.1 in the last 10 s");
- a file handler rotates by size (`max_bytes`, `backup_count`) and reopens its file on
  SIGHUP, so logrotate's rename + HUP works.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import sys
import threading
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
MAX_FIELD = 2048  # characters of one field value
MAX_TRACEBACK = 16384
WINDOW = 10.0  # seconds a repeated event is counted over
BURST = 3  # lines of a repeated event written one by one in a window
DEFAULT_BACKUPS = 5  # files kept by a rotating handler that does not say


def _cap(text: str, limit: int = MAX_FIELD) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def _clean(value: Any, depth: int = 0) -> Any:
    """Redacted and capped: private key material never, no value longer than MAX_FIELD."""
    if isinstance(value, str):
        if "PRIVATE KEY" in value:
            return "<redacted: private key material>"
        return _cap(value)
    if isinstance(value, (bytes, bytearray)):
        return _cap(repr(bytes(value[: MAX_FIELD + 1])))
    if depth > 8:
        return _cap(repr(value))
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): _clean(v, depth + 1) for k, v in items[:100]}
        if len(items) > 100:
            out["..."] = f"+{len(items) - 100} keys"
        return out
    if isinstance(value, (list, tuple, set)):
        seq = list(value)
        out_list = [_clean(v, depth + 1) for v in seq[:100]]
        if len(seq) > 100:
            out_list.append(f"...(+{len(seq) - 100} items)")
        return out_list
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    return _cap(str(value))


class JsonFormatter(logging.Formatter):
    """Format a record as one compact JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t % 1 * 1e6):06d}Z",
            "level": record.levelname.lower(),
            "gobj": getattr(record, "gobj", "") or record.name,
            "msg": _clean(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out and not key.startswith("_"):
                out[key] = _clean(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["traceback"] = _clean(_cap(self.formatException(record.exc_info), MAX_TRACEBACK))
        return json.dumps(out, default=str, separators=(",", ":"))


class FileHandler(logging.handlers.RotatingFileHandler):
    """JSON lines appended to a file; rotated at `max_bytes` (0: never) keeping
    `backup_count` old files, and reopened by `reopen()` (SIGHUP) after a rename."""

    def __init__(self, filename: str, max_bytes: int = 0, backup_count: int = 0) -> None:
        if max_bytes and not backup_count:
            backup_count = DEFAULT_BACKUPS
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class _Foreign(logging.Handler):
    """Other libraries' records (asyncio, websockets) written by our JSON handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        record.gobj = record.name
        for h in _logger.handlers:
            if record.levelno >= h.level:
                h.handle(record)


_foreign = _Foreign(level=logging.WARNING)


def setup_logging(handlers: dict[str, dict] | None = None, level: str = "info") -> None:
    """Install JSON handlers. `handlers` maps a name to `{"handler_type": "stderr"|"stdout"
    |"file", "filename": ..., "level": ..., "max_bytes": ..., "backup_count": ...}`; none
    means stderr only. The config layer has checked them (one line per mistake)."""
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
        old.close()
    _logger.setLevel(LEVELS.get(level, logging.INFO))
    handlers = handlers or {"to_stderr": {"handler_type": "stderr"}}
    for spec in handlers.values():
        kind = spec.get("handler_type", "stderr")
        if kind == "file":
            h: logging.Handler = FileHandler(
                spec["filename"], spec.get("max_bytes", 0), spec.get("backup_count", 0)
            )
        elif kind == "stdout":
            h = logging.StreamHandler(sys.stdout)
        else:
            h = logging.StreamHandler(sys.stderr)
        h.setLevel(LEVELS.get(spec.get("level", level), logging.INFO))
        h.setFormatter(JsonFormatter())
        _logger.addHandler(h)
    root = logging.getLogger()
    if _foreign not in root.handlers:
        root.addHandler(_foreign)
    for name in ("asyncio", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python's warnings too: no plain-text line on stderr
    threading.excepthook = _thread_died
    has_file = any(isinstance(h, FileHandler) for h in _logger.handlers)
    if has_file and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _on_sighup)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one JSON line (not Python's raw traceback)."""
    name = args.thread.name if args.thread is not None else "?"
    _logger.critical(
        "thread died",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"gobj": "__yuno__", "thread_name": name},
    )


def reopen_files() -> None:
    """Reopen every file handler (after logrotate renamed the file)."""
    for h in list(_logger.handlers):
        if isinstance(h, FileHandler):
            h.reopen()
    log("info", "__yuno__", "log files reopened")


def _on_sighup(_signum: int, _frame: Any) -> None:
    # Not in the signal handler itself: the interrupted code may hold a handler's lock.
    threading.Thread(target=reopen_files, name="log-reopen", daemon=True).start()


class _Repeats:
    """Counts of repeated events by (gobj, msg, source), flushed as one summary line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.thread: threading.Thread | None = None

    def admit(self, level: str, gobj: str, msg: str, noun: str, source: str) -> bool:
        """Whether this occurrence is written one by one (else it is only counted)."""
        key = (gobj, msg, source)
        now = time.monotonic()
        with self.lock:
            w = self.windows.get(key)
            if w is None or now - w["start"] >= WINDOW:
                if w is not None:
                    self._summarise(key, w)
                w = {"start": now, "count": 0, "level": level, "noun": noun}
                self.windows[key] = w
            w["count"] += 1
            if w["count"] > BURST and self.thread is None:
                self.thread = threading.Thread(
                    target=self._flusher, name="log-repeats", daemon=True
                )
                self.thread.start()
            return w["count"] <= BURST

    def _summarise(self, key: tuple[str, str, str], w: dict[str, Any]) -> None:
        if w["count"] <= BURST:
            return
        gobj, msg, source = key
        _emit(
            w["level"],
            gobj,
            f"{w['count']} {w['noun']} from {source} in the last {WINDOW:g} s",
            {"repeated": w["count"], "source": source, "event": msg, "window_s": WINDOW},
        )

    def _flusher(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self.lock:
                for key, w in list(self.windows.items()):
                    if now - w["start"] >= WINDOW:
                        del self.windows[key]
                        self._summarise(key, w)


_repeats = _Repeats()
_OWN_KEYS = {"gobj", "msg", "level", "time"}


def _emit(level: str, gobj: str, msg: str, fields: dict[str, Any]) -> None:
    exc_info = bool(fields.pop("exc_info", False))
    extra = {
        k if k not in _RESERVED and k not in _OWN_KEYS else f"{k}_": v for k, v in fields.items()
    }
    extra["gobj"] = gobj
    _logger.log(LEVELS[level], msg, extra=extra, exc_info=exc_info)


def log(
    level: str, gobj: str, msg: str, /, *, repeat: tuple[str, str] | None = None, **fields: Any
) -> None:
    """Log `msg` at `level` for the gobj named `gobj` with extra structured `fields`.

    A field whose name the record itself uses (`gobj`, `msg`, `level`, `time`, or one of
    logging's) is kept with a trailing underscore. `repeat=(noun, source)` marks an event a
    peer can cause at will: past `BURST` a `WINDOW`, it is summarised, not written."""
    if not _logger.isEnabledFor(LEVELS[level]):
        return
    if repeat is not None and not _repeats.admit(level, gobj, msg, *repeat):
        return
    _emit(level, gobj, msg, fields)


if not _logger.handlers:
    setup_logging()
