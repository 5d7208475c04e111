"""Yuno configs: merging, variables, globals, and a clear error for every bad config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from yuneta.config import load_config
from yuneta.errors import ConfigError

BASE = {
    "environment": {"work_dir": "/tmp/x"},
    "yuno": {"yuno_role": "demo", "yuno_name": "(^^name^^)"},
    "global": {"T_LAMP.label": "from-global-gclass", "second.brightness": 5},
    "services": [
        {
            "name": "first",
            "gclass": "T_LAMP",
            "as_service": True,
            "kw": {
                "owner": "(^^owner^^)",
                "brightness": "(^^level^^)",
                "label": "lamp of (^^owner^^)",
            },
        },
        {"name": "second", "gclass": "T_LAMP", "kw": {"owner": "x"}},
        {"name": "off", "gclass": "T_LAMP", "disabled": True},
    ],
    "__json_config_variables__": {"name": "base", "owner": "ann", "level": 42},
}


def write(tmp_path, name, data) -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_variables_keep_types_and_later_files_merge_over_earlier(tmp_path):
    base = write(tmp_path, "base.json", BASE)
    over = write(tmp_path, "over.json", {"__json_config_variables__": {"name": "over", "level": 7}})
    cfg = load_config([base, over])
    assert cfg.yuno["yuno_name"] == "over"
    first = cfg.services[0]
    assert first.kw["brightness"] == 7 and isinstance(first.kw["brightness"], int)
    assert first.kw["owner"] == "ann" and first.kw["label"] == "lamp of ann"
    assert cfg.environment["work_dir"] == "/tmp/x"
    assert [s.name for s in cfg.services] == ["first", "second"]  # disabled one dropped


def test_global_overrides_by_gclass_then_by_name_under_explicit_kw(tmp_path):
    cfg = load_config([write(tmp_path, "b.json", BASE)])
    first, second = cfg.services
    assert first.kw["label"] == "lamp of ann"  # explicit kw wins
    assert second.kw["label"] == "from-global-gclass"
    assert second.kw["brightness"] == 5


BAD_CASES = [
    ("bad JSON", "{", "", "bad JSON at line 1"),
    ("top level not object", "[1]", "", "top level must be an object"),
    ("unknown top key", {"servicez": []}, "servicez", "unknown top-level key"),
    (
        "unknown gclass",
        {"services": [{"name": "a", "gclass": "C_NOPE"}]},
        "services[0].gclass",
        "unknown gclass 'C_NOPE'",
    ),
    (
        "unknown attribute",
        {"services": [{"name": "a", "gclass": "T_LAMP", "kw": {"owner": "o", "colour": 1}}]},
        "services[0].kw.colour",
        "attribute 'colour': unknown attribute",
    ),
    (
        "wrong type",
        {"services": [{"name": "a", "gclass": "T_LAMP", "kw": {"owner": "o", "brightness": "hi"}}]},
        "services[0].kw.brightness",
        "expected int",
    ),
    (
        "missing name",
        {"services": [{"gclass": "T_LAMP"}]},
        "services[0].name",
        "non-empty string 'name'",
    ),
    (
        "duplicate names",
        {
            "services": [
                {"name": "a", "gclass": "T_COLLECTOR"},
                {"name": "A", "gclass": "T_COLLECTOR"},
            ]
        },
        "services[1].name",
        "duplicate gobj name",
    ),
    (
        "unknown node key",
        {"services": [{"name": "a", "gclass": "T_COLLECTOR", "kids": []}]},
        "services[0].kids",
        "unknown key 'kids'",
    ),
    (
        "unknown variable",
        {"yuno": {"yuno_name": "(^^nope^^)"}},
        "yuno.yuno_name",
        "unknown config variable 'nope'",
    ),
    (
        "bad yuno attribute",
        {"yuno": {"cert_warn_days": "soon"}},
        "yuno.cert_warn_days",
        "expected int",
    ),
    (
        "bad global target",
        {"global": {"nobody.attr": 1}},
        "global.nobody.attr",
        "neither a gclass nor a gobj",
    ),
    (
        "number for a string",
        {"yuno": {"yuno_name": 5}},
        "yuno.yuno_name",
        "expected str, got int 5",
    ),
    (
        "bool for an int",
        {"yuno": {"timeout_cert_check": True}},
        "yuno.timeout_cert_check",
        "expected int, got bool True",
    ),
    (
        "string for a bool",
        {
            "services": [
                {"name": "a", "gclass": "T_LAMP", "kw": {"owner": "o", "refuse_writes": "yes"}}
            ]
        },
        "services[0].kw.refuse_writes",
        "expected bool, got str 'yes'",
    ),
    (
        "string for a list",
        {"services": [{"name": "a", "gclass": "T_COLLECTOR", "kw": {"received": "[]"}}]},
        "services[0].kw.received",
        "expected list, got str",
    ),
    (
        "listener url without port",
        {"services": [{"name": "l", "gclass": "C_TCP_S", "kw": {"url": "tcps://127.0.0.1"}}]},
        "services[0].kw.url",
        "a port is required",
    ),
    (
        "plain control port off loopback",
        {"services": [{"name": "s", "gclass": "C_IEVENT_SRV", "kw": {"url": "ws://0.0.0.0:1991"}}]},
        "services[0].kw.url",
        "non-loopback address needs wss://",
    ),
    (
        "bad flag",
        {"services": [{"name": "a", "gclass": "T_COLLECTOR", "autostart": "yes"}]},
        "services[0].autostart",
        "true or false",
    ),
]


@pytest.mark.parametrize("label, data, path, problem", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_every_config_error_names_file_path_and_problem(tmp_path, label, data, path, problem):
    good = write(tmp_path, "good.json", {"yuno": {"yuno_role": "x"}})
    bad = write(tmp_path, "bad.json", data)
    with pytest.raises(ConfigError) as err:
        load_config([good, bad])
    assert err.value.file == bad
    assert err.value.path == path
    assert problem in err.value.problem


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([str(tmp_path / "nope.json")])


def test_yuneta_run_with_a_bad_config_prints_one_clear_line_and_starts_nothing(
    tmp_path, subprocess_env
):
    store = tmp_path / "store"
    bad = write(
        tmp_path,
        "bad.json",
        {
            "environment": {"work_dir": str(tmp_path)},
            "services": [
                {"name": "a", "gclass": "T_LAMP", "kw": {"owner": "o", "brightness": "hi"}}
            ],
        },
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kernel_helpers, sys; from yuneta.cli import main; sys.exit(main())",
            "run",
            "-f",
            bad,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"config error: {bad}: services[0].kw.brightness: T_LAMP: attribute 'brightness': expected int, got str 'hi'"
    )
    assert not store.exists()  # nothing started, nothing written
