"""The inter-event server answers every command, even when its handler fails.

A real WsServer on the I/O loop, a real ycommand process as the client: a handler that
raises, or whose Future fails, still gives the caller one -1 envelope naming the error.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from yuneta import ievent
from yuneta.command import envelope
from yuneta.netio import IOLoop
from yuneta.wsio import Channel, WsServer

ROOT = Path(__file__).resolve().parent.parent


def _handler(channel: Channel, line: str, kw: dict, service: str, extra: dict) -> object:
    verb = line.split()[0]
    if verb == "raises":
        raise RuntimeError("handler exploded")
    if verb == "future-fails":
        failed: concurrent.futures.Future = concurrent.futures.Future()
        failed.set_exception(ValueError("the wait went wrong"))
        return failed
    return envelope(0, f"ran {verb}")


@pytest.fixture
def server_url() -> Iterator[str]:
    loop = IOLoop(name="test-wsio")
    loop.start()

    def session(channel: Channel) -> ievent.ServerSession:
        return ievent.ServerSession(
            yuno_role="yuneta_agent",
            yuno_name="agent",
            yuno_id="id-1",
            realm_name="test",
            services=lambda name: True,
        )

    server = WsServer(
        loop,
        "127.0.0.1",
        0,
        owner="test^wsio",
        session_factory=session,
        on_command=_handler,  # type: ignore[arg-type]
    )
    port = server.start()
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.stop()
        loop.stop()


def _ycommand(url: str, command: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "yuneta.ycommand", "-u", url, "-w", "20", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_handler_that_raises_is_answered_with_its_error(server_url: str) -> None:
    proc = _ycommand(server_url, "raises")
    assert proc.returncode != 0
    assert "RuntimeError: handler exploded" in proc.stdout + proc.stderr


def test_a_handler_future_that_fails_is_answered_with_its_error(server_url: str) -> None:
    proc = _ycommand(server_url, "future-fails")
    assert proc.returncode != 0
    assert "ValueError: the wait went wrong" in proc.stdout + proc.stderr


def test_a_handler_that_answers_is_answered(server_url: str) -> None:
    proc = _ycommand(server_url, "hello")
    assert proc.returncode == 0, proc.stderr
    assert "ran hello" in proc.stdout
