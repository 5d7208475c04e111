"""Who may command the agent on loopback: the kernel says which UID owns the client's socket.

Real other users: `nobody` runs a standard-library WebSocket client under Debian's
/usr/bin/python3 through `setpriv` (the tests run as root, as CI does). It is refused with
the reason, logged once with its UID, and a `run-yuno` of a file-writing config from it
creates nothing, while the same command from the agent's own user does. A throwaway user in
a throwaway group named by `allowed_groups` is admitted; so is a UID in `allowed_uids`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import wait_for
from procs import (
    Agent,
    free_port,
    run_agent_to_exit,
    write_json,
    ycommand,
    ycommand_json,
)

from yuneta import ievent, peercred

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT_SOURCE = (Path(__file__).parent / "wsclient_stdlib.py").read_text()

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root (to act as other users) and Debian's python3",
)


def card_frame(port: int) -> str:
    """The C ycommand's identity card, user "yuneta" as the C tools always say."""
    card = ievent.build_identity_card(
        "",
        "ycommand",
        f"ws://127.0.0.1:{port}",
        "",
        "yuneta_agent",
        "__default_service__",
        "yuneta",
        "node1",
        4242,
    )
    return ievent.encode_frame(ievent.EV_IDENTITY_CARD, card)


def command_frame(line: str) -> str:
    gate = ievent.Gate(src_role="ycommand", src_service="ycommand", dst_role="yuneta_agent")
    return ievent.encode_frame(ievent.EV_MT_COMMAND, ievent.build_command(line, {}, gate))


def run_as(uid: int, gid: int, port: int, *frames: str) -> list[dict]:
    """Run the stdlib client as uid:gid; the answers it read, in order. (The agent reads a
    user's groups from the account database, not from the client process.)"""
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-I",
            "-c",
            CLIENT_SOURCE,
            str(port),
            *frames,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["kw"] for line in proc.stdout.splitlines()]


def scribble_config(tmp_path: Path, target: Path) -> Path:
    """A yuno whose file log handler creates `target` as soon as it runs."""
    path = tmp_path / "scribble.json"
    path.write_text(
        json.dumps(
            {
                "environment": {
                    "work_dir": str(tmp_path / "scribble-work"),
                    "log_handlers": {"f": {"handler_type": "file", "filename": str(target)}},
                },
                "yuno": {"yuno_role": "scribble", "yuno_name": "scribble"},
                "services": [],
            }
        )
    )
    return path


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path).start()
    try:
        yield agent
    finally:
        _, listed = ycommand_json(agent.url, "list-yunos")
        agent.stop()
        for y in listed.get("data") or []:
            if y["pid"] and y["launched"]:
                try:
                    os.kill(y["pid"], 9)
                except ProcessLookupError:
                    pass


# ---------------------------------------------------------------------------
#   The kernel's answer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, bind, connect_to",
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET6, "::1", "::1"),
        (socket.AF_INET6, "::", "127.0.0.1"),  # dual stack: our side sees ::ffff:127.0.0.1
    ],
)
def test_socket_uid_names_the_owner_of_the_client_socket(family, bind, connect_to):
    with socket.socket(family) as server:
        if bind == "::":
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind((bind, 0))
        server.listen()
        port = server.getsockname()[1]
        code = (
            "import socket,sys,time\n"
            f"s=socket.create_connection(({connect_to!r},{port}))\n"
            "sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()\n"
        )
        with subprocess.Popen(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                SYSTEM_PYTHON,
                "-I",
                "-c",
                code,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        ) as client:
            try:
                assert client.stdout is not None and client.stdout.readline() == "up\n"
                conn, peer = server.accept()
                with conn:
                    local = conn.getsockname()[:2]
                    if bind == "::":
                        assert peer[0] == "::ffff:127.0.0.1"
                    assert peercred.socket_uid(peer[:2], local) == NOBODY
                    assert peercred.socket_uid_proc(peer[:2], local) == NOBODY
                    # our own end of the same connection belongs to us, not to nobody
                    assert peercred.socket_uid(local, peer[:2]) == os.geteuid()
            finally:
                client.kill()
    with pytest.raises(peercred.PeerCredError):
        peercred.socket_uid(("127.0.0.1", 1), ("127.0.0.1", 2))
    with pytest.raises(peercred.PeerCredError):
        peercred.socket_uid_proc(("127.0.0.1", 1), ("127.0.0.1", 2))


# ---------------------------------------------------------------------------
#   The agent
# ---------------------------------------------------------------------------


