"""The README's demo as an operator runs it: whatever stops it, nothing it started survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from procs import ROOT, free_port


def _marked(mark: str) -> list[int]:
    """Pids of live processes whose environment carries `mark` (every descendant inherits it)."""
    needle = f"DEMO_TEST_MARK={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _kill_marked(mark: str) -> None:
    for pid in _marked(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_demo(tmp_path: Path, mark: str) -> tuple[subprocess.Popen, Path, int]:
    out = tmp_path / "demo.out"
    env = dict(os.environ)
    env.update(
        PYTHON=sys.executable,
        DEMO_RUN=str(tmp_path / "run"),
        DEMO_AGENT_PORT=str(free_port()),
        DEMO_PORT=str(free_port()),
        DEMO_METRICS_PORT="0",
        DEMO_TEST_MARK=mark,
    )
    env.pop("VENV", None)
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "demo.sh")],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    deadline = time.monotonic() + 120
    while b"Ctrl-C stops" not in out.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_marked(mark)
            pytest.fail(f"demo did not reach its running state:\n{out.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, out, int(env["DEMO_PORT"])


def _agent_pid(proc: subprocess.Popen, mark: str) -> int:
    for pid in _marked(mark):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"configs/agent.json" in cmdline and pid != proc.pid:
            return pid
    raise AssertionError("no agent process found")


@pytest.mark.parametrize("how", ["sigint-to-group", "agent-dies-first-then-sigterm"])
def test_demo_leaves_no_process(tmp_path: Path, how: str) -> None:
    mark = uuid.uuid4().hex
    proc, out, port = _start_demo(tmp_path, mark)
    try:
        before = _marked(mark)
        # the script, the agent and the echo yuno at least
        assert len(before) >= 3, out.read_text()[-2000:]
        if how == "sigint-to-group":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        else:
            os.kill(_agent_pid(proc, mark), signal.SIGINT)  # the agent goes first, alone
            time.sleep(0.5)
            if proc.poll() is None:  # the script may already have seen its agent end
                proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if how == "sigint-to-group":
            assert code == 130, out.read_text()[-2000:]
        assert _marked(mark) == [], f"still running after the demo exited: {_marked(mark)}"
        with pytest.raises(OSError):  # the echo port is free again
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_marked(mark)
