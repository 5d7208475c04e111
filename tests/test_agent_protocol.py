"""The agent's inter-event port, end to end, against a live `yuneta run` agent process.

What a peer sees on the wire: the C ycommand's exact frames replayed over a raw WebSocket
get C-shaped answers; refusals are always answered; thousands of malformed frames neither
crash the agent nor go unlogged; and the security rules hold: plain ws:// only on loopback,
elsewhere wss:// plus a token, certificates reloadable under live sessions, tokens never shown.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from certs import Issued, TestCA, serial_of_peer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from procs import (
    Agent,
    free_port,
    run_agent_to_exit,
    write_json,
    ycommand,
    ycommand_json,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from yuneta import ievent
from yuneta.wsio import IDENTITY_TIMEOUT

MAX_FRAME = 4096
TOKEN = "s3cret-s3cret-s3cret"
MD_YUNO_KEYS = {"realm_name", "yuno_role", "yuno_name", "yuno_id"}
GATE_KEYS = {
    "dst_yuno",
    "dst_role",
    "dst_service",
    "src_yuno",
    "src_role",
    "src_service",
    "user",
    "host",
}
ANSWER_EVENTS = {
    ievent.EV_MT_COMMAND_ANSWER,
    ievent.EV_MT_STATS_ANSWER,
    ievent.EV_IDENTITY_CARD_ACK,
}


# ---------------------------------------------------------------------------
#   The C ycommand's frames (c_ievent_cli.c send_identity_card / mt_command)
# ---------------------------------------------------------------------------


def c_identity_card(
    url: str,
    *,
    dst_role: str = "yuneta_agent",
    dst_yuno: str = "",
    dst_service: str = "__default_service__",
    src_role: str = "ycommand",
    jwt: str = "",
) -> str:
    """The first frame of the C ycommand: its C_IEVENT_CLI is named after the URL."""
    return json.dumps(
        {
            "event": "EV_IDENTITY_CARD",
            "kw": {
                "yuno_role": "ycommand",
                "yuno_id": "",
                "yuno_name": "",
                "yuno_tag": "",
                "yuno_version": "7.16.0",
                "yuno_release": "7.16.0",
                "yuneta_version": "7.16.0",
                "playing": False,
                "pid": 4242,
                "watcher_pid": 0,
                "jwt": jwt,
                "username": "yuneta",
                "launch_id": 0,
                "yuno_startdate": "2025-01-01T00:00:00+0000",
                "id": "6f1c0e0e-0000-4000-8000-000000000001",
                "required_services": [],
                "__md_iev__": {
                    "ievent_gate_stack": [
                        {
                            "dst_yuno": dst_yuno,
                            "dst_role": dst_role,
                            "dst_service": dst_service,
                            "src_yuno": "",
                            "src_role": src_role,
                            "src_service": url,
                            "user": "yuneta",
                            "host": "node1",
                        }
                    ],
                    "__msg_type__": "__identity__",
                },
            },
        },
        separators=(",", ":"),
    )


def c_command(command: str, **extra: Any) -> str:
    """A full command frame as C_IEVENT_CLI mt_command builds it (src = the C_YCOMMAND gobj)."""
    return json.dumps(
        {
            "event": "EV_MT_COMMAND",
            "kw": {
                **extra,
                "__md_iev__": {
                    "command_stack": [{"command": command, "kw": {}}],
                    "ievent_gate_stack": [
                        {
                            "dst_yuno": "",
                            "dst_role": "yuneta_agent",
                            "dst_service": "__default_service__",
                            "src_yuno": "",
                            "src_role": "ycommand",
                            "src_service": "ycommand",
                            "user": "yuneta",
                            "host": "node1",
                        }
                    ],
                    "__msg_type__": "__command__",
                },
                "__command__": command,
            },
        },
        separators=(",", ":"),
    )


def bare_command(command: str) -> str:
    """The bare form: the command line only, no kw of its own, no __md_iev__."""
    return json.dumps({"event": "EV_MT_COMMAND", "kw": {"__command__": command}})


# ---------------------------------------------------------------------------
#   A raw WebSocket peer
# ---------------------------------------------------------------------------


def open_ws(url: str, ctx: ssl.SSLContext | None = None) -> ClientConnection:
    return connect(
        url,
        ssl=ctx,
        compression=None,
        proxy=None,
        open_timeout=5,
        ping_interval=None,
        max_queue=None,
        close_timeout=2,
        legacy=True,
    )


def recv_frame(ws: ClientConnection, timeout: float = 10.0) -> tuple[str, dict]:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str), "answers are text frames"
    frame = json.loads(message)
    assert set(frame) == {"event", "kw"}
    return frame["event"], frame["kw"]


def identify(ws: ClientConnection, url: str, **card: Any) -> dict:
    ws.send(c_identity_card(url, **card))
    event, ack = recv_frame(ws)
    assert event == ievent.EV_IDENTITY_CARD_ACK
    return ack


def exchange(ws: ClientConnection, frame: str) -> tuple[str, dict]:
    ws.send(frame)
    return recv_frame(ws)


def top_gate(kw: dict) -> dict:
    return kw["__md_iev__"]["ievent_gate_stack"][0]


def log_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    return lines


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A plain loopback agent, frames limited to MAX_FRAME bytes."""
    agent = Agent(
        tmp_path_factory.mktemp("agent"),
        extra={"global": {"C_IEVENT_SRV.max_frame_size": MAX_FRAME}},
    ).start()
    try:
        yield agent
    finally:
        agent.stop()


