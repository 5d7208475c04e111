"""ycommand: line splitting, answer rendering, and the real executable against a real server.

The end-to-end tests run ``python -m yuneta.ycommand`` as a subprocess against a small
websockets server (127.0.0.1, ephemeral port) built on ievent.ServerSession, which decides
identity cards with ievent.check_identity_card, as the real agent does; the refusal texts
asserted here are the real agent's (its own versions are in test_agent_protocol.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from yuneta import ievent
from yuneta.ycommand import (
    DEFAULT_WAIT,
    EXIT_OUTPUT_CLOSED,
    extract_command_names,
    parse_options,
    render_answer,
    render_json,
    render_table,
    split_commands,
    strip_ignore_prefix,
)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
#   Line splitting
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, commands",
    [
        ("help", ["help"]),
        ("a; b ;c", ["a", "b", "c"]),
        ("  a ;; ; b  ", ["a", "b"]),
        ("", []),
        ("set x='a;b'; next", ["set x='a;b'", "next"]),
        ('set x="a;b"; next', ['set x="a;b"', "next"]),
        (r'set x="a\";b"; next', [r'set x="a\";b"', "next"]),
        ('write kw={"a":1;"b":2}; next', ['write kw={"a":1;"b":2}', "next"]),
        ("-fail; ok", ["-fail", "ok"]),
        ("unterminated 'quote; still one", ["unterminated 'quote; still one"]),
    ],
)
def test_split_commands_on_top_level_semicolons(line, commands):
    assert split_commands(line) == commands


@pytest.mark.parametrize(
    "command, expected",
    [
        ("-kill-yuno id=3", (True, "kill-yuno id=3")),
        ("- kill-yuno", (True, "kill-yuno")),
        ("kill-yuno", (False, "kill-yuno")),
        ("  -x", (True, "x")),
    ],
)
def test_leading_dash_means_ignore_error(command, expected):
    assert strip_ignore_prefix(command) == expected


# ---------------------------------------------------------------------------
#   Rendering
# ---------------------------------------------------------------------------

SCHEMA = [
    {"id": "name", "header": "Name", "fillspace": 8},
    {"id": "days", "header": "Days Remaining"},  # header wider than default 10
    {"id": "hidden", "header": "Hidden", "fillspace": 0},  # fillspace 0 hides the column
    {"id": "ok", "header": "Ok", "fillspace": 4},
]


def test_table_matches_the_c_layout():
    rows = [
        {"name": "listener-one", "days": 12, "ok": True, "hidden": "x"},
        {"name": "b", "days": None, "ok": False},
    ]
    assert render_table(SCHEMA, rows).splitlines() == [
        "Name     Days Remaining Ok",
        "======== ============== ====",
        "listener 12             true",
        "b" + " " * 23 + "fals",  # cells are cut to the column width, as in C
        "",
        "Total: 2",
    ]


def test_list_with_schema_prints_a_table_then_the_comment():
    text = render_answer(
        {"result": 0, "comment": "2 listeners", "schema": SCHEMA, "data": [{"name": "a"}]}
    )
    lines = text.splitlines()
    assert lines[0].startswith("Name") and lines[-2] == "Total: 1" and lines[-1] == "2 listeners"


def test_dict_data_prints_as_indented_json():
    text = render_answer({"result": 0, "comment": "", "schema": None, "data": {"a": [1]}})
    assert text == json.dumps({"a": [1]}, indent=4)


def test_list_without_schema_prints_as_json_and_strings_as_is():
    assert render_answer({"result": 0, "data": [1, 2]}) == json.dumps([1, 2], indent=4)
    assert render_answer({"result": 0, "data": "Available commands\n- help"}) == (
        "Available commands\n- help"
    )
    assert render_answer({"result": 0, "data": 42}) == "42"


def test_negative_result_prints_error_line():
    assert render_answer({"result": -1, "comment": "Yuno not found", "data": None}) == (
        "ERROR -1: Yuno not found"
    )


def command_yuno_answer() -> dict:
    """The agent's command-yuno envelope: one entry per yuno (schema is optional)."""
    return {
        "result": -1,
        "comment": "3 yuno(s) answered, 1 failed",
        "schema": None,
        "data": [
            {
                "id": "1",
                "yuno_role": "echo",
                "yuno_name": "one",
                "result": 0,
                "comment": "2 listeners",
                "schema": SCHEMA,
                "data": [{"name": "tcp-in", "days": 80, "ok": True}],
            },
            {
                "id": "2",
                "yuno_role": "echo",
                "yuno_name": "two",
                "result": 0,
                "comment": "echo^two: reloaded 1 TLS listener(s), 0 failed",
                "data": {"reloaded": 1, "failed": 0},
            },
            {
                "id": "3",
                "yuno_role": "logcenter",
                "yuno_name": "lc",
                "result": -1,
                "comment": "No answer within 10 s",
                "schema": None,
                "data": None,
            },
        ],
    }


