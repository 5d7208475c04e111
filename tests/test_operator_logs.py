"""Logs an operator can keep: reopened on SIGHUP, rotated by size, repeated events summarised,
fields capped, every line JSON (other libraries' messages too)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from certs import TestCA
from clients import wait_for
from procs import CONFIGS, child_env, write_json

from yuneta import log as ylog


def json_lines(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines()]  # every line must be JSON


@pytest.fixture
def echo_yuno(tmp_path):
    """A real echo yuno (tcps:// on a free port) logging to a file; yields (proc, log, port)."""
    log_file = tmp_path / "logs" / "echo.log"
    log_file.parent.mkdir()
    issued = TestCA().issue(tmp_path / "c", "localhost")
    override = write_json(
        tmp_path / "override.json",
        {
            "__json_config_variables__": {
                "yuno_name": "logs",
                "url": "tcps://127.0.0.1:0",
                **issued.crypto(),
                "work_dir": str(tmp_path / "work"),
            },
            "environment": {
                "log_handlers": {"file": {"handler_type": "file", "filename": str(log_file)}}
            },
        },
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yuneta",
            "run",
            "-f",
            str(CONFIGS / "echo-tls.json"),
            "-f",
            str(override),
        ],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: any(r["msg"] == "yuno running" for r in json_lines(log_file)), timeout=30)
        port = next(r["port"] for r in json_lines(log_file) if r["msg"] == "listening")
        yield proc, log_file, port
    finally:
        proc.kill()
        proc.wait()


def test_sighup_reopens_the_log_after_logrotate_renamed_it(echo_yuno):
    proc, log_file, _ = echo_yuno
    rotated = log_file.with_name("echo.log.1")
    os.rename(log_file, rotated)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_file.exists() and json_lines(log_file), timeout=15)
    assert proc.poll() is None  # SIGHUP did not kill it
    assert json_lines(log_file)[0]["msg"] == "log files reopened"
    assert all(r["msg"] != "log files reopened" for r in json_lines(rotated))


def _fail_handshake(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: the handshake fails at once
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def test_two_thousand_failed_handshakes_write_a_few_summary_lines(echo_yuno):
    proc, log_file, port = echo_yuno
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _fail_handshake(port), range(2000)))

    def summarised() -> int:
        return sum(r.get("repeated", 0) for r in json_lines(log_file) if r.get("event"))

    wait_for(lambda: summarised() >= 2000 - ylog.BURST, timeout=45, interval=0.5)
    lines = [r for r in json_lines(log_file) if "handshake" in r["msg"]]
    assert len(lines) <= 12, [r["msg"] for r in lines]
    summaries = [r for r in lines if r.get("event")]
    assert summaries[0]["msg"].endswith("handshake failures from 127.0.0.1 in the last 10 s")
    assert summarised() <= 2000


def test_rotation_by_size_keeps_backup_count_files(tmp_path):
    log_file = tmp_path / "r.log"
    try:
        ylog.setup_logging(
            {
                "f": {
                    "handler_type": "file",
                    "filename": str(log_file),
                    "max_bytes": 4000,
                    "backup_count": 2,
                }
            }
        )
        for i in range(300):
            ylog.log("info", "t", "line", n=i, pad="x" * 50)
    finally:
        ylog.setup_logging()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.log", "r.log.1", "r.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4000
        json_lines(tmp_path / name)
    assert json_lines(log_file)[-1]["n"] == 299


def test_a_huge_field_is_capped():
    record = logging.makeLogRecord(
        {"msg": "m", "levelname": "INFO", "gobj": "g", "card": "a" * 900_000}
    )
    line = ylog.JsonFormatter().format(record)
    assert len(line) < ylog.MAX_FIELD + 500
    assert json.loads(line)["card"].endswith(f"(+{900_000 - ylog.MAX_FIELD} chars)")


def test_other_libraries_warnings_and_dying_threads_are_json_lines():
    code = (
        "import logging, threading, warnings\n"
        "from yuneta.log import setup_logging\n"
        "setup_logging()\n"
        "logging.getLogger('asyncio').warning('socket.send() raised exception.')\n"
        "logging.getLogger('websockets.server').error('opening handshake failed', exc_info=ValueError('x'))\n"
        "warnings.warn('old API', DeprecationWarning)\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line JSON
    assert [r["gobj"] for r in lines] == ["asyncio", "websockets.server", "py.warnings", "__yuno__"]
    assert lines[0]["msg"] == "socket.send() raised exception."
    assert "ValueError" in lines[1]["traceback"]
    assert "DeprecationWarning: old API" in lines[2]["msg"]
    assert lines[3]["msg"] == "thread died" and "ZeroDivisionError" in lines[3]["traceback"]
