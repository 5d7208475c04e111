"""Strict identity cards: every field is type- and size-checked before anything is stored.

Sans-I/O first (any card, however broken, gives an answer and never raises), then against a
live agent: a card with a bad pid is refused with the reason in a negative ACK, and the
registry is untouched. Last, the `user` our ycommand sends is `yuneta`, as the C tools send.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import Agent, ycommand, ycommand_json
from websockets.sync.client import connect
from websockets.sync.server import serve

from yuneta import ievent

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CARD_KEYS = [
    "yuno_role",
    "yuno_id",
    "yuno_name",
    "yuno_tag",
    "yuno_version",
    "pid",
    "watcher_pid",
    "launch_id",
    "playing",
    "jwt",
    "username",
    "id",
    "required_services",
    "config_files",
    "yuno_secret",
    "src_role",
    "dst_role",
]


def good_card(**top: Any) -> dict[str, Any]:
    card = ievent.build_identity_card(
        "n1", "echo", "echo", "", "yuneta_agent", "__default_service__", "yuneta", "h", 42
    )
    card.update(top)
    return card


# A good card with some fields replaced by anything JSON can carry, or a card of pure junk.
CARDS = st.one_of(
    st.dictionaries(st.sampled_from(CARD_KEYS), JSON_VALUES, max_size=8).map(
        lambda changes: good_card(**changes)
    ),
    st.dictionaries(st.sampled_from([*CARD_KEYS, "__md_iev__"]), JSON_VALUES, max_size=8),
    st.builds(
        lambda gate: good_card(__md_iev__={ievent.IEVENT_STACK_ID: [gate]}),
        st.dictionaries(
            st.sampled_from(["src_role", "dst_role", "src_service", "dst_service", "user", "host"]),
            JSON_VALUES,
        ),
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CARDS)
def test_fuzzed_identity_cards_never_raise_and_accepted_ones_are_well_typed(card):
    server = ievent.ServerSession(yuno_role="yuneta_agent", services=["__default_service__"])
    actions = server.receive_data(ievent.encode_frame(ievent.EV_IDENTITY_CARD, card))
    (ack,) = [a for a in actions if isinstance(a, ievent.SendFrame)]
    assert ack.event == ievent.EV_IDENTITY_CARD_ACK
    if ack.kw["result"] >= 0:
        # What an accepted card carries is what the agent may store without checking again.
        assert ievent.validate_identity_card(card) is None
        assert "pid" not in card or (type(card["pid"]) is int and card["pid"] > 0)
        for key in ("yuno_id", "yuno_role", "yuno_name"):
            assert isinstance(card.get(key, ""), str) and len(card.get(key, "")) <= ievent.MAX_NAME
    else:
        assert ack.kw["comment"] and server.state == ievent.ST_WAIT_IDENTITY_CARD


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"pid": "abc"}, "'pid' must be a positive integer"),
        ({"pid": [1]}, "'pid' must be a positive integer"),
        ({"pid": True}, "'pid' must be a positive integer"),
        ({"pid": -5}, "'pid' must be a positive integer"),
        ({"pid": 1.5}, "'pid' must be a positive integer"),
        ({"yuno_name": "x" * 129}, "'yuno_name' is longer than 128"),
        ({"yuno_role": 7}, "'yuno_role' must be a string"),
        ({"yuno_id": "../../etc"}, "'yuno_id' may only hold"),
        ({"jwt": "j" * 20000}, "'jwt' is longer than"),
        ({"config_files": ["a"] * 65}, "'config_files' must be a list of at most 64"),
        ({"config_files": [1]}, "'config_files[0]' must be a string"),
        ({"__md_iev__": {"ievent_gate_stack": [{"src_role": ["x"]}]}}, "src_role' must be"),
    ],
)
def test_bad_card_fields_are_refused_with_the_reason(changes, words):
    result, comment = ievent.check_identity_card(
        good_card(**changes), my_role="yuneta_agent", services=["__default_service__"]
    )
    assert result == -1 and words in comment, comment


def test_the_c_ycommand_card_and_ours_pass():
    assert ievent.validate_identity_card(good_card()) is None
    assert ievent.validate_identity_card(good_card(yuno_id="0a1b2c3d4e5f", pid=1)) is None


# ---------------------------------------------------------------------------
#   A live agent
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    agent = Agent(tmp_path_factory.mktemp("cards")).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize("pid", ["abc", [1], 0, None])
def test_agent_refuses_a_yuno_card_with_a_bad_pid_before_any_ack(agent: Agent, pid):
    card = ievent.build_identity_card(
        "liar", "echo_tls", "echo_tls", "", "yuneta_agent", "__default_service__", "yuneta", "h", 1
    )
    card.update(pid=pid, yuno_id="badpid")
    with connect(agent.url, proxy=None) as ws:
        ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD, card))
        ack = json.loads(ws.recv(timeout=10))
    assert ack["event"] == ievent.EV_IDENTITY_CARD_ACK
    assert ack["kw"]["result"] == -1 and "'pid' must be a positive integer" in ack["kw"]["comment"]
    code, listed = ycommand_json(agent.url, "list-yunos")
    assert code == 0 and listed["data"] == []
    assert agent.proc is not None and agent.proc.poll() is None
    assert not [line for line in agent.log_lines() if line["level"] == "error"]


def test_ycommand_says_it_is_user_yuneta_as_the_c_tools_do(tmp_path: Path):
    """A C agent refuses any other user without a JWT; our ycommand must pass there."""
    cards: list[dict] = []

    def handler(ws: Any) -> None:
        frame = json.loads(ws.recv(timeout=10))
        cards.append(frame["kw"])
        ack = ievent.build_identity_card_ack(
            -1, "only checking", frame["kw"], "", "yuneta_agent", "x", {}
        )
        ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD_ACK, ack))

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        proc = ycommand(f"ws://127.0.0.1:{port}", "-c", "help", wait=5)
        server.shutdown()
    assert proc.returncode != 0 and "only checking" in proc.stdout + proc.stderr
    (card,) = cards
    assert card["__md_iev__"]["ievent_gate_stack"][0]["user"] == "yuneta"
    assert card["username"] == "yuneta"


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(CARDS, min_size=1, max_size=5))
def test_fuzzed_cards_against_the_live_agent_are_all_answered_and_raise_nothing(agent, cards):
    """Through the whole admission path (kernel UID, the agent's yuno claims): an exception
    there would come back as 'Authentication failed: <error>' (this agent has no tokens)."""
    with connect(agent.url, proxy=None, open_timeout=10) as ws:
        for card in cards:
            ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD, card))
            frame = json.loads(ws.recv(timeout=10))
            assert frame["event"] == ievent.EV_IDENTITY_CARD_ACK
            assert not frame["kw"]["comment"].startswith("Authentication failed"), frame["kw"]