def test_command_yuno_answer_prints_each_yuno_like_an_answer_of_its_own():
    entries = command_yuno_answer()["data"]
    assert render_answer(command_yuno_answer()).splitlines() == [
        "echo^one: 2 listeners",
        *render_table(SCHEMA, entries[0]["data"]).splitlines(),
        "echo^two: reloaded 1 TLS listener(s), 0 failed",  # the label is not said twice
        *json.dumps({"reloaded": 1, "failed": 0}, indent=4).splitlines(),
        "ERROR -1: logcenter^lc: No answer within 10 s",
        "ERROR -1: 3 yuno(s) answered, 1 failed",
    ]


def test_command_yuno_entry_without_schema_and_a_list_prints_json():
    answer = {
        "result": 0,
        "comment": "echo^one: done",
        "data": [
            {
                "id": "1",
                "yuno_role": "echo",
                "yuno_name": "one",
                "result": 0,
                "comment": "",
                "data": [1, 2],
            }
        ],
    }
    assert render_answer(answer).splitlines() == [
        "echo^one:",
        *json.dumps([1, 2], indent=4).splitlines(),
        "echo^one: done",
    ]


def test_lists_that_are_not_per_yuno_answers_print_as_before():
    rows = [{"yuno_role": "echo", "yuno_name": "one"}]  # no result/comment/data: plain rows
    assert render_answer({"result": 0, "data": rows}) == json.dumps(rows, indent=4)
    table = {"result": 0, "schema": SCHEMA, "data": command_yuno_answer()["data"]}
    assert render_answer(table).splitlines()[0].startswith("Name")  # a table schema wins


def test_json_mode_keeps_the_command_yuno_answer_raw():
    assert json.loads(render_json(command_yuno_answer())) == command_yuno_answer()


def test_colors_only_when_asked():
    assert "\033[" in render_answer({"result": -1, "comment": "x"}, color=True)
    assert "\033[" not in render_answer({"result": -1, "comment": "x"})


def test_json_mode_prints_the_envelope():
    kw = {
        "result": 0,
        "comment": "c",
        "schema": None,
        "data": {"a": 1},
        "__md_iev__": {"x": 1},
        "__md_yuno__": {"yuno_role": "agent"},
    }
    assert json.loads(render_json(kw)) == {
        "result": 0,
        "comment": "c",
        "schema": None,
        "data": {"a": 1},
        "__md_yuno__": {"yuno_role": "agent"},
    }


def test_command_names_from_the_c_help_text():
    help_text = (
        "Available commands\n==================\n\n> C_AGENT^agent\n"
        "- help                         (h , ?) [cmd='?']. Command's help\n"
        "- list-yunos                   List yunos\n"
        "- command-yuno                 [command='?']. Command to yuno\n"
    )
    assert extract_command_names({"data": help_text}) == ["command-yuno", "help", "list-yunos"]
    assert extract_command_names({"data": [{"command": "a"}, "b"]}) == ["a", "b"]


def test_words_after_the_options_are_the_command():
    opts = parse_options(["-u", "ws://h:1", "-w", "2", "command-yuno", "command=x"])
    assert (opts.url, opts.wait, opts.command) == ("ws://h:1", 2.0, "command-yuno command=x")
    defaults = parse_options(["-c", "help"])
    assert (defaults.url, defaults.yuno_role, defaults.service) == (
        "ws://127.0.0.1:1991",
        "yuneta_agent",
        "__default_service__",
    )


def test_default_wait_outlasts_the_agents_10_s_per_yuno_timeout():
    # The agent answers "No answer within 10 s" for a slow yuno: ycommand must hear it.
    assert DEFAULT_WAIT == 15.0 and parse_options(["-c", "help"]).wait == 15.0


# ---------------------------------------------------------------------------
#   End to end: the real executable against a real WebSocket server
# ---------------------------------------------------------------------------

# C_IEVENT_SRV._auth's refusal when auth_tokens are configured (gclasses/c_ievent_srv.py).
AUTH_REFUSED = "Authentication failed: a valid token is required"
SERVICES = {"__default_service__", "agent", "__yuno__"}