def test_nobody_is_refused_and_its_run_yuno_creates_nothing(tmp_path: Path, agent: Agent):
    target = tmp_path / "root-only" / "written-by-the-yuno.log"
    target.parent.mkdir(mode=0o700)
    config = scribble_config(tmp_path, target)
    run = f"run-yuno config={config} wait=0"

    ack, answer = run_as(NOBODY, NOBODY, agent.port, card_frame(agent.port), command_frame(run))
    assert ack["result"] == -1
    assert ack["comment"] == (
        f"Permission denied: local user 'nobody' (uid {NOBODY}) may not command this yuno"
    )
    assert answer["result"] == -1 and "Identity card required" in answer["comment"]
    # Refused three more times, on three connections: still one log line for this UID.
    for _ in range(3):
        assert run_as(NOBODY, NOBODY, agent.port, card_frame(agent.port))[0]["result"] == -1
    refusals = [
        line
        for line in agent.log_lines()
        if line["msg"] == "identity card refused" and line.get("uid") == NOBODY
    ]
    assert len(refusals) == 1 and "Permission denied" in refusals[0]["comment"]
    code, listed = ycommand_json(agent.url, "list-yunos")
    assert code == 0 and listed["data"] == []
    assert not target.exists()

    # The same command from the agent's own user runs, and the yuno writes its file.
    code, launched = ycommand_json(agent.url, run.replace("wait=0", "wait=10"))
    assert code == 0, launched
    wait_for(target.exists, timeout=20)


def test_the_agents_own_user_is_admitted_whatever_the_card_says(agent: Agent):
    # Our ycommand's card says user "yuneta"; the C ycommand's too; we are root.
    ack, answer = run_as(0, 0, agent.port, card_frame(agent.port), command_frame("list-yunos"))
    assert ack["result"] == 0 and answer["result"] == 0
    accepted = [line for line in agent.log_lines() if line["msg"] == "identity card accepted"]
    assert accepted and accepted[-1]["uid"] == 0


@pytest.fixture
def throwaway_user() -> Iterator[tuple[str, int, int]]:
    """A user in a group of its own, created for this test and removed after it."""
    tag = uuid.uuid4().hex[:8]
    group, user = f"ysecg{tag}", f"ysecu{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "-g", group, "-s", "/usr/sbin/nologin", user],
            check=True,
        )
        try:
            import pwd

            entry = pwd.getpwnam(user)
            yield group, entry.pw_uid, entry.pw_gid
        finally:
            subprocess.run(["userdel", user], check=False)
    finally:
        subprocess.run(["groupdel", group], check=False)


def test_members_of_the_allowed_groups_and_allowed_uids_are_admitted(
    tmp_path: Path, throwaway_user: tuple[str, int, int]
):
    group, uid, gid = throwaway_user
    agent = Agent(
        tmp_path,
        extra={
            "global": {
                "C_IEVENT_SRV.allowed_groups": ["yuneta", group],
                "C_IEVENT_SRV.allowed_uids": [NOBODY],
            }
        },
    ).start()
    try:
        for who, who_gid in ((uid, gid), (NOBODY, NOBODY)):
            ack, answer = run_as(
                who, who_gid, agent.port, card_frame(agent.port), command_frame("list-yunos")
            )
            assert ack["result"] == 0, (who, ack)
            assert answer["result"] == 0 and answer["comment"] == "0 yuno(s)"
        # Another system user, in neither list, is still refused.
        ack, _ = run_as(1, 1, agent.port, card_frame(agent.port), command_frame("list-yunos"))
        assert ack["result"] == -1 and "(uid 1)" in ack["comment"]
    finally:
        agent.stop()


def test_the_real_ycommand_run_by_the_agents_user_keeps_working(agent: Agent):
    proc = ycommand(agent.url, "-c", "list-yunos")
    assert proc.returncode == 0 and "Total: 0" in proc.stdout


@pytest.mark.parametrize(
    "tokens, words",
    [
        (["tok-abc"], "token #1 is shorter than min_token_length (16 characters)"),
        (["x" * 16, "y" * 15], "token #2 is shorter than min_token_length (16 characters)"),
    ],
)
def test_a_short_token_is_a_one_line_config_error(tmp_path: Path, tokens: list[str], words: str):
    override = write_json(
        tmp_path / "override.json",
        {
            "__json_config_variables__": {
                "agent_url": f"ws://127.0.0.1:{free_port()}",
                "work_dir": str(tmp_path / "agent"),
            },
            "global": {"C_IEVENT_SRV.auth_tokens": tokens},
        },
    )
    proc = run_agent_to_exit(override, tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
    assert all(t not in proc.stderr for t in tokens)  # the tokens themselves never shown


def test_admission_rule_own_uid_root_groups_and_uids(throwaway_user: tuple[str, int, int]):
    group, uid, _gid = throwaway_user
    # An agent running as `uid` itself (not root): its own user and root, nobody else.
    own = peercred.Admission(("yuneta",), (), own_uid=uid)
    assert own.admits(uid) and own.admits(0)
    assert not own.admits(NOBODY) and not own.admits(1)
    # Group membership (primary here) read from the account database at each check.
    assert peercred.Admission.of([group], []).admits(uid)
    assert not peercred.Admission.of([group], []).admits(NOBODY)
    assert peercred.Admission.of(["no-such-group-at-all"], [NOBODY]).admits(NOBODY)
    assert not peercred.Admission.of(["no-such-group-at-all"], []).admits(123456)  # no account