# ---------------------------------------------------------------------------
#   1. Conformance with the C ycommand
# ---------------------------------------------------------------------------


def test_command_before_identity_card_gets_a_negative_answer(agent: Agent):
    with open_ws(agent.url) as ws:
        event, kw = exchange(ws, bare_command("list-yunos"))
        assert event == ievent.EV_MT_COMMAND_ANSWER
        assert kw["result"] == -1
        assert "Identity card required" in kw["comment"]
        assert kw["data"] is None
        # Nothing ran, and the connection still takes a card.
        assert identify(ws, agent.url)["result"] == 0


def test_c_ycommand_frames_get_c_shaped_answers(agent: Agent):
    _, yuno = ycommand_json(agent.url, "command-agent command=view-attrs service=__yuno__")
    yuno_attrs = yuno["data"]
    with open_ws(agent.url + "/some/path") as ws:
        assert ws.subprotocol is None

        ack = identify(ws, agent.url)
        assert ack["result"] == 0, ack
        assert ack["comment"]
        assert ack["dst_service"] == "__default_service__"
        assert "jwt" not in ack
        assert ack["__md_iev__"]["__msg_type__"] == "__identity__"
        gate = top_gate(ack)
        assert set(gate) >= GATE_KEYS
        assert gate["dst_role"] == "ycommand"
        assert gate["dst_service"] == agent.url  # the client's src_service, reversed
        assert gate["src_role"] == "yuneta_agent"
        assert gate["src_yuno"] == "agent"
        assert ack["__md_yuno__"] == {k: yuno_attrs[k] for k in MD_YUNO_KEYS}

        # The bare form: only __command__, no kw, no __md_iev__.
        event, answer = exchange(ws, bare_command("list-yunos"))
        assert event == ievent.EV_MT_COMMAND_ANSWER
        assert answer["result"] == 0
        assert answer["comment"] == "0 yuno(s)"
        assert [col["id"] for col in answer["schema"]][:3] == ["id", "yuno_role", "yuno_name"]
        assert answer["data"] == []
        gate = top_gate(answer)
        assert gate["dst_role"] == "ycommand"
        assert gate["src_role"] == "yuneta_agent"
        assert gate["src_yuno"] == "agent"
        assert set(answer["__md_yuno__"]) == MD_YUNO_KEYS
        assert answer["__md_yuno__"]["yuno_role"] == "yuneta_agent"
        assert answer["__md_yuno__"]["yuno_name"] == "agent"
        assert answer["__md_yuno__"]["yuno_id"] == yuno_attrs["yuno_id"] != ""

        # The full form: the request's __md_iev__ comes back with its top record reversed.
        event, answer = exchange(ws, c_command("help"))
        assert event == ievent.EV_MT_COMMAND_ANSWER
        assert answer["result"] == 0
        assert answer["comment"].startswith(f"{len(answer['data'])} commands of C_AGENT")
        names = {row["command"] for row in answer["data"]}
        assert {
            "list-yunos",
            "run-yuno",
            "kill-yuno",
            "command-yuno",
            "command-agent",
            "help",
            "view-attrs",
        } <= names
        md = answer["__md_iev__"]
        assert md["__msg_type__"] == "__command__"
        assert md["command_stack"] == [{"command": "help", "kw": {}}]
        assert len(md["ievent_gate_stack"]) == 1
        gate = md["ievent_gate_stack"][0]
        assert gate == {
            "dst_yuno": "",
            "dst_role": "ycommand",
            "dst_service": "ycommand",
            "src_yuno": "agent",
            "src_role": "yuneta_agent",
            "src_service": "__input_side__",
            "user": "yuneta",
            "host": "node1",
        }
        assert answer["__md_yuno__"]["yuno_id"] == yuno_attrs["yuno_id"]
        assert "__temp__" not in answer


