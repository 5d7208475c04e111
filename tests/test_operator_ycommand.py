"""ycommand as an operator reads it: under a real pty (readline, completion) against a real
agent with a real yuno; each answer once; help in full; the tree drawn; reasons said."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from certs import TestCA
from procs import CONFIGS, child_env, running_agent, write_json, ycommand

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Pty:
    """ycommand -i on a pseudo-terminal: type, then read what the screen shows."""

    def __init__(self, url: str, home: str) -> None:
        self.master, slave = pty.openpty()
        env = {**child_env(), "HOME": home, "TERM": "xterm", "INPUTRC": "/dev/null"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "yuneta.ycommand", "-u", url, "-i"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.screen = ""

    def read_until(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in ANSI.sub("", self.screen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{needle!r} not shown; screen:\n{ANSI.sub('', self.screen)[-3000:]}"
                )
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        return ANSI.sub("", self.screen)

    def type(self, text: str) -> None:
        self.screen = ""
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def agent_with_yuno(tmp_path):
    issued = TestCA().issue(tmp_path / "c", "localhost")
    override = write_json(
        tmp_path / "echo.json",
        {
            "__json_config_variables__": {
                "yuno_name": "echo7",
                "url": "tcps://127.0.0.1:0",
                **issued.crypto(),
                "work_dir": str(tmp_path / "echo7"),
            }
        },
    )
    with running_agent(tmp_path) as agent:
        run = ycommand(agent.url, "-c", f"run-yuno config={CONFIGS / 'echo-tls.json'},{override}")
        assert run.returncode == 0, run.stdout + run.stderr
        try:
            yield agent
        finally:
            ycommand(agent.url, "-c", "kill-yuno yuno_name=echo7")


@pytest.fixture
def term(agent_with_yuno, tmp_path):
    t = Pty(agent_with_yuno.url, str(tmp_path))
    t.read_until("yuneta_agent")
    yield t
    t.close()


def test_help_of_one_command_lists_its_parameters_and_types(term):
    term.type("help command-yuno\n")
    screen = term.read_until("[key=value ...]")
    assert "command-yuno: Send a command to every running yuno" in screen
    for param in ("command=<str>", "yuno_name=<str>", "service=<str>", "gobj=<str>"):
        assert param in screen


def test_help_is_whole_and_lists_each_command_once(agent_with_yuno):
    out = ycommand(agent_with_yuno.url, "-c", "help").stdout
    assert len(re.findall(r"^view-gobj-tree ", out, flags=re.MULTILINE)) == 1
    (line,) = [line for line in out.splitlines() if line.startswith("command-yuno ")]
    assert line.endswith("Send a command to every running yuno that matches; one answer per yuno")
    assert "[key=value ...]" in line


def test_view_gobj_tree_is_drawn_as_a_tree(term):
    term.type("view-gobj-tree\n")
    screen = term.read_until("__input_side__")
    assert re.search(r"^agent \[C_YUNO\] ST_IDLE \(running, playing\)$", screen, re.MULTILINE)
    assert "└── agent [C_AGENT] ST_IDLE (running, playing)" in screen
    assert re.search(
        r"^    [├└]── __input_side__ \[C_IEVENT_SRV\] ST_IDLE \(running, playing\)$", screen, re.M
    )
    assert re.search(r"^    [├└]── __check_timer__ \[C_TIMER\] ", screen, re.M)
    assert '"children"' not in screen


def test_completion_offers_parameter_names_and_values(term):
    term.type("command-yuno yuno_na\t")
    term.read_until("command-yuno yuno_name=")
    term.type("ec\t")  # the agent's yunos
    term.read_until("echo7 ")
    term.type("comm\t")
    term.read_until("command=")
    term.type("view-c\t")  # the yuno's own commands
    term.read_until("view-cert ")
    term.type("gobj=echo_\t")  # the gobjs of the yunos' trees
    term.read_until("echo_tls ")
    term.type("\n")
    screen = term.read_until("serial")
    assert "echo_tls^echo7" in screen


def test_one_yuno_answer_is_printed_once(agent_with_yuno):
    out = ycommand(
        agent_with_yuno.url, "-c", "command-yuno command=cert-expiry-status service=__yuno__"
    ).stdout
    assert out.count("echo_tls^echo7: 1 TLS listener(s)") == 1, out
    bad = ycommand(
        agent_with_yuno.url, "-c", "command-yuno command=no-such-command service=__yuno__"
    )
    assert bad.returncode == 255 and bad.stdout.count("no-such-command") == 1, bad.stdout


def test_version_on_both_clis():
    for module in ("yuneta", "yuneta.ycommand"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            env=child_env(),
        )
        assert out.returncode == 0 and "(Yuneta for Python) 0.1.0" in out.stdout


def test_every_connection_failure_says_why(agent_with_yuno):
    port = agent_with_yuno.port
    cases = {
        f"wss://127.0.0.1:{port}": "(is it a plain ws:// port?)",
        "ws://127.0.0.1:1": "connection refused",
        "ws://no-such-host.invalid:1": "cannot resolve the host",
        f"http://127.0.0.1:{port}": "not a ws:// or wss:// URL",
    }
    for url, reason in cases.items():
        out = subprocess.run(
            [sys.executable, "-m", "yuneta.ycommand", "-u", url, "-w", "5", "-c", "help"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert out.returncode == 1
        assert (
            out.stderr.startswith(f"ycommand: cannot connect to {url}: ") and reason in out.stderr
        )