def identity_refusal(**card) -> str:
    """What the real agent (ievent.check_identity_card) says to ycommand's card."""
    kw = ievent.ClientSession(**card).connection_made().kw
    result, comment = ievent.check_identity_card(
        kw, my_role="yuneta_agent", my_name="agent", services=SERVICES
    )
    assert result < 0
    return comment


class TinyAgent:
    """A WebSocket server answering a few commands through ievent.ServerSession.

    With ``tokens`` it authenticates like C_IEVENT_SRV with ``auth_tokens``: a card without
    one of them is refused with the agent's own comment.
    """

    TABLE_SCHEMA = [
        {"id": "name", "header": "Name", "fillspace": 12},
        {"id": "state", "header": "State", "fillspace": 8},
    ]

    def __init__(self, ssl_context=None, tokens: tuple[str, ...] = ()) -> None:
        self.ssl_context = ssl_context
        self.tokens = tokens
        self.received: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def auth(self, card) -> tuple[int, str]:
        if card.get("jwt") in self.tokens:
            return 0, "Identity card accepted"
        return -1, AUTH_REFUSED

    def envelope(self, request: ievent.CommandRequest) -> dict:
        name = request.command.split()[0]
        if name == "many":
            return {"result": 0, "comment": "", "schema": None, "data": "x" * 200_000}
        if name == "list":
            return {
                "result": 0,
                "comment": "2 yunos",
                "schema": self.TABLE_SCHEMA,
                "data": [
                    {"name": "emailsender", "state": "running"},
                    {"name": "logcenter", "state": "paused"},
                ],
            }
        if name == "ok":
            return {"result": 0, "comment": "done", "schema": None, "data": None}
        if name == "info":
            return {"result": 0, "comment": "", "schema": None, "data": {"role": "agent"}}
        if name == "fail":
            return {"result": -1, "comment": "it failed", "schema": None, "data": None}
        if name == "help":
            return {
                "result": 0,
                "comment": "",
                "schema": None,
                "data": "Available commands\n- list  List\n- ok  Ok\n- fail  Fail\n",
            }
        return {"result": -1, "comment": f"command not available: '{name}'"}

    async def handler(self, ws) -> None:
        session = ievent.ServerSession(
            yuno_role="yuneta_agent",
            yuno_name="agent",
            yuno_id="id-1",
            realm_name="test",
            services=SERVICES,
            auth=self.auth if self.tokens else None,
        )
        async for message in ws:
            for action in session.receive_data(message):
                if isinstance(action, ievent.SendFrame):
                    await ws.send(action.text)
                elif isinstance(action, ievent.Close):
                    await ws.close()
                    return
                elif isinstance(action, ievent.CommandRequest):
                    self.received.append(action.command)
                    if action.command.startswith("bye"):  # the agent goes away mid-command
                        await ws.close(4000, "going away")
                        return
                    if action.command.startswith("fanout"):
                        # command-yuno style: one answer per yuno, the last one later
                        for n in (1, 2):
                            env = {"result": 0, "comment": f"yuno {n} done", "data": None}
                            if n == 2:
                                await asyncio.sleep(0.05)
                            await ws.send(session.answer(action, env).text)
                        continue
                    await ws.send(session.answer(action, self.envelope(action)).text)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self.handler, "127.0.0.1", 0, ssl=self.ssl_context) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def start(self) -> TinyAgent:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


@pytest.fixture
def agent():
    agent = TinyAgent().start()
    yield agent
    agent.stop()


