"""Token guessing over wss://: slowed to a crawl per address, never for the other addresses.

A real agent on wss:// with a token. One address sends 1,000 wrong tokens as fast as it can:
after a few free failures each next attempt from that address waits for a window that doubles
(answered at once with the time left, its token not even compared). Meanwhile the right token
from another loopback address (127.0.0.2) gets in at once.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestCA
from procs import Agent, free_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from yuneta import ievent
from yuneta.backoff import FailureBackoff

TOKEN = "correct-horse-battery-staple"
GUESSES = 1000


def card(jwt: str) -> str:
    kw = ievent.build_identity_card(
        "",
        "ycommand",
        "ycommand",
        "",
        "yuneta_agent",
        "__default_service__",
        "yuneta",
        "h",
        7,
        jwt,
    )
    return ievent.encode_frame(ievent.EV_IDENTITY_CARD, kw)


@pytest.fixture(scope="module")
def wss_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, TestCA]]:
    workdir: Path = tmp_path_factory.mktemp("tokens")
    ca = TestCA()
    leaf = ca.issue(workdir / "certs", "agent")
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    agent = Agent(
        workdir,
        port=port,
        extra={
            "__json_config_variables__": {"agent_url": url, "work_dir": str(workdir / "agent")},
            "global": {"C_IEVENT_SRV.crypto": leaf.crypto(), "C_IEVENT_SRV.auth_tokens": [TOKEN]},
        },
    ).start()
    try:
        yield agent, ca
    finally:
        agent.stop()


def open_from(source: str, agent: Agent, ca: TestCA) -> ClientConnection:
    sock = socket.create_connection(
        ("127.0.0.1", agent.port), timeout=10, source_address=(source, 0)
    )
    return connect(
        f"wss://127.0.0.1:{agent.port}",
        sock=sock,
        ssl=ca.client_context(),
        server_hostname="127.0.0.1",
        proxy=None,
        open_timeout=10,
        legacy=True,
    )


def ack_of(ws: ClientConnection, jwt: str) -> dict:
    ws.send(card(jwt))
    frame = json.loads(ws.recv(timeout=10))
    assert frame["event"] == ievent.EV_IDENTITY_CARD_ACK
    return frame["kw"]


def test_a_thousand_wrong_tokens_crawl_and_the_right_one_from_elsewhere_gets_in(wss_agent):
    agent, ca = wss_agent
    checked, throttled = 0, 0
    started = time.monotonic()
    ws = open_from("127.0.0.1", agent, ca)
    try:
        for i in range(GUESSES):
            try:
                ack = ack_of(ws, f"guess-{i:06d}-xxxxxxxxxxxx")
            except ConnectionClosed:  # the identity timeout: a guesser reconnects
                ws = open_from("127.0.0.1", agent, ca)
                ack = ack_of(ws, f"guess-{i:06d}-xxxxxxxxxxxx")
            assert ack["result"] == -1
            if ack["comment"].startswith("Too many failed attempts from 127.0.0.1"):
                throttled += 1
            else:
                assert ack["comment"] == "Authentication failed: a valid token is required"
                checked += 1
        elapsed = time.monotonic() - started
        # The right token from the guessing address is not even looked at now.
        assert ack_of(ws, TOKEN)["comment"].startswith("Too many failed attempts")
    finally:
        ws.close()
    print(f"\n{GUESSES} guesses in {elapsed:.2f} s: {checked} checked, {throttled} throttled")
    # 5 free, then windows of 0.25, 0.5, 1, 2, 4... s: a handful in any few seconds.
    assert checked <= 5 + 12 + int(elapsed / 60)
    assert throttled == GUESSES - checked

    with open_from("127.0.0.2", agent, ca) as other:
        t0 = time.monotonic()
        assert ack_of(other, TOKEN)["result"] == 0
        other.send(ievent.encode_frame(ievent.EV_MT_COMMAND, {"__command__": "list-yunos"}))
        assert json.loads(other.recv(timeout=10))["kw"]["result"] == 0
        print(f"right token from 127.0.0.2 admitted in {1000 * (time.monotonic() - t0):.1f} ms")


def test_backoff_windows_double_per_address_and_a_success_clears_them():
    now = [0.0]
    backoff = FailureBackoff(free_failures=2, first_delay=1.0, max_delay=8.0, clock=lambda: now[0])
    for _ in range(2):
        assert backoff.wait_left("a") == 0
        backoff.failed("a")
    assert backoff.wait_left("a") == 0
    windows = []
    for _ in range(6):
        backoff.failed("a")
        windows.append(backoff.wait_left("a"))
    assert windows == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.wait_left("b") == 0  # another address is not slowed
    now[0] += 8.0
    assert backoff.wait_left("a") == 0
    backoff.succeeded("a")
    backoff.failed("a")
    assert backoff.wait_left("a") == 0  # back to its free failures
    now[0] += 10_000
    assert backoff.wait_left("a") == 0


def test_backoff_remembers_a_bounded_number_of_addresses():
    backoff = FailureBackoff(free_failures=0, max_addresses=100)
    for i in range(10_000):
        backoff.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(backoff._records) == 100
    assert backoff.wait_left("10.0.39.15") > 0  # the latest are kept
