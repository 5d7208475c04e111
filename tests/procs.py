"""Real processes for the tests: an agent, yunos, and the ycommand executable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process exited with {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


class Agent:
    """A real `yuneta run -f configs/agent.json` process on a free loopback port."""

    def __init__(self, workdir: Path, port: int | None = None, extra: dict | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = workdir / "agent.log"
        # metrics_port 0: never the fixed default port, suites run side by side.
        variables = {"agent_url": self.url, "work_dir": str(workdir / "agent"), "metrics_port": 0}
        extra = dict(extra or {})
        # A caller's variables (a wss:// agent_url...) go over ours, not instead of them.
        variables.update(extra.pop("__json_config_variables__", {}))
        self.override = write_json(
            workdir / "agent-override.json",
            {"__json_config_variables__": variables, **extra},
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "yuneta",
                    "run",
                    "-f",
                    str(CONFIGS / "agent.json"),
                    "-f",
                    str(self.override),
                ],
                stdout=log,
                stderr=log,
                env=child_env(),
                cwd=self.workdir,
            )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def run_agent_to_exit(override: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`yuneta run -f configs/agent.json -f override` to its end (a config it refuses)."""
    return subprocess.run(
        [sys.executable, "-m", "yuneta", "run"]
        + ["-f", str(CONFIGS / "agent.json"), "-f", str(override)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=cwd,
    )


def ycommand(
    url: str, *command: str, wait: float = 15.0, extra: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real ycommand executable; returns the completed process (text)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "yuneta.ycommand",
            "-u",
            url,
            "-w",
            str(wait),
            *(extra or []),
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=wait * 4 + 30,
        env=child_env(),
    )


def ycommand_json(url: str, command: str, wait: float = 15.0) -> tuple[int, dict]:
    """ycommand --json -c COMMAND: (exit code, the envelope of the last answer)."""
    proc = ycommand(url, "-c", command, wait=wait, extra=["--json"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON answer: rc={proc.returncode} out={proc.stdout!r} err={proc.stderr!r}"
    return proc.returncode, json.loads(lines[-1])


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def running_agent(workdir: Path, **kw: Any) -> Iterator[Agent]:
    agent = Agent(workdir, **kw).start()
    try:
        yield agent
    finally:
        agent.stop()