def ycommand(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "yuneta.ycommand", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def url(agent: TinyAgent) -> str:
    return f"ws://127.0.0.1:{agent.port}"


def test_success_exits_0_and_prints_the_table(agent):
    proc = ycommand("-u", url(agent), "-c", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["Name", "State"]
    assert "emailsender running" in " ".join(proc.stdout.split())
    assert "Total: 2" in lines and lines[-1] == "2 yunos"


def test_failure_exits_255_with_error_line(agent):
    proc = ycommand("-u", url(agent), "-c", "fail")
    assert proc.returncode == 255
    assert "ERROR -1: it failed" in proc.stdout


def test_error_stops_the_chain(agent):
    proc = ycommand("-u", url(agent), "-c", "fail; ok")
    assert proc.returncode == 255
    assert agent.received == ["fail"]
    assert "done" not in proc.stdout


def test_leading_dash_ignores_the_error_and_goes_on(agent):
    proc = ycommand("-u", url(agent), "-c", "-fail; ok")
    assert proc.returncode == 0, proc.stdout
    assert agent.received == ["fail", "ok"]
    assert "ERROR -1: it failed" in proc.stdout and proc.stdout.rstrip().endswith("done")


def test_chained_commands_run_in_order(agent):
    proc = ycommand("-u", url(agent), "info; ok ; list")
    assert proc.returncode == 0, proc.stderr
    assert agent.received == ["info", "ok", "list"]
    assert '"role": "agent"' in proc.stdout


def test_json_mode_prints_one_envelope_per_answer(agent):
    proc = ycommand("-u", url(agent), "--json", "-c", "ok; info")
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["comment"] for a in answers] == ["done", ""]
    assert answers[1]["data"] == {"role": "agent"}
    assert answers[0]["__md_yuno__"]["yuno_role"] == "yuneta_agent"


def test_fanout_answers_are_all_printed(agent):
    proc = ycommand("-u", url(agent), "-c", "fanout")
    assert proc.returncode == 0
    assert "yuno 1 done" in proc.stdout and "yuno 2 done" in proc.stdout


def test_wrong_role_is_refused_by_the_identity_ack(agent):
    proc = ycommand("-u", url(agent), "-O", "controlcenter", "-c", "ok")
    reason = identity_refusal(dst_role="controlcenter")
    assert reason.startswith("Identity card refused: dst_role 'controlcenter'")
    assert proc.returncode == 255
    assert proc.stderr == f"ycommand: ERROR -1: {reason}\n"  # said once, not twice
    assert agent.received == []


def test_token_travels_in_the_identity_card():
    agent = TinyAgent(tokens=("good-token",)).start()
    try:
        assert ycommand("-u", url(agent), "-t", "good-token", "-c", "ok").returncode == 0
        for options in (["--token", "bad"], []):
            proc = ycommand("-u", url(agent), *options, "-c", "ok")
            assert proc.returncode == 255
            assert proc.stderr == f"ycommand: ERROR -1: Identity card refused: {AUTH_REFUSED}\n"
        assert agent.received == ["ok"]
    finally:
        agent.stop()


def test_unknown_service_is_refused(agent):
    proc = ycommand("-u", url(agent), "-S", "ghost", "-c", "ok")
    reason = identity_refusal(dst_service="ghost")
    assert reason == "Identity card refused: service 'ghost' not found in this yuno"
    assert proc.returncode == 255 and proc.stderr == f"ycommand: ERROR -1: {reason}\n"


@pytest.mark.parametrize("command", ["many", "fanout", "list"])
def test_a_reader_gone_from_stdout_ends_quietly(agent, command):
    # `ycommand ... | head -1`: here the pipe's reader is gone before the first write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(
            [sys.executable, "-m", "yuneta.ycommand", "-u", url(agent), "-c", command],
            cwd=ROOT,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no traceback, no "Exception ignored"
    assert proc.returncode == EXIT_OUTPUT_CLOSED


def test_closed_port_fails_clearly_within_the_wait():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    proc = ycommand("-u", f"ws://127.0.0.1:{port}", "-w", "2", "-c", "help")
    elapsed = time.monotonic() - start
    assert proc.returncode not in (0, None)
    assert "cannot connect" in proc.stderr and str(port) in proc.stderr
    assert elapsed < 2 + 20  # the wait plus interpreter start-up on a loaded CI machine


def test_agent_closing_mid_command_is_reported_at_once_with_its_close_code(agent):
    start = time.monotonic()
    proc = ycommand("-u", url(agent), "-w", "20", "-c", "bye")
    assert proc.returncode not in (0, None)
    assert "connection closed (code 4000 going away)" in proc.stderr
    assert time.monotonic() - start < 20  # not the wait running out


def test_silent_server_times_out_within_the_wait():
    with socket.socket() as listener:  # accepts TCP, never answers the WebSocket handshake
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        start = time.monotonic()
        proc = ycommand("-u", f"ws://127.0.0.1:{port}", "-w", "1", "-c", "help")
        elapsed = time.monotonic() - start
    assert proc.returncode not in (0, None)
    assert "cannot connect" in proc.stderr
    assert elapsed < 1 + 20


def test_wss_with_cafile_and_insecure(tmp_path):
    import trustme  # a test dependency (pyproject's test extra): never skipped

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    agent = TinyAgent(server_ctx).start()
    try:
        wss = f"wss://127.0.0.1:{agent.port}"
        assert ycommand("-u", wss, "--cafile", str(ca_file), "-c", "ok").returncode == 0
        assert ycommand("-u", wss, "--insecure", "-c", "ok").returncode == 0
        proc = ycommand("-u", wss, "-w", "2", "-c", "ok")  # unknown CA: refused
        assert proc.returncode == 1 and "cannot connect" in proc.stderr
    finally:
        agent.stop()
