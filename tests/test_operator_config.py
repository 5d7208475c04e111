"""An operator's config mistakes: one line naming the file that set the value, the JSON path
and the problem, exit 2, no traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from procs import CONFIGS, child_env, running_agent, ycommand, ycommand_json


def yuneta(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "yuneta", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=cwd,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single line an operator's mistake prints (stderr: plain, or one JSON log line)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = lines[0]
    if line.startswith("{"):
        record = json.loads(line)
        assert "traceback" not in record
        return record["error"]
    return line


def echo_service(url: str) -> dict:
    return {
        "services": [{"name": "e", "gclass": "C_TCP_S", "kw": {"url": url, "protocol": "echo"}}]
    }


CASES = {
    "file handler without filename": (
        {"environment": {"log_handlers": {"f": {"handler_type": "file"}}}},
        "environment.log_handlers.f.filename: a file log handler needs a 'filename'",
    ),
    "file handler in a missing directory": (
        {
            "environment": {
                "log_handlers": {
                    "f": {"handler_type": "file", "filename": "/nonexistent-dir/x.log"}
                }
            }
        },
        "environment.log_handlers.f.filename: directory /nonexistent-dir does not exist",
    ),
    "handler given as a string": (
        {"environment": {"log_handlers": {"f": "stderr"}}},
        "environment.log_handlers.f: a log handler must be an object",
    ),
    "unknown handler type": (
        {"environment": {"log_handlers": {"f": {"handler_type": "syslog"}}}},
        "environment.log_handlers.f.handler_type: must be one of",
    ),
    "unresolvable host": (
        echo_service("tcp://no-such-host.invalid:0"),
        "services[0].kw.url: cannot listen on tcp://no-such-host.invalid:0",
    ),
    "unknown config variable": (
        {"__json_config_variables__": {"agent_ulr": "ws://127.0.0.1:1"}},
        "__json_config_variables__.agent_ulr: unknown config variable 'agent_ulr'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_override_gives_one_line_naming_it_and_exit_2(tmp_path, case):
    data, expected = CASES[case]
    override = tmp_path / "override.json"
    override.write_text(json.dumps(data))
    # the base file is fine: the error must blame the override that set the bad value
    proc = yuneta("run", "-f", str(CONFIGS / "agent.json"), "-f", str(override), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert f"{override}: {expected}" in line, line


def test_a_port_in_use_names_the_file_the_address_and_exits_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        url = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        override = tmp_path / "port.json"
        override.write_text(json.dumps(echo_service(url)))
        proc = yuneta("run", "-f", str(override), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert f"{override}: services[0].kw.url: cannot listen on {url}: Address already in use" in line


@pytest.mark.parametrize(
    "content, expected",
    [
        (bytes(range(256)) * 4, "not UTF-8 text (a binary file?)"),
        (b'{"a":' + b"[" * 200000 + b"]" * 200000 + b"}", "nested more than 64 levels deep"),
        (b'{"a":' + b'{"b":' * 80 + b"1" + b"}" * 81, "nested more than 64 levels deep"),
        (b'{"yuno": {"timeout_cert_check": Infinity}}', "Infinity is not a JSON number"),
        (b'{"yuno": {"timeout_cert_check": NaN}}', "NaN is not a JSON number"),
        (b" " * (5 * 1024 * 1024), "larger than"),
    ],
    ids=["binary", "deep-list", "deep-objects", "infinity", "nan", "huge"],
)
def test_an_unreadable_config_file_is_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    for verb in ("check", "run"):
        proc = yuneta(verb, "-f", str(bad), cwd=tmp_path)
        assert proc.returncode == 2
        line = one_line(proc)
        assert line.startswith(f"config error: {bad}: ") and expected in line, line


def test_non_finite_and_mistyped_writes_are_refused_and_the_agent_keeps_answering(tmp_path):
    with running_agent(tmp_path) as agent:
        for value in ("Infinity", "NaN", "-inf", "soon"):
            bad = ycommand(agent.url, "-c", f"write-attr attr_name=command_timeout value={value}")
            assert bad.returncode == 255 and "Traceback" not in bad.stdout + bad.stderr
            assert "expected" in bad.stdout, bad.stdout
        code, attrs = ycommand_json(agent.url, "view-attrs")
        assert code == 0 and attrs["data"]["command_timeout"] == 10.0


def test_a_bad_value_from_a_variable_blames_the_file_that_set_the_variable(tmp_path):
    override = tmp_path / "site.json"
    override.write_text(json.dumps({"__json_config_variables__": {"url": 7443}}))
    proc = yuneta("check", "-f", str(CONFIGS / "echo-tls.json"), "-f", str(override), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith(
        f"config error: {override}: __json_config_variables__.url (as services[0].kw.url): "
    ), line
