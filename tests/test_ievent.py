"""Conformance of the sans-I/O inter-event protocol with the C framework's wire format.

The frames below are written the way the C code builds them (c_ievent_cli.c
send_identity_card / mt_command, msg_ievent.c), and replayed through our ServerSession.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yuneta import ievent
from yuneta.command import envelope
from yuneta.ievent import (
    EV_IDENTITY_CARD,
    EV_IDENTITY_CARD_ACK,
    EV_MT_COMMAND,
    EV_MT_COMMAND_ANSWER,
    EV_MT_STATS,
    EV_MT_STATS_ANSWER,
    AnswerDropped,
    ClientSession,
    Close,
    CommandAnswer,
    CommandRequest,
    FrameError,
    Gate,
    IdentityAccepted,
    IdentityRefused,
    ProtocolFault,
    SendFrame,
    ServerSession,
    SessionOpened,
    decode_frame,
    encode_frame,
)

MD_YUNO_KEYS = {"realm_name", "yuno_role", "yuno_name", "yuno_id"}
GATE_KEYS = {
    "src_yuno",
    "src_role",
    "src_service",
    "dst_yuno",
    "dst_role",
    "dst_service",
    "user",
    "host",
}

# What the C ycommand (role "ycommand", C_IEVENT_CLI named after the url) sends first.
C_IDENTITY_CARD = json.dumps(
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
            "jwt": "",
            "username": "yuneta",
            "launch_id": 0,
            "yuno_startdate": "2025-01-01T00:00:00+0000",
            "id": "6f1c0e0e-0000-4000-8000-000000000001",
            "required_services": [],
            "__md_iev__": {
                "ievent_gate_stack": [
                    {
                        "dst_yuno": "",
                        "dst_role": "yuneta_agent",
                        "dst_service": "__default_service__",
                        "src_yuno": "",
                        "src_role": "ycommand",
                        "src_service": "ws://127.0.0.1:1991",
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

# A command as the C C_IEVENT_CLI mt_command builds it (src = the C_YCOMMAND gobj).
C_COMMAND = json.dumps(
    {
        "event": "EV_MT_COMMAND",
        "kw": {
            "__md_iev__": {
                "command_stack": [{"command": "list-yunos", "kw": {}}],
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
            "__command__": "list-yunos",
        },
    },
    separators=(",", ":"),
)

# The bare form: only the command line.
C_COMMAND_ONLY = '{"event":"EV_MT_COMMAND","kw":{"__command__":"view-cert"}}'

SERVICES = {"__default_service__", "agent", "__yuno__"}


def make_server(**kw) -> ServerSession:
    params = dict(
        yuno_role="yuneta_agent",
        yuno_name="agent1",
        yuno_id="uuid-1",
        realm_name="realm",
        services=SERVICES,
        channel_name="ievent-1",
    )
    params.update(kw)
    return ServerSession(**params)


def sent(actions: list) -> list[SendFrame]:
    frames = [a for a in actions if isinstance(a, SendFrame)]
    for frame in frames:  # every frame we send survives the wire
        assert decode_frame(frame.text) == ievent.Frame(frame.event, frame.kw)
    return frames


def identified(server: ServerSession | None = None) -> ServerSession:
    server = server or make_server()
    server.receive_data(C_IDENTITY_CARD)
    assert server.state == ievent.ST_SESSION
    return server


# ---------------------------------------------------------------------------
#   Frames
# ---------------------------------------------------------------------------


def test_encode_frame_is_compact_json():
    text = encode_frame("EV_X", {"a": 1, "b": [1, 2], "ñ": "é"})
    assert text == '{"event":"EV_X","kw":{"a":1,"b":[1,2],"ñ":"é"}}'
    assert decode_frame(text) == ievent.Frame("EV_X", {"a": 1, "b": [1, 2], "ñ": "é"})
    assert decode_frame(text.encode()) == decode_frame(text)


def test_frame_without_kw_has_empty_kw():
    assert decode_frame('{"event":"EV_X"}').kw == {}


@pytest.mark.parametrize(
    "data, reason",
    [
        ("{not json", "bad JSON"),
        ("[1,2]", "not a JSON object"),
        ('"EV_X"', "not a JSON object"),
        ('{"kw":{}}', "event"),
        ('{"event":7,"kw":{}}', "event"),
        ('{"event":"","kw":{}}', "event"),
        ('{"event":"EV_X","kw":[]}', "'kw'"),
        ('{"event":"EV_X","kw":"x"}', "'kw'"),
        ('{"event":"EV_X","kw":{"n":NaN}}', "NaN"),
        (b'{"event":"EV_\xff","kw":{}}', "bad UTF-8"),
        ('{"event":"EV_X","kw":{"s":"\\ud800"}}', "surrogate"),
        ("[" * 100000 + "]" * 100000, "bad JSON"),
    ],
)
def test_decode_frame_rejects_with_a_reason(data, reason):
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    assert reason in info.value.reason


def test_decode_frame_rejects_oversize_before_parsing():
    big = encode_frame("EV_X", {"blob": "x" * 2000})
    with pytest.raises(FrameError, match="too large"):
        decode_frame(big, max_size=1000)
    with pytest.raises(FrameError, match="too large"):
        decode_frame(big.encode(), max_size=1000)
    assert decode_frame(big, max_size=len(big)).kw["blob"] == "x" * 2000


# ---------------------------------------------------------------------------
#   Identity card
# ---------------------------------------------------------------------------


def test_built_identity_card_has_the_c_keys():
    card = ievent.build_identity_card(
        "",
        "ycommand",
        "ycommand",
        "",
        "yuneta_agent",
        "__default_service__",
        "yuneta",
        "node1",
        77,
        "tok",
    )
    for key in (
        "yuno_role",
        "yuno_id",
        "yuno_name",
        "yuno_tag",
        "yuno_version",
        "yuno_release",
        "yuneta_version",
        "playing",
        "pid",
        "watcher_pid",
        "jwt",
        "username",
        "launch_id",
        "yuno_startdate",
        "id",
        "required_services",
    ):
        assert key in card
    assert card["pid"] == 77 and card["jwt"] == "tok" and card["yuno_role"] == "ycommand"
    md = card["__md_iev__"]
    assert md["__msg_type__"] == "__identity__"
    (gate,) = md["ievent_gate_stack"]
    assert gate == {
        "dst_yuno": "",
        "dst_role": "yuneta_agent",
        "dst_service": "__default_service__",
        "src_yuno": "",
        "src_role": "ycommand",
        "src_service": "ycommand",
        "user": "yuneta",
        "host": "node1",
    }


def test_c_identity_card_is_accepted_and_the_ack_names_both_sides():
    server = make_server()
    actions = server.receive_data(C_IDENTITY_CARD)
    (ack,) = sent(actions)
    assert ack.event == EV_IDENTITY_CARD_ACK
    kw = ack.kw
    assert kw["result"] == 0 and isinstance(kw["comment"], str)
    assert kw["username"] == "yuneta"
    assert kw["dst_service"] == "__default_service__"
    assert kw["services_roles"] == {"__default_service__": []}
    assert kw["__md_iev__"]["__msg_type__"] == "__identity__"
    (gate,) = kw["__md_iev__"]["ievent_gate_stack"]
    assert set(gate) == GATE_KEYS
    assert gate == {
        "src_yuno": "agent1",
        "src_role": "yuneta_agent",
        "src_service": "ievent-1",
        "dst_yuno": "",
        "dst_role": "ycommand",
        "dst_service": "ws://127.0.0.1:1991",
        "user": "yuneta",
        "host": "node1",
    }
    assert kw["__md_yuno__"] == {
        "realm_name": "realm",
        "yuno_role": "yuneta_agent",
        "yuno_name": "agent1",
        "yuno_id": "uuid-1",
    }
    accepted = [a for a in actions if isinstance(a, IdentityAccepted)]
    assert accepted and accepted[0].client.src_role == "ycommand"
    assert server.state == ievent.ST_SESSION


def test_ack_is_understood_by_the_client_session():
    client = ClientSession(user="yuneta", host="node1", pid=1)
    server = make_server()
    (ack,) = sent(server.receive_data(client.connection_made().text))
    (opened,) = client.receive_data(ack.text)
    assert isinstance(opened, SessionOpened)
    assert (opened.remote_yuno_role, opened.remote_yuno_name) == ("yuneta_agent", "agent1")
    assert client.state == ievent.ST_SESSION


def test_role_is_matched_case_insensitively():
    card = json.loads(C_IDENTITY_CARD)
    card["kw"]["__md_iev__"]["ievent_gate_stack"][0]["dst_role"] = "YUNETA_Agent"
    (ack,) = sent(make_server().receive_data(json.dumps(card)))
    assert ack.kw["result"] == 0


def _card(**gate_changes) -> str:
    card = json.loads(C_IDENTITY_CARD)
    card["kw"]["__md_iev__"]["ievent_gate_stack"][0].update(gate_changes)
    return json.dumps(card)


@pytest.mark.parametrize(
    "card, words",
    [
        (_card(dst_role="controlcenter"), "dst_role"),
        (_card(dst_yuno="other"), "dst_yuno"),
        (_card(dst_service="nope"), "'nope' not found"),
        (_card(src_role=""), "src_role"),
        (_card(src_service=""), "src_service"),
        ('{"event":"EV_IDENTITY_CARD","kw":{"yuno_role":"x"}}', "ievent_gate_stack"),
    ],
)
def test_bad_identity_card_gets_a_negative_ack(card, words):
    server = make_server()
    actions = server.receive_data(card)
    (ack,) = sent(actions)
    assert ack.event == EV_IDENTITY_CARD_ACK
    assert ack.kw["result"] < 0 and words in ack.kw["comment"]
    assert set(ack.kw["__md_yuno__"]) == MD_YUNO_KEYS
    assert any(isinstance(a, IdentityRefused) for a in actions)
    assert server.state == ievent.ST_WAIT_IDENTITY_CARD


def test_optional_name_matches_when_given():
    (ack,) = sent(make_server().receive_data(_card(dst_yuno="AGENT1")))
    assert ack.kw["result"] == 0


def test_auth_hook_sees_the_token_and_can_refuse():
    def auth(card):
        return (
            (0, "User authenticated by jwt")
            if card.get("jwt") == "good"
            else (-1, "Authentication failed: Invalid token")
        )

    card = json.loads(C_IDENTITY_CARD)
    card["kw"]["jwt"] = "bad"
    server = make_server(auth=auth)
    (ack,) = sent(server.receive_data(json.dumps(card)))
    assert ack.kw["result"] == -1 and "Invalid token" in ack.kw["comment"]
    assert server.state == ievent.ST_WAIT_IDENTITY_CARD
    card["kw"]["jwt"] = "good"
    (ack,) = sent(server.receive_data(json.dumps(card)))
    assert ack.kw == {**ack.kw, "result": 0, "comment": "User authenticated by jwt"}
    assert server.state == ievent.ST_SESSION


def test_raising_auth_hook_is_a_refusal_not_a_crash():
    def auth(card):
        raise RuntimeError("boom")

    (ack,) = sent(make_server(auth=auth).receive_data(C_IDENTITY_CARD))
    assert ack.kw["result"] < 0 and "boom" in ack.kw["comment"]


def test_services_may_be_a_predicate():
    server = make_server(services=lambda name: name.lower() == "__default_service__")
    (ack,) = sent(server.receive_data(C_IDENTITY_CARD))
    assert ack.kw["result"] == 0


# ---------------------------------------------------------------------------
#   Before the identity card
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, answer_event",
    [
        (C_COMMAND, EV_MT_COMMAND_ANSWER),
        (C_COMMAND_ONLY, EV_MT_COMMAND_ANSWER),
        ('{"event":"EV_MT_STATS","kw":{"__stats__":""}}', EV_MT_STATS_ANSWER),
        ('{"event":"EV_SOMETHING","kw":{}}', EV_MT_COMMAND_ANSWER),
    ],
)
def test_events_before_the_identity_card_get_a_negative_answer(frame, answer_event):
    server = make_server()
    (answer,) = sent(server.receive_data(frame))
    assert answer.event == answer_event
    assert answer.kw["result"] == -1 and "Identity card required" in answer.kw["comment"]
    assert server.state == ievent.ST_WAIT_IDENTITY_CARD


def test_refused_card_does_not_open_the_door_to_commands():
    server = make_server()
    server.receive_data(_card(dst_role="nope"))
    (answer,) = sent(server.receive_data(C_COMMAND))
    assert answer.kw["result"] == -1


def test_undecodable_frame_is_reported_and_answered():
    actions = make_server().receive_data(b"\xff\xfe")
    assert isinstance(actions[0], ProtocolFault)
    (answer,) = sent(actions)
    assert answer.kw["result"] == -1 and "Bad inter-event" in answer.kw["comment"]


# ---------------------------------------------------------------------------
#   Commands and answers
# ---------------------------------------------------------------------------


def test_c_command_frame_becomes_a_request_and_its_answer_reverses_the_gate():
    server = identified()
    (request,) = server.receive_data(C_COMMAND)
    assert isinstance(request, CommandRequest)
    assert request.command == "list-yunos"
    assert request.kw == {}
    assert request.service == "__default_service__"
    assert request.gate.src_role == "ycommand"

    schema = [{"id": "name", "header": "Name", "fillspace": 12}]
    answer = server.answer(
        request, {"result": 0, "comment": "", "schema": schema, "data": [{"name": "x"}]}
    )
    (answer,) = sent([answer])
    kw = answer.kw
    assert answer.event == EV_MT_COMMAND_ANSWER
    assert (kw["result"], kw["comment"], kw["schema"], kw["data"]) == (
        0,
        "",
        schema,
        [{"name": "x"}],
    )
    md = kw["__md_iev__"]
    assert md["__msg_type__"] == "__command__"
    assert md["command_stack"] == [{"command": "list-yunos", "kw": {}}]
    (gate,) = md["ievent_gate_stack"]
    assert gate == {
        "dst_yuno": "",
        "dst_role": "ycommand",
        "dst_service": "ycommand",
        "src_yuno": "agent1",
        "src_role": "yuneta_agent",
        "src_service": "ievent-1",
        "user": "yuneta",
        "host": "node1",
    }
    assert kw["__md_yuno__"] == {
        "realm_name": "realm",
        "yuno_role": "yuneta_agent",
        "yuno_name": "agent1",
        "yuno_id": "uuid-1",
    }


def test_command_with_only_the_command_line_gets_a_default_stack():
    server = identified()
    (request,) = server.receive_data(C_COMMAND_ONLY)
    assert request.command == "view-cert" and request.kw == {}
    (answer,) = sent([server.answer(request, {"result": -1, "comment": ""})])
    kw = answer.kw
    assert kw["result"] == -1 and kw["comment"] == "(see log)"
    (gate,) = kw["__md_iev__"]["ievent_gate_stack"]
    # dst = the caller as its identity card introduced it
    assert gate["dst_role"] == "ycommand"
    assert gate["dst_service"] == "ws://127.0.0.1:1991"
    assert (gate["src_yuno"], gate["src_role"]) == ("agent1", "yuneta_agent")
    assert set(kw["__md_yuno__"]) == MD_YUNO_KEYS


def test_command_from_the_command_stack_only():
    frame = json.loads(C_COMMAND)
    del frame["kw"]["__command__"]
    (request,) = identified().receive_data(json.dumps(frame))
    assert request.command == "list-yunos"


def test_command_parameters_and_routing_service():
    kw = ievent.build_command(
        "command-yuno command=reload-certs",
        {"service": "__yuno__", "extra": 1},
        Gate(src_role="ycommand", src_service="ycommand", dst_role="yuneta_agent"),
    )
    (request,) = identified().receive_data(encode_frame(EV_MT_COMMAND, kw))
    assert request.service == "__yuno__"
    assert request.kw == {"extra": 1}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"service": "ghost"}, "Service not found: 'ghost'"),
        ({"__command__": ""}, "What command?"),
    ],
)
def test_unroutable_command_gets_a_negative_answer(change, words):
    frame = json.loads(C_COMMAND)
    frame["kw"].update(change)
    (answer,) = sent(identified().receive_data(json.dumps(frame)))
    assert answer.kw["result"] == -1 and words in answer.kw["comment"]
    assert answer.kw["__md_iev__"]["ievent_gate_stack"][0]["dst_role"] == "ycommand"


def test_command_for_another_role_is_answered_not_dropped():
    frame = json.loads(C_COMMAND)
    frame["kw"]["__md_iev__"]["ievent_gate_stack"][0]["dst_role"] = "controlcenter"
    (answer,) = sent(identified().receive_data(json.dumps(frame)))
    assert answer.kw["result"] == -1 and "not my role" in answer.kw["comment"]


def test_stats_are_requests_too():
    server = identified()
    (request,) = server.receive_data('{"event":"EV_MT_STATS","kw":{"__stats__":"x"}}')
    assert request.answer_event == EV_MT_STATS_ANSWER and request.command == "x"
    assert server.answer(request, {"result": 0}).event == EV_MT_STATS_ANSWER


def test_other_events_in_session_reach_the_application():
    (event,) = identified().receive_data('{"event":"EV_ON_SOMETHING","kw":{"a":1}}')
    assert event == ievent.EventReceived("EV_ON_SOMETHING", {"a": 1})


def test_goodbye_closes():
    server = identified()
    assert server.receive_data('{"event":"EV_GOODBYE","kw":{"cause":"bye"}}') == [
        Close("peer said goodbye")
    ]
    assert server.receive_data(C_COMMAND) == []


def test_build_command_answer_normalizes_the_envelope():
    kw = ievent.build_command_answer(
        {"result": "bad", "comment": None, "extra": 1},
        {},
        ievent.md_yuno("r", "role", "name", "id"),
    )
    assert kw["result"] == -1 and kw["comment"] == "(see log)" and kw["extra"] == 1
    assert kw["schema"] is None and kw["data"] is None


@pytest.mark.parametrize(
    "result, comment", [(0, ""), (1, ""), (3, ""), (-1, "(see log)"), (-7, "(see log)")]
)
def test_only_a_negative_result_without_comment_says_see_log(result, comment):
    # Failure is a negative result, as yuneta.command.envelope; a positive result is a success.
    assert envelope(result)["comment"] == comment
    kw = ievent.build_command_answer(
        {"result": result, "comment": ""}, {}, ievent.md_yuno("r", "role", "name", "id")
    )
    assert kw["result"] == result and kw["comment"] == comment


# ---------------------------------------------------------------------------
#   Client session
# ---------------------------------------------------------------------------


def open_client() -> tuple[ClientSession, ServerSession]:
    client = ClientSession(user="yuneta", host="node1", pid=1)
    server = make_server()
    (ack,) = sent(server.receive_data(client.connection_made().text))
    client.receive_data(ack.text)
    return client, server


def test_round_trip_with_correlation_ids():
    client, server = open_client()
    id1, frame1 = client.send_command("one")
    id2, frame2 = client.send_command("two", service="agent")
    (req1,) = server.receive_data(frame1.text)
    (req2,) = server.receive_data(frame2.text)
    assert req2.service == "agent"
    (ans2,) = client.receive_data(server.answer(req2, {"result": 0, "data": 2}).text)
    (ans1,) = client.receive_data(server.answer(req1, {"result": -1, "comment": "no"}).text)
    assert isinstance(ans1, CommandAnswer) and (ans1.msg_id, ans1.result, ans1.comment) == (
        id1,
        -1,
        "no",
    )
    assert (ans2.msg_id, ans2.data) == (id2, 2)


def test_client_drops_answers_for_another_role_as_the_c_client():
    client, server = open_client()
    _, frame = client.send_command("x")
    (request,) = server.receive_data(frame.text)
    answer = server.answer(request, {"result": 0})
    answer.kw["__md_iev__"]["ievent_gate_stack"][0]["dst_role"] = "someone_else"
    (event,) = client.receive_data(answer.text)
    assert isinstance(event, AnswerDropped)


def test_client_negative_ack_closes_the_session():
    client = ClientSession(dst_role="nobody", user="u", host="h")
    (ack,) = sent(make_server().receive_data(client.connection_made().text))
    (event,) = client.receive_data(ack.text)
    assert isinstance(event, IdentityRefused) and event.result < 0
    assert client.state == ievent.ST_CLOSED
    with pytest.raises(ievent.LocalProtocolError):
        client.send_command("help")


# ---------------------------------------------------------------------------
#   Fuzz: nothing but FrameError out of decode, nothing at all out of the sessions
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
EVENTS = [
    EV_IDENTITY_CARD,
    EV_MT_COMMAND,
    EV_MT_STATS,
    "EV_GOODBYE",
    "EV_X",
    EV_MT_COMMAND_ANSWER,
    EV_IDENTITY_CARD_ACK,
]
KEYS = [
    "__md_iev__",
    "__command__",
    "__stats__",
    "service",
    "jwt",
    "result",
    "comment",
    "ievent_gate_stack",
    "dst_role",
    "src_role",
    "src_service",
    "dst_service",
    "data",
]


@st.composite
def kw_dicts(draw):
    kw = draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5))
    if draw(st.booleans()):
        gate = draw(
            st.dictionaries(
                st.sampled_from(sorted(GATE_KEYS)),
                st.sampled_from(["", "yuneta_agent", "ycommand", "__default_service__", "agent1"])
                | json_values,
                max_size=8,
            )
        )
        kw["__md_iev__"] = {
            "ievent_gate_stack": draw(st.sampled_from([[gate], [], gate, [gate, 1]]))
        }
    return kw


frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.builds(
        lambda e, kw: json.dumps({"event": e, "kw": kw}),
        st.sampled_from(EVENTS) | st.text(max_size=10),
        kw_dicts(),
    ),
    st.just(C_IDENTITY_CARD),
    st.just(C_COMMAND),
    st.just(C_COMMAND_ONLY),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.binary(), json_values.map(json.dumps)))
def test_decode_frame_only_raises_frame_error(data):
    try:
        frame = decode_frame(data)
    except FrameError:
        return
    assert isinstance(frame.event, str) and isinstance(frame.kw, dict)
    assert decode_frame(encode_frame(frame.event, frame.kw)) == frame


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=8))
def test_sessions_never_raise_and_always_send_valid_frames(messages):
    server = make_server(auth=lambda card: (0, "") if card.get("jwt") != "x" else (-1, "no"))
    client = ClientSession(user="u", host="h")
    client.connection_made()
    for message in messages:
        was_waiting = server.state == ievent.ST_WAIT_IDENTITY_CARD
        actions = server.receive_data(message)
        out = sent(actions)
        if was_waiting:
            # before an accepted card, everything decodable gets an answer
            try:
                decode_frame(message)
            except FrameError:
                pass
            else:
                if server.state != ievent.ST_CLOSED:
                    assert out, message
        for frame in out:
            assert isinstance(frame.kw.get("result"), int)
            if frame.event == EV_MT_COMMAND_ANSWER:
                assert set(frame.kw["__md_yuno__"]) == MD_YUNO_KEYS
        for action in actions:
            if isinstance(action, CommandRequest):
                server.answer(action, {"result": 0, "data": message[:10]})
        client.receive_data(message)
