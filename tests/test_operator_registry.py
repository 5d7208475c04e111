"""run-yuno tells the truth, and the agent's registry of yunos is kept, pruned and persisted."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
from certs import TestCA
from clients import wait_for
from procs import CONFIGS, Agent, free_port, write_json, ycommand, ycommand_json


def override(tmp_path: Path, name: str, crypto: dict, url: str = "tcps://127.0.0.1:0") -> str:
    return str(
        write_json(
            tmp_path / f"{name}.json",
            {
                "__json_config_variables__": {
                    "yuno_name": name,
                    "url": url,
                    "ssl_certificate": crypto["ssl_certificate"],
                    "ssl_certificate_key": crypto["ssl_certificate_key"],
                    "work_dir": str(tmp_path / name),
                }
            },
        )
    )


def run_yuno(agent: Agent, config: str, *params: str) -> tuple[int, dict]:
    return ycommand_json(agent.url, " ".join(["run-yuno", f"config={config}", *params]))


def yunos(agent: Agent) -> dict[str, list[dict]]:
    code, answer = ycommand_json(agent.url, "list-yunos")
    assert code == 0
    out: dict[str, list[dict]] = {}
    for y in answer["data"]:
        out.setdefault(y["yuno_name"], []).append(y)
    return out


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path).start()
    yield a
    _, answer = ycommand_json(a.url, "list-yunos")
    a.stop()
    for y in answer.get("data") or []:
        if y["running"] and y["pid"] and y["launched"]:
            try:
                os.kill(y["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def crypto(tmp_path) -> dict:
    return TestCA().issue(tmp_path / "c", "localhost").crypto()


def test_a_yuno_that_dies_at_start_is_a_failure_with_its_reason(tmp_path, agent, crypto):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, answer = run_yuno(
            agent,
            f"{CONFIGS / 'echo-tls.json'},{override(tmp_path, 'dies', crypto, f'tcps://127.0.0.1:{port}')}",
        )
    assert code == 255 and answer["result"] == -1, answer
    comment = answer["comment"]
    assert "exited at start" in comment and "Address already in use" in comment, comment
    assert f"127.0.0.1:{port}" in comment, comment  # the last log line names the address
    assert "\n" not in comment
    (entry,) = yunos(agent)["dies"]
    assert not entry["running"] and entry["state"] == "exited" and entry["exit_code"] == 2


def test_a_bad_config_is_refused_before_anything_starts(tmp_path, agent):
    bad = write_json(tmp_path / "bad.json", {"yuno": {"timeout_cert_check": "soon"}})
    code, answer = run_yuno(agent, f"{CONFIGS / 'echo-tls.json'},{bad}")
    assert (
        code == 255 and str(bad) in answer["comment"] and "timeout_cert_check" in answer["comment"]
    )
    assert yunos(agent) == {}
    assert not (tmp_path / "agent" / "yunos").exists()


def test_a_second_yuno_with_the_same_name_is_refused_unless_asked(tmp_path, agent, crypto):
    config = f"{CONFIGS / 'echo-tls.json'},{override(tmp_path, 'twin', crypto)}"
    assert run_yuno(agent, config)[0] == 0
    code, answer = run_yuno(agent, config)
    assert code == 255 and "already runs" in answer["comment"], answer
    assert len(yunos(agent)["twin"]) == 1
    code, answer = run_yuno(agent, config, "allow_duplicate=true")
    assert code == 0, answer
    assert len(yunos(agent)["twin"]) == 2
    # one stable directory per name: both logs in it, no random-id directories
    (run_dir,) = (tmp_path / "agent" / "yunos").iterdir()
    assert run_dir.name == "echo_tls^twin"
    assert (run_dir / "yuno.log").stat().st_size > 0


def test_dead_yunos_are_deleted_by_command_or_pruned_after_the_retention(tmp_path, agent, crypto):
    for name in ("gone", "pruned"):
        assert (
            run_yuno(agent, f"{CONFIGS / 'echo-tls.json'},{override(tmp_path, name, crypto)}")[0]
            == 0
        )
    running = ycommand(agent.url, "-c", "delete-yuno yuno_name=gone")
    assert running.returncode == 255 and "still running" in running.stdout
    assert ycommand(agent.url, "-c", "kill-yuno yuno_name=gone").returncode == 0
    assert yunos(agent)["gone"][0]["state"] == "exited"
    assert ycommand(agent.url, "-c", "delete-yuno yuno_name=gone").returncode == 0
    assert "gone" not in yunos(agent)
    assert ycommand(agent.url, "-c", "write-attr attr_name=dead_retention value=1").returncode == 0
    assert ycommand(agent.url, "-c", "kill-yuno yuno_name=pruned").returncode == 0
    wait_for(lambda: "pruned" not in yunos(agent), timeout=20)


def test_the_registry_survives_an_agent_restart(tmp_path, crypto):
    port = free_port()
    agent = Agent(tmp_path, port=port).start()
    pids = {}
    try:
        for name in ("stays", "dies_while_away", "exited"):
            config = f"{CONFIGS / 'echo-tls.json'},{override(tmp_path, name, crypto)}"
            assert run_yuno(agent, config)[0] == 0
            pids[name] = yunos(agent)[name][0]["pid"]
        os.kill(pids["exited"], signal.SIGKILL)
        wait_for(lambda: not yunos(agent)["exited"][0]["running"], timeout=20)
        assert agent.stop() == 0
        os.kill(pids["dies_while_away"], signal.SIGKILL)
        saved = json.loads((tmp_path / "agent" / "store" / "agent" / "yunos.json").read_text())
        assert {y["yuno_name"] for y in saved["yunos"]} == set(pids)

        agent = Agent(tmp_path, port=port).start()
        wait_for(lambda: yunos(agent)["stays"][0]["connected"], timeout=30)
        now = {name: entries[0] for name, entries in yunos(agent).items()}
        assert now["stays"]["launched"] and now["stays"]["pid"] == pids["stays"]
        assert now["stays"]["state"] == "running"
        assert now["dies_while_away"]["state"] == "lost" and not now["dies_while_away"]["running"]
        assert now["exited"]["exit_code"] == -9 and now["exited"]["state"] == "exited"
        # the re-adopted yuno is still the agent's own: kill-yuno signals it and sees it end
        assert ycommand(agent.url, "-c", "kill-yuno yuno_name=stays").returncode == 0
        wait_for(lambda: not Path(f"/proc/{pids['stays']}").exists(), timeout=10)
    finally:
        agent.stop()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
