"""Command-line parsing: quoting, types, unknown keys, wild commands, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yuneta.command import build_kw, envelope, error_envelope, split_command, tokenize
from yuneta.errors import CommandError, ParseError
from yuneta.gclass import Command, Param

DIM = Command(
    "dim",
    "h",
    (
        Param("int", "level", 10, ""),
        Param("bool", "fast", False, ""),
        Param("real", "ratio", None, ""),
        Param("str", "reason", "", ""),
        Param("dict", "extra", None, ""),
    ),
)
WILD = Command("route", "h", (Param("str", "command", None, ""),), wild=True)


def parse(cmd: Command, line: str) -> dict:
    name, positional, pairs = split_command(line)
    assert name == cmd.name
    return build_kw(cmd, positional, pairs)


def test_quotes_double_single_and_escapes():
    assert tokenize('a "b c" \'d e\' f="g h" "x\\"y"') == ["a", "b c", "d e", "f=g h", 'x"y']
    assert parse(DIM, 'dim reason="two words" level=3') == {
        "reason": "two words",
        "level": 3,
        "fast": False,
    }
    assert parse(DIM, "dim reason='it''s'") == {"reason": "its", "level": 10, "fast": False}


def test_values_are_typed_by_the_schema():
    kw = parse(DIM, "dim level=0x10 fast=yes ratio=0.5 extra='{\"a\": [1]}'")
    assert kw == {"level": 16, "fast": True, "ratio": 0.5, "extra": {"a": [1]}, "reason": ""}


def test_positional_values_follow_the_parameter_order():
    assert parse(DIM, "dim 3 true")["level"] == 3
    with pytest.raises(ParseError, match="too many positional"):
        parse(DIM, "dim 1 2 3 4 5 6")


def test_a_quoted_key_value_is_a_value_not_a_key():
    name, positional, pairs = split_command('dim "level=5"')
    assert positional == ["level=5"] and pairs == {}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("dim colour=red", "unknown parameter 'colour'"),
        ("dim level=high", "expected int"),
        ("dim fast=maybe", "expected bool"),
        ('dim reason="open', "unterminated double quote"),
        ("dim reason='open", "unterminated single quote"),
        ("dim extra=[1]", "expected dict"),
        ("   ", "What command?"),
    ],
)
def test_bad_lines_raise_parse_errors_naming_the_problem(line, fragment):
    with pytest.raises(ParseError, match=fragment.replace("?", r"\?").replace("[", r"\[")):
        name, positional, pairs = split_command(line)
        build_kw(DIM, positional, pairs)


def test_wild_commands_keep_unknown_keys_as_strings():
    assert parse(WILD, "route command=view-cert service=__yuno__ x=1") == {
        "command": "view-cert",
        "service": "__yuno__",
        "x": "1",
    }


def test_envelope_and_error_envelope():
    assert envelope(-1) == {"result": -1, "comment": "(see log)", "schema": None, "data": None}
    assert error_envelope(CommandError("nope"))["comment"] == "nope"
    assert error_envelope(ValueError())["comment"] == "(see log)"


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=200))
def test_any_line_either_parses_or_raises_parse_error(line):
    for cmd in (DIM, WILD):
        try:
            name, positional, pairs = split_command(line)
            kw = build_kw(cmd, positional, pairs)
        except ParseError as exc:
            assert exc.result < 0 and exc.comment
        else:
            assert isinstance(kw, dict) and name


_word = st.text(
    st.characters(blacklist_characters="\"'\\", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), _word, max_size=5))
def test_double_quoted_values_round_trip(pairs):
    line = "route " + " ".join(f'{k}="{v}"' for k, v in pairs.items())
    assert parse(WILD, line) == pairs