def test_answers_come_back_in_request_order_with_their_msg_id(agent: Agent):
    with open_ws(agent.url) as ws:
        identify(ws, agent.url)
        for msg_id in range(1, 21):
            frame = json.loads(c_command("list-yunos" if msg_id % 2 else "help"))
            frame["kw"]["__md_iev__"]["msg_id"] = msg_id
            ws.send(json.dumps(frame))
        answers = [recv_frame(ws)[1] for _ in range(20)]
        assert [a["__md_iev__"]["msg_id"] for a in answers] == list(range(1, 21))
        assert all(a["result"] == 0 for a in answers)


def test_command_routes_to_the_service_named_in_kw(agent: Agent):
    with open_ws(agent.url) as ws:
        identify(ws, agent.url)
        _, answer = exchange(ws, c_command("view-attrs", service="__yuno__"))
        assert answer["result"] == 0
        assert answer["data"]["yuno_role"] == "yuneta_agent"
        _, answer = exchange(ws, c_command("view-attrs", service="no_such_service"))
        assert answer["result"] == -1
        assert answer["comment"] == "Service not found: 'no_such_service'"
        _, answer = exchange(ws, c_command("no-such-command"))
        assert answer["result"] == -1
        assert "no-such-command" in answer["comment"]


@pytest.mark.parametrize(
    "card, reason",
    [
        ({"dst_role": "some_other_role"}, "dst_role 'some_other_role' is not my role"),
        ({"dst_service": "no_such_service"}, "service 'no_such_service' not found"),
        ({"dst_yuno": "another_agent"}, "dst_yuno 'another_agent' is not my name"),
        ({"src_role": ""}, "without yuno role"),
    ],
)
def test_refused_identity_card_gets_a_negative_ack_with_the_reason(agent: Agent, card, reason):
    with open_ws(agent.url + "/any/path?x=1") as ws:
        ack = identify(ws, agent.url, **card)
        assert ack["result"] < 0
        assert reason in ack["comment"]
        assert ack["services_roles"] == {}
        assert top_gate(ack)["src_role"] == "yuneta_agent"
        assert set(ack["__md_yuno__"]) == MD_YUNO_KEYS
        # Still not identified: commands are refused, a right card is accepted (as in C).
        _, answer = exchange(ws, bare_command("list-yunos"))
        assert answer["result"] == -1
        assert "Identity card required" in answer["comment"]
        assert identify(ws, agent.url)["result"] == 0
        assert exchange(ws, bare_command("list-yunos"))[1]["result"] == 0
    assert any(
        line["msg"] == "identity card refused" and reason in line.get("comment", "")
        for line in log_lines(agent.log)
    )


def test_identity_card_must_come_within_the_timeout_even_while_sending_junk(agent: Agent):
    started = time.monotonic()
    with open_ws(agent.url) as ws:
        with pytest.raises(ConnectionClosed):
            while time.monotonic() - started < IDENTITY_TIMEOUT + 10:
                ack = identify(ws, agent.url, dst_role="wrong")
                assert ack["result"] < 0
                time.sleep(1.0)
    assert IDENTITY_TIMEOUT - 1 <= time.monotonic() - started < IDENTITY_TIMEOUT + 5
    assert any(line["msg"] == "no identity card in time, closing" for line in log_lines(agent.log))


# ---------------------------------------------------------------------------
#   2. Fuzz: malformed frames never crash the agent, and are answered or logged
# ---------------------------------------------------------------------------

JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
NOT_STR = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_OBJECT = JSON_VALUES.filter(lambda v: not isinstance(v, dict))
EVENTS = st.sampled_from([ievent.EV_MT_COMMAND, ievent.EV_MT_STATS, ievent.EV_IDENTITY_CARD])
TEMPLATE = c_command("list-yunos")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# Routing junk: never a command_stack, so no frame can name a real command.
JUNK_MD_IEV = NOT_OBJECT | st.fixed_dictionaries(
    {},
    optional={
        "ievent_gate_stack": NOT_STR
        | st.lists(
            st.dictionaries(st.sampled_from(sorted(GATE_KEYS)), JSON_VALUES, max_size=4), max_size=2
        ),
        "__msg_type__": JSON_VALUES,
    },
)

MALFORMED = st.one_of(
    st.text(max_size=60),  # mostly bad JSON
    st.integers(1, len(TEMPLATE) - 1).map(lambda n: TEMPLATE[:n]),  # truncated frame
    NOT_OBJECT.map(_dumps),  # not an object
    st.builds(
        lambda e, kw: _dumps({"event": e, "kw": kw}), NOT_STR | st.just(""), st.just({})
    ),  # bad event
    st.builds(lambda e, kw: _dumps({"event": e, "kw": kw}), EVENTS, NOT_OBJECT),  # bad kw
    st.builds(lambda e: _dumps({"kw": {}, "Event": e}), EVENTS),  # no event
    st.sampled_from(
        [
            '{"event":"EV_MT_COMMAND","kw":{"n":NaN}}',
            '{"event":"EV_MT_COMMAND","kw":{"n":-Infinity}}',
            '{"event":"EV_MT_COMMAND","kw":{"s":"\\udc00"}}',
            "[" * 2000 + "]" * 2000,
        ]
    ),  # JSON corners
    st.binary(max_size=80),  # binary frames
    st.builds(
        lambda e, c, md, svc: _dumps(
            {"event": e, "kw": {"__command__": c, "__stats__": c, "__md_iev__": md, "service": svc}}
        ),
        EVENTS,
        NOT_STR,
        JUNK_MD_IEV,
        JSON_VALUES,
    ),  # wrong types inside
)
OVERSIZE = st.builds(
    lambda extra, binary: (
        c_command("help", pad="x" * (MAX_FRAME + extra)).encode()
        if binary
        else c_command("help", pad="é" * (MAX_FRAME // 2 + extra))
    ),
    st.integers(1, 3000),
    st.booleans(),
)
BATCH = 25
EXAMPLES = 400


@dataclass
class FuzzStats:
    inputs: int = 0
    answered: int = 0
    undecodable: int = 0
    oversize: int = 0
    connections: int = 0


class Fuzzer:
    """Feeds frames to the agent over a few connections; reconnects when one is closed.

    Every other connection sends the identity card first, so both states get fuzzed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.stats = FuzzStats()
        self.ws: ClientConnection | None = None

    def _open(self) -> ClientConnection:
        if self.ws is not None:
            self.ws.close()
        self.ws = open_ws(self.url)
        self.stats.connections += 1
        if self.stats.connections % 2:
            assert identify(self.ws, self.url)["result"] == 0
        return self.ws

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def feed(self, frames: list[str | bytes]) -> None:
        """Send frames one after the other; each must get one negative answer."""
        pending = list(frames)
        while pending:
            ws = self.ws or self._open()
            for frame in pending:
                ws.send(frame)
            try:
                while pending:
                    event, kw = recv_frame(ws)
                    assert event in ANSWER_EVENTS, (event, pending[0])
                    assert kw["result"] < 0 and kw["comment"], (kw, pending[0])
                    frame = pending.pop(0)
                    self.stats.inputs += 1
                    self.stats.answered += 1
                    self.stats.undecodable += _undecodable(frame)
            except ConnectionClosed:  # the identity timeout: resend what was not answered
                self.ws = None

    def feed_oversize(self, frame: str | bytes) -> None:
        ws = self.ws or self._open()
        ws.send(frame)
        with pytest.raises(ConnectionClosed) as info:
            recv_frame(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        self.ws = None
        self.stats.inputs += 1
        self.stats.oversize += 1


def _undecodable(frame: str | bytes) -> bool:
    try:
        ievent.decode_frame(frame, MAX_FRAME)
    except ievent.FrameError:
        return True
    return False


def test_malformed_frames_are_answered_or_logged_and_never_crash_the_agent(agent: Agent):
    warnings_before = sum(1 for line in log_lines(agent.log) if line["msg"] == "bad inter-event")
    fuzzer = Fuzzer(agent.url)
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        batch=st.lists(MALFORMED, min_size=BATCH, max_size=BATCH),
        oversize=st.one_of(st.none(), st.none(), st.none(), OVERSIZE),
    )
    def feed(batch: list[str | bytes], oversize: str | bytes | None) -> None:
        # An oversize frame closes the connection: at most a few dozen per run.
        if oversize is not None and fuzzer.stats.oversize < 10:
            fuzzer.feed(batch[:-1])
            fuzzer.feed_oversize(oversize)
        else:
            fuzzer.feed(batch)

    try:
        feed()
    finally:
        fuzzer.close()
    stats = fuzzer.stats
    elapsed = time.monotonic() - started
    assert stats.inputs >= 10_000, stats
    assert stats.oversize >= 1, stats
    assert stats.connections <= 30, stats
    print(f"\nfuzz: {elapsed:.1f} s: {stats}")

    assert agent.proc is not None and agent.proc.poll() is None
    proc = ycommand(agent.url, "-c", "help")
    assert proc.returncode == 0, proc.stderr
    assert "list-yunos" in proc.stdout

    def logged() -> tuple[int, int]:
        lines = log_lines(agent.log)
        bad = sum(1 for line in lines if line["msg"] == "bad inter-event") - warnings_before
        big = sum(
            1 for line in lines if line["msg"] == "frame over the size limit, connection closed"
        )
        return bad, big

    expected = (stats.undecodable, stats.oversize)
    deadline = time.monotonic() + 10
    while logged() != expected and time.monotonic() < deadline:  # the log is written async
        time.sleep(0.05)
    assert logged() == expected, (logged(), stats)
    lines = log_lines(agent.log)
    assert all(line["level"] == "warning" for line in lines if line["msg"] == "bad inter-event")
    assert not [line for line in lines if line["level"] in ("error", "critical")]


# ---------------------------------------------------------------------------
#   3. Security
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, attr, tls",
    [
        ("ws://0.0.0.0:{port}", "url", False),
        ("ws://[::]:{port}", "url", False),
        ("ws://{host}:{port}", "url", False),
        ("wss://0.0.0.0:{port}", "auth_tokens", True),
    ],
)
def test_non_loopback_address_without_tls_and_token_starts_nothing(tmp_path: Path, url, attr, tls):
    port = free_port()
    url = url.format(port=port, host=socket.gethostname())
    extra: dict[str, Any] = {}
    if tls:  # a valid certificate, so the missing token is the only fault
        extra["global"] = {
            "C_IEVENT_SRV.crypto": TestCA().issue(tmp_path / "certs", "agent").crypto()
        }
    override = write_json(
        tmp_path / "override.json",
        {
            "__json_config_variables__": {"agent_url": url, "work_dir": str(tmp_path / "agent")},
            **extra,
        },
    )
    proc = run_agent_to_exit(override, tmp_path)
    assert proc.returncode != 0
    assert f"C_IEVENT_SRV: attribute '{attr}'" in proc.stderr
    assert "listening" not in proc.stderr
    assert "yuno running" not in proc.stderr
    for host in ("127.0.0.1", socket.gethostname()):
        with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
            pass


@dataclass
class TlsAgent:
    agent: Agent
    url: str
    ca: TestCA
    cafile: Path
    certdir: Path
    leaf: Issued

    def ycommand(self, command: str, *options: str) -> subprocess.CompletedProcess:
        return ycommand(self.url, "-c", command, extra=["--cafile", str(self.cafile), *options])

    def ycommand_json(self, command: str) -> tuple[int, dict]:
        """(exit code, last envelope) of an authenticated `ycommand --json -c command`."""
        proc = self.ycommand(command, "-t", TOKEN, "--json")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, proc.stdout + proc.stderr
        return proc.returncode, json.loads(lines[-1])


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsAgent]:
    """An agent on wss://127.0.0.1 with a test CA's certificate and auth_tokens [TOKEN]."""
    workdir = tmp_path_factory.mktemp("tls-agent")
    ca = TestCA()
    cafile = ca.write_ca(workdir / "ca.pem")
    leaf = ca.issue(workdir / "certs", "agent")
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    agent = Agent(
        workdir,
        port=port,
        extra={
            "__json_config_variables__": {
                "agent_url": url,
                "work_dir": str(workdir / "agent"),
                "metrics_port": 0,  # never the fixed default: suites run side by side
            },
            "global": {"C_IEVENT_SRV.crypto": leaf.crypto(), "C_IEVENT_SRV.auth_tokens": [TOKEN]},
        },
    ).start()
    try:
        yield TlsAgent(agent, url, ca, cafile, workdir / "certs", leaf)
    finally:
        agent.stop()


def test_wss_agent_runs_commands_only_with_the_token(tls_agent: TlsAgent):
    ok = tls_agent.ycommand("list-yunos", "-t", TOKEN)
    assert ok.returncode == 0, ok.stderr
    assert "Total: 0" in ok.stdout

    for options in ([], ["-t", "not-the-token"], ["-t", TOKEN.upper()]):
        refused = tls_agent.ycommand("list-yunos", *options)
        assert refused.returncode == 255  # the negative ACK's result & 0xFF
        assert (
            "Identity card refused: Authentication failed: a valid token is required"
            in refused.stderr
        )
        assert "Total" not in refused.stdout

    # On the wire: a negative ACK, then commands are still refused.
    with open_ws(tls_agent.url, tls_agent.ca.client_context()) as ws:
        ack = identify(ws, tls_agent.url, jwt="not-the-token")
        assert ack["result"] < 0
        assert ack["comment"] == "Authentication failed: a valid token is required"
        _, answer = exchange(ws, bare_command("list-yunos"))
        assert answer["result"] == -1
        assert identify(ws, tls_agent.url, jwt=TOKEN)["result"] == 0
        assert exchange(ws, bare_command("list-yunos"))[1]["result"] == 0


def test_wss_agent_refuses_clients_that_do_not_trust_its_certificate(tls_agent: TlsAgent):
    proc = ycommand(tls_agent.url, "-c", "list-yunos", extra=["-t", TOKEN], wait=5)
    assert proc.returncode != 0
    assert "Total" not in proc.stdout


def _served_serial(tls_agent: TlsAgent) -> str:
    port = tls_agent.agent.port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        tls_agent.ca.client_context().wrap_socket(raw) as tls,
    ):
        return serial_of_peer(tls)


def test_reload_certs_serves_new_connections_the_new_certificate_and_keeps_open_sessions(
    tls_agent: TlsAgent,
):
    with open_ws(tls_agent.url, tls_agent.ca.client_context()) as ws:
        assert identify(ws, tls_agent.url, jwt=TOKEN)["result"] == 0
        old_serial = serial_of_peer(ws.socket)
        assert _served_serial(tls_agent) == old_serial

        renewed = tls_agent.ca.issue(tls_agent.certdir, "agent")  # same files, new content
        proc = tls_agent.ycommand(
            "command-agent command=reload-certs service=__yuno__", "-t", TOKEN
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "reloaded 1 TLS listener(s), 0 failed" in proc.stdout

        assert _served_serial(tls_agent) == renewed.serial != old_serial
        # The session opened before the reload goes on, on its old certificate.
        event, answer = exchange(ws, c_command("list-yunos"))
        assert (event, answer["result"]) == (ievent.EV_MT_COMMAND_ANSWER, 0)
        assert serial_of_peer(ws.socket) == old_serial

    code, cert = tls_agent.ycommand_json("command-agent command=view-cert service=__yuno__")
    assert code == 0
    assert renewed.serial in json.dumps(cert["data"])


def test_token_is_never_shown_in_answers_nor_logged(tls_agent: TlsAgent):
    answers = []
    for command in (
        "view-attrs",
        "command-agent command=view-attrs service=__yuno__",
        "view-gobj-tree attrs=auth_tokens,crypto,url",
        "command-agent command=view-gobj-tree service=__yuno__ attrs=auth_tokens",
        "command-agent command=view-cert service=__yuno__",
    ):
        proc = tls_agent.ycommand(command, "-t", TOKEN)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        answers.append(proc.stdout)
    assert all(TOKEN not in text for text in answers)
    # view-gobj-tree shows only public attributes: a secret is not even named.
    assert (
        "auth_tokens" not in answers[2] and "url=wss://127.0.0.1:" in answers[2]
    )  # the drawn tree
    assert tls_agent.ycommand("list-yunos", "-t", "wrong-" + TOKEN).returncode != 0
    log = tls_agent.agent.log.read_text()
    assert "identity card refused" in log
    assert TOKEN not in log
