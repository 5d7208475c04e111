"""The agent and ycommand end to end: real agent, real yunos, the real ycommand executable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from certs import TestCA
from clients import wait_for
from procs import (
    CONFIGS,
    Agent,
    child_env,
    free_port,
    wait_port,
    write_json,
    ycommand,
    ycommand_json,
)


def yuno_override(tmp_path, name: str, crypto: dict, agent_url: str = "") -> str:
    return str(
        write_json(
            tmp_path / f"{name}.json",
            {
                "__json_config_variables__": {
                    "yuno_name": name,
                    "url": "tcps://127.0.0.1:0",
                    "ssl_certificate": crypto["ssl_certificate"],
                    "ssl_certificate_key": crypto["ssl_certificate_key"],
                    "agent_url": agent_url,
                    "work_dir": str(tmp_path / name),
                }
            },
        )
    )


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path).start()
    yield a
    code, yunos = ycommand_json(a.url, "list-yunos")
    a.stop()
    for y in yunos.get("data") or []:
        if y["running"] and y["pid"]:
            try:
                os.kill(y["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_by_hand(tmp_path, override: str) -> subprocess.Popen:
    log = open(tmp_path / "by-hand.log", "ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yuneta",
            "run",
            "-f",
            str(CONFIGS / "echo-tls.json"),
            "-f",
            override,
        ],
        stdout=log,
        stderr=log,
        env=child_env(),
        start_new_session=True,
    )


def yunos_by_name(url: str) -> dict[str, dict]:
    code, answer = ycommand_json(url, "list-yunos")
    assert code == 0
    return {y["yuno_name"]: y for y in answer["data"]}


def test_agent_launches_routes_and_kills_yunos(tmp_path, agent):
    ca = TestCA()
    one = ca.issue(tmp_path / "c1", "one")
    two = ca.issue(tmp_path / "c2", "two")

    # One yuno launched by the agent, one started by hand that connects to it.
    launched = ycommand(
        agent.url,
        "-c",
        f"run-yuno config={CONFIGS / 'echo-tls.json'},{yuno_override(tmp_path, 'one', one.crypto())}",
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "running" in launched.stdout
    by_hand = start_by_hand(tmp_path, yuno_override(tmp_path, "two", two.crypto(), agent.url))
    try:
        wait_for(lambda: yunos_by_name(agent.url).get("two", {}).get("connected"), timeout=30)
        yunos = yunos_by_name(agent.url)
        assert yunos["one"]["launched"] and not yunos["two"]["launched"]
        assert yunos["two"]["pid"] == by_hand.pid
        assert all(y["running"] and y["yuno_role"] == "echo_tls" for y in yunos.values())

        table = ycommand(agent.url, "-c", "list-yunos")
        assert table.returncode == 0 and "echo_tls" in table.stdout and "Total: 2" in table.stdout

        code, certs = ycommand_json(agent.url, "command-yuno command=view-cert service=__yuno__")
        assert code == 0 and certs["result"] == 0
        subjects = {a["yuno_name"]: a["data"][0]["subject"] for a in certs["data"]}
        assert subjects == {"one": "/CN=one", "two": "/CN=two"}

        code, reload = ycommand_json(
            agent.url, "command-yuno command=reload-certs service=__yuno__"
        )
        assert code == 0 and reload["comment"] == "2 yuno(s) answered, 0 failed"
        assert {a["yuno_name"]: a["comment"] for a in reload["data"]} == {
            "one": "echo_tls^one: reloaded 1 TLS listener(s), 0 failed",
            "two": "echo_tls^two: reloaded 1 TLS listener(s), 0 failed",
        }

        code, one_cert = ycommand_json(
            agent.url, "command-yuno yuno_name=one command=view-cert gobj=echo_tls"
        )
        assert code == 0 and len(one_cert["data"]) == 1
        assert one_cert["data"][0]["data"]["serial"] == one.serial

        # Failures: exit code 255 and the comment on stdout.
        missing = ycommand(agent.url, "-c", "command-yuno yuno_name=nobody command=view-cert")
        assert missing.returncode == 255 and "ERROR -1: Yuno not found" in missing.stdout
        no_cmd = ycommand(agent.url, "-c", "command-yuno service=__yuno__")
        assert no_cmd.returncode == 255 and "What command?" in no_cmd.stdout
        no_gobj = ycommand(
            agent.url, "-c", "command-yuno yuno_name=one command=view-cert gobj=nope"
        )
        assert no_gobj.returncode == 255 and "gobj 'nope' not found" in no_gobj.stdout

        killed = ycommand(agent.url, "-c", "kill-yuno yuno_name=one")
        assert killed.returncode == 0
        killed_two = ycommand(agent.url, "-c", "kill-yuno yuno_name=two")
        assert killed_two.returncode == 0
        assert by_hand.wait(20) == 0  # SIGTERM: a clean, bottom-up stop
        yunos = yunos_by_name(agent.url)
        assert not yunos["one"]["running"] and not yunos["two"]["running"]
        gone = ycommand(agent.url, "-c", "command-yuno command=view-cert service=__yuno__")
        assert gone.returncode == 255
    finally:
        if by_hand.poll() is None:
            by_hand.kill()


def test_a_yuno_that_dies_is_marked_not_running_and_logged(tmp_path, agent):
    issued = TestCA().issue(tmp_path / "c", "dies")
    run = ycommand(
        agent.url,
        "-c",
        f"run-yuno config={CONFIGS / 'echo-tls.json'},{yuno_override(tmp_path, 'dies', issued.crypto())}",
    )
    assert run.returncode == 0
    pid = yunos_by_name(agent.url)["dies"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not yunos_by_name(agent.url)["dies"]["running"], timeout=20)
    died = [line for line in agent.log_lines() if line["msg"] == "yuno died"]
    assert died and died[0]["pid"] == pid and died[0]["exit_code"] == -9


def test_yunos_reconnect_after_an_agent_restart(tmp_path):
    port = free_port()
    agent = Agent(tmp_path, port=port).start()
    issued = TestCA().issue(tmp_path / "c", "stays")
    run = ycommand(
        agent.url,
        "-c",
        f"run-yuno config={CONFIGS / 'echo-tls.json'},{yuno_override(tmp_path, 'stays', issued.crypto())}",
    )
    assert run.returncode == 0
    pid = yunos_by_name(agent.url)["stays"]["pid"]
    try:
        assert agent.stop() == 0
        again = Agent(tmp_path, port=port).start()
        try:
            wait_for(lambda: yunos_by_name(again.url).get("stays", {}).get("connected"), timeout=30)
            entry = yunos_by_name(again.url)["stays"]
            # re-adopted: the same process it launched, so still its own
            assert entry["pid"] == pid and entry["running"] and entry["launched"]
            code, answer = ycommand_json(
                again.url, "command-yuno yuno_name=stays command=view-cert gobj=echo_tls"
            )
            assert code == 0 and answer["data"][0]["data"]["serial"] == issued.serial
        finally:
            again.stop()
    finally:
        os.kill(pid, signal.SIGKILL)


def test_persistent_attrs_survive_a_restart_of_a_real_yuno(tmp_path, agent):
    issued = TestCA().issue(tmp_path / "c", "keeps")
    override = yuno_override(tmp_path, "keeps", issued.crypto())
    config = f"{CONFIGS / 'echo-tls.json'},{override}"
    assert ycommand(agent.url, "-c", f"run-yuno config={config}").returncode == 0
    code, wrote = ycommand_json(
        agent.url,
        'command-yuno yuno_name=keeps service=__yuno__ command="write-attr attr_name=cert_warn_days value=11"',
    )
    assert code == 0, wrote
    assert ycommand(agent.url, "-c", "kill-yuno yuno_name=keeps").returncode == 0
    assert ycommand(agent.url, "-c", f"run-yuno config={config}").returncode == 0
    code, status = ycommand_json(
        agent.url, "command-yuno yuno_name=keeps service=__yuno__ command=cert-expiry-status"
    )
    assert code == 0
    running = status["data"]
    assert len(running) == 1 and running[0]["data"]["warn_threshold"] == 11


def test_view_gobj_tree_of_the_agent(tmp_path, agent):
    code, tree = ycommand_json(agent.url, "view-gobj-tree")
    assert code == 0
    root = tree["data"]
    assert root["gclass"] == "C_YUNO" and root["name"] == "agent"
    agent_node = next(c for c in root["children"] if c["gclass"] == "C_AGENT")
    assert {c["gclass"] for c in agent_node["children"]} == {"C_TIMER", "C_IEVENT_SRV", "C_METRICS"}
    assert all(c["running"] for c in agent_node["children"])


def test_ycommand_without_an_agent_fails_clearly_within_the_wait(tmp_path):
    port = free_port()
    started = time.monotonic()
    proc = ycommand(f"ws://127.0.0.1:{port}", "-c", "list-yunos", wait=2)
    assert proc.returncode != 0
    assert time.monotonic() - started < 15
    assert str(port) in proc.stderr and proc.stdout == ""


def test_commands_sent_while_run_yuno_waits_are_answered(tmp_path, agent):
    """run-yuno holds the agent until its yuno connects; other commands queue, none is lost."""
    issued = TestCA().issue(tmp_path / "c", "slow")
    override = yuno_override(tmp_path, "slow", issued.crypto())
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yuneta.ycommand",
            "-u",
            agent.url,
            "-w",
            "30",
            "-c",
            f"run-yuno config={CONFIGS / 'echo-tls.json'},{override}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    ) as run:
        wait_port(agent.port)
        helped = ycommand(agent.url, "-c", "help")
        assert helped.returncode == 0
        assert run.wait(60) == 0


def test_a_hung_yuno_does_not_freeze_the_agent(tmp_path, agent):
    issued = TestCA().issue(tmp_path / "c", "hung")
    run = ycommand(
        agent.url,
        "-c",
        f"run-yuno config={CONFIGS / 'echo-tls.json'},{yuno_override(tmp_path, 'hung', issued.crypto())}",
    )
    assert run.returncode == 0
    pid = yunos_by_name(agent.url)["hung"]["pid"]
    os.kill(pid, signal.SIGSTOP)

    def accepted() -> int:
        return sum(1 for line in agent.log_lines() if line["msg"] == "identity card accepted")

    before = accepted()
    try:
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "yuneta.ycommand",
                "-u",
                agent.url,
                "-w",
                "30",
                "-c",
                "command-yuno yuno_name=hung command=help",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        ) as slow:
            wait_for(lambda: accepted() > before, timeout=20)  # the slow client is in session
            time.sleep(1)  # its command (sent right after the ACK) now waits on the stopped yuno
            assert slow.poll() is None
            # Meanwhile the agent answers everyone else at once.
            listed = ycommand(agent.url, "-c", "list-yunos", wait=5)
            assert listed.returncode == 0 and "hung" in listed.stdout
            assert slow.poll() is None  # still waiting: the answers above did not wait for it
            out, _ = slow.communicate(timeout=60)
            assert slow.returncode == 255
            assert "No answer within 10 s" in out
    finally:
        os.kill(pid, signal.SIGCONT)


def test_kill_yuno_never_signals_a_pid_it_only_heard_of(tmp_path, agent):
    """A peer may claim any pid in its identity card: the agent signals only its own children,
    and asks other yunos to shut down over their link."""
    from websockets.sync.client import connect

    from yuneta import ievent

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert (
            ycommand(agent.url, "-c", "write-attr attr_name=kill_grace value=0").returncode == 255
        )
        assert ycommand(agent.url, "-c", "write-attr attr_name=kill_grace value=1").returncode == 0
        card = ievent.build_identity_card(
            "liar",
            "echo_tls",
            "echo_tls",
            "",
            "yuneta_agent",
            "__default_service__",
            "x",
            "h",
            bystander.pid,
            yuno_id="spoof",
        )
        with connect(agent.url, proxy=None) as ws:
            ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD, card))
            assert json.loads(ws.recv(timeout=10))["kw"]["result"] == 0
            wait_for(lambda: "liar" in yunos_by_name(agent.url), timeout=10)
            killed = ycommand(agent.url, "-c", "kill-yuno yuno_name=liar")
            assert killed.returncode == 255 and "did not stop" in killed.stdout
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_yunos_join_a_wss_agent_that_requires_a_token(tmp_path):
    ca = TestCA()
    cafile = ca.write_ca(tmp_path / "ca.pem")
    leaf = ca.issue(tmp_path / "agent-cert", "agent")
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    agent = Agent(
        tmp_path,
        port=port,
        extra={
            "__json_config_variables__": {"agent_url": url, "work_dir": str(tmp_path / "agent")},
            "global": {
                "C_IEVENT_SRV.crypto": leaf.crypto(),
                "C_IEVENT_SRV.auth_tokens": ["t0ken-t0ken-t0ken"],
                "C_AGENT.yunos_cafile": str(cafile),
            },
        },
    ).start()
    opts = ["--cafile", str(cafile), "-t", "t0ken-t0ken-t0ken"]
    try:
        issued = ca.issue(tmp_path / "c", "inner")
        run = ycommand(
            url,
            "-c",
            f"run-yuno config={CONFIGS / 'echo-tls.json'},{yuno_override(tmp_path, 'inner', issued.crypto())}",
            extra=opts,
        )
        assert run.returncode == 0 and "running" in run.stdout, run.stdout + run.stderr
        answer = ycommand(
            url,
            "-c",
            "command-yuno yuno_name=inner command=view-cert gobj=echo_tls",
            extra=[*opts, "--json"],
        )
        assert answer.returncode == 0 and issued.serial in answer.stdout
        override = next((tmp_path / "agent" / "yunos").rglob("override-*.json"))
        assert oct(override.stat().st_mode & 0o777) == "0o600"  # it carries the token
        assert ycommand(url, "-c", "kill-yuno yuno_name=inner", extra=opts).returncode == 0
    finally:
        agent.stop()
