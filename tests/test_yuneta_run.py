"""`yuneta run` as a real process: starts from configs, logs JSON lines, stops on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

RUN = [
    sys.executable,
    "-c",
    "import kernel_helpers, sys; from yuneta.cli import main; sys.exit(main())",
    "run",
]


def start_yuno(tmp_path, env, services) -> tuple[subprocess.Popen, str]:
    log_file = tmp_path / "yuno.log"
    cfg = tmp_path / "yuno.json"
    cfg.write_text(
        json.dumps(
            {
                "environment": {
                    "work_dir": str(tmp_path),
                    "log_handlers": {
                        "to_stderr": {"handler_type": "stderr"},
                        "to_file": {"handler_type": "file", "filename": str(log_file)},
                    },
                },
                "yuno": {"yuno_role": "runner", "yuno_name": "r1"},
                "services": services,
            }
        )
    )
    proc = subprocess.Popen([*RUN, "-f", str(cfg)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log_file.exists() and "yuno running" in log_file.read_text():
            return proc, str(log_file)
        if proc.poll() is not None:
            raise AssertionError(f"yuno exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("yuno did not start")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_gobj_and_exits_zero(tmp_path, subprocess_env, signum):
    services = [
        {
            "name": "lamp",
            "gclass": "T_LAMP",
            "as_service": True,
            "kw": {"owner": "o"},
            "children": [{"name": "inner", "gclass": "T_COLLECTOR"}],
        }
    ]
    proc, log_file = start_yuno(tmp_path, subprocess_env, services)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in open(log_file)]
    assert all({"time", "level", "gobj", "msg"} <= set(line) for line in lines)
    msgs = [line["msg"] for line in lines]
    assert (
        msgs.index("yuno running")
        < msgs.index("signal received, stopping")
        < msgs.index("yuno stopped")
    )
    stop_line = next(line for line in lines if line["msg"] == "signal received, stopping")
    assert stop_line["signal"] == signum.name
