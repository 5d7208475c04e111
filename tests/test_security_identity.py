"""Yuno identity that cannot be claimed: a live yuno's id shown by list-yunos is not enough.

A real agent launches a real yuno, which proves its id with the secret the agent gave it (a
0600 file; not in its argv, nor in any log or answer). A peer presenting that id, with no
secret or a wrong one, is refused before any ACK and logged; command-yuno still reaches the
real yuno, also after the impostor left. A yuno started by hand proves its id with a file
the operator provides; without one it is listed unverified and cannot take a launched id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import wait_for
from procs import Agent, child_env, ycommand_json
from websockets.sync.client import ClientConnection, connect

from gclasses import yuno_identity
from yuneta import ievent


def quiet_config(tmp_path: Path, name: str, yuno: dict | None = None) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "environment": {"work_dir": str(tmp_path / f"{name}-work")},
                "yuno": {"yuno_role": "quiet", "yuno_name": name, **(yuno or {})},
                "services": [],
            }
        )
    )
    return path


def claim(agent: Agent, yuno_id: str, secret: str | None = None) -> tuple[ClientConnection, dict]:
    """Connect and present an identity card claiming `yuno_id`; (connection, ACK kw)."""
    card = ievent.build_identity_card(
        "quiet1",
        "quiet",
        "quiet",
        "",
        "yuneta_agent",
        "__default_service__",
        "yuneta",
        "h",
        4242,
        yuno_id=yuno_id,
    )
    if secret is not None:
        card[yuno_identity.SECRET_KEY] = secret
    ws = connect(agent.url, proxy=None, open_timeout=10, legacy=True)
    ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD, card))
    frame = json.loads(ws.recv(timeout=10))
    assert frame["event"] == ievent.EV_IDENTITY_CARD_ACK
    return ws, frame["kw"]


def yunos(agent: Agent) -> dict[str, dict]:
    code, listed = ycommand_json(agent.url, "list-yunos")
    assert code == 0
    return {y["id"]: y for y in listed["data"]}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path).start()
    try:
        yield agent
    finally:
        listed = yunos(agent)
        agent.stop()
        for y in listed.values():
            if y["pid"] and y["launched"]:
                try:
                    os.kill(y["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_an_impostor_of_a_live_yuno_is_refused_and_the_real_one_keeps_its_routing(
    tmp_path: Path, agent: Agent
):
    code, launched = ycommand_json(
        agent.url, f"run-yuno config={quiet_config(tmp_path, 'quiet1')} wait=20"
    )
    assert code == 0 and launched["data"][0]["connected"], launched
    real = launched["data"][0]
    yuno_id, pid = real["id"], real["pid"]
    assert real["verified"] is True

    # beside its log, in the yuno's per-name directory
    secret_file = next((tmp_path / "agent" / "yunos").glob(f"*/{yuno_id}.secret"))
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    assert secret not in Path(f"/proc/{pid}/cmdline").read_text()

    for presented in (None, "not-the-secret-at-all", secret):
        ws, ack = claim(agent, yuno_id, presented)
        with ws:
            # Even the right secret cannot take a live link: the first one keeps it.
            assert ack["result"] == -1
            assert ack["comment"] == f"Yuno id '{yuno_id}' is already connected (quiet^quiet1)"
            answer = ievent.build_command("help", {}, ievent.Gate(src_role="quiet"))
            ws.send(ievent.encode_frame(ievent.EV_MT_COMMAND, answer))
            assert "Identity card required" in ws.recv(timeout=10)
            code, routed = ycommand_json(
                agent.url, f"command-yuno id={yuno_id} command=view-attrs service=__yuno__"
            )
            assert code == 0 and routed["data"][0]["data"]["yuno_id"] == yuno_id
        # The impostor left: the real yuno is still there and routable.
        code, routed = ycommand_json(agent.url, f"command-yuno id={yuno_id} command=help")
        assert code == 0 and routed["data"][0]["result"] == 0
        assert yunos(agent)[yuno_id]["connected"] and yunos(agent)[yuno_id]["pid"] == pid

    refused = [line for line in agent.log_lines() if line["msg"] == "yuno identity claim refused"]
    assert len(refused) == 3 and all(line["id"] == yuno_id for line in refused)
    assert all(line["uid"] == os.geteuid() for line in refused)

    # The real yuno goes away: its id still needs its secret.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not yunos(agent)[yuno_id]["connected"], timeout=20)
    for presented in (None, "not-the-secret-at-all"):
        ws, ack = claim(agent, yuno_id, presented)
        ws.close()
        assert ack["result"] == -1
        assert ack["comment"] == f"Yuno id '{yuno_id}' needs its secret: missing or wrong"
    ws, ack = claim(agent, yuno_id, secret)  # the holder of the secret may come back
    with ws:
        assert ack["result"] == 0 and yunos(agent)[yuno_id]["verified"] is True

    logs = agent.log.read_text() + (secret_file.parent / "yuno.log").read_text()
    assert secret not in logs
    code, tree = ycommand_json(agent.url, "view-gobj-tree")
    assert secret not in json.dumps(tree)


def start_by_hand(tmp_path: Path, agent: Agent, name: str, yuno: dict) -> subprocess.Popen:
    config = quiet_config(tmp_path, name, {"agent_url": agent.url, **yuno})
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "yuneta", "run", "-f", str(config)],
        stdout=log,
        stderr=log,
        env=child_env(),
        start_new_session=True,
    )


def test_hand_started_yunos_verified_by_an_operator_file_or_listed_unverified(
    tmp_path: Path, agent: Agent
):
    secret = yuno_identity.new_secret()
    operator_copy = tmp_path / "agent" / "yuno-secrets" / "byhand1.secret"
    yuno_identity.write_secret(operator_copy, secret)
    yuno_copy = tmp_path / "byhand1-secret"
    yuno_identity.write_secret(yuno_copy, secret)
    verified = start_by_hand(
        tmp_path, agent, "byhand1", {"yuno_id": "byhand1", "agent_secret_file": str(yuno_copy)}
    )
    unverified = start_by_hand(tmp_path, agent, "byhand2", {"yuno_id": "byhand2"})
    # Without the operator's file a hand-started yuno cannot take a launched yuno's id.
    code, launched = ycommand_json(
        agent.url, f"run-yuno config={quiet_config(tmp_path, 'launched1')} wait=20"
    )
    assert code == 0
    launched_id = launched["data"][0]["id"]
    os.kill(launched["data"][0]["pid"], signal.SIGKILL)
    thief = start_by_hand(tmp_path, agent, "thief", {"yuno_id": launched_id})
    try:
        wait_for(
            lambda: (
                {"byhand1", "byhand2"} <= {i for i, y in yunos(agent).items() if y["connected"]}
            ),
            timeout=30,
        )
        listed = yunos(agent)
        assert listed["byhand1"]["verified"] is True
        assert listed["byhand2"]["verified"] is False
        wait_for(
            lambda: any(
                line["msg"] == "yuno identity claim refused" and line["id"] == launched_id
                for line in agent.log_lines()
            ),
            timeout=30,
        )
        assert not yunos(agent)[launched_id]["connected"]
        assert yunos(agent)[launched_id]["yuno_name"] == "launched1"
    finally:
        for proc in (verified, unverified, thief):
            proc.kill()
            proc.wait(10)


class _Entry:
    def __init__(self, *, connected: bool = False, launched: bool = False, verified: bool = False):
        self.label = "r^n"
        self.launched = launched
        self.verified = verified
        self._connected = connected

    @property
    def connected(self) -> bool:
        return self._connected


@pytest.mark.parametrize(
    "entry, card, expected, result, verified",
    [
        (None, {}, None, 0, False),  # a new id, nothing known: unverified
        (None, {"yuno_secret": "s" * 20}, "s" * 20, 0, True),
        (None, {"yuno_secret": "t" * 20}, "s" * 20, -1, False),
        (None, {}, "s" * 20, -1, False),
        (_Entry(connected=True), {"yuno_secret": "s" * 20}, "s" * 20, -1, False),
        (_Entry(launched=True), {}, None, -1, False),
        (_Entry(verified=True), {}, None, -1, False),
        (_Entry(), {}, None, 0, False),  # an unverified yuno coming back
        (None, {"yuno_secret": ["s"]}, "s" * 20, -1, False),
    ],
)
def test_judge(entry, card, expected, result, verified):
    verdict = yuno_identity.judge("y1", entry, card, expected)
    assert (verdict.result, verdict.verified) == (result, verified)
    assert verdict.result == 0 or "'y1'" in verdict.comment


def test_claims_of_fresh_ids_that_leave_cannot_grow_the_registry(agent: Agent) -> None:
    """Any admitted peer can claim a new id and go: departed unverified entries are capped,
    the oldest forgotten first, so list-yunos (and the saved registry) stay bounded."""
    from gclasses.yuno_registry import MAX_GONE_UNVERIFIED

    claims = MAX_GONE_UNVERIFIED + 36
    ids = [f"claim{i:04d}" for i in range(claims)]
    for yuno_id in ids:
        ws, ack = claim(agent, yuno_id)
        assert ack["result"] == 0, ack
        ws.close()
    wait_for(lambda: not any(y["running"] for y in yunos(agent).values()), timeout=30)
    listed = yunos(agent)
    kept = [i for i in ids if i in listed]
    assert len(kept) == MAX_GONE_UNVERIFIED
    # Oldest out first (neighbours' close callbacks may land in either order).
    assert set(ids[:30]).isdisjoint(kept) and set(ids[-30:]) <= set(kept)
    assert all(not listed[i]["verified"] and not listed[i]["running"] for i in kept)
