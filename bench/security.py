"""The agent under hostile load (`python -m bench.security [--baseline DIR]`).

Two figures, each beside the same figures of another checkout (`--baseline`, e.g. a
worktree of the commit before the bounds), measured in the same run:

* stall: a SIGSTOPped yuno with 64 `command-yuno` to it in flight (4 connections x 16);
  another client's `list-yunos` round trip (median and max of 50), and the agent's threads.
* flood: one client sends up to 100,000 `list-yunos` of 1 KiB and never reads, for
  `--flood-seconds`; the agent's RSS growth, how many frames it let in, and another client's
  `list-yunos` round trip meanwhile.

Agents and the yuno are real `yuneta run` processes on 127.0.0.1 with ephemeral ports;
everything is killed at the end. Timing figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(event: str, kw: dict[str, Any]) -> str:
    return json.dumps({"event": event, "kw": kw}, separators=(",", ":"))


CARD = frame(
    "EV_IDENTITY_CARD",
    {
        "yuno_role": "ycommand",
        "pid": 1,
        "username": "yuneta",
        "__md_iev__": {
            "ievent_gate_stack": [
                {
                    "dst_yuno": "",
                    "dst_role": "yuneta_agent",
                    "dst_service": "__default_service__",
                    "src_yuno": "",
                    "src_role": "ycommand",
                    "src_service": "ycommand",
                    "user": "yuneta",
                    "host": "bench",
                }
            ],
            "__msg_type__": "__identity__",
        },
    },
)


def command(line: str, **extra: Any) -> str:
    return frame("EV_MT_COMMAND", {"__command__": line, **extra})


class Agent:
    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        override = workdir / "override.json"
        override.write_text(
            json.dumps(
                {
                    "__json_config_variables__": {
                        "agent_url": self.url,
                        "work_dir": str(workdir),
                        "metrics_port": 0,  # never the fixed default
                    }
                }
            )
        )
        env = dict(os.environ, PYTHONPATH=str(root))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "yuneta",
                "run",
                "-f",
                str(root / "configs" / "agent.json"),
                "-f",
                str(override),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"agent of {root} did not start")

    def session(self, max_queue: int | None = None) -> ClientConnection:
        ws = connect(self.url, proxy=None, open_timeout=10, legacy=True, max_queue=max_queue)
        ws.send(CARD)
        ack = json.loads(ws.recv(timeout=10))["kw"]
        if ack["result"] < 0:
            raise SystemExit(f"refused: {ack['comment']}")
        return ws

    def ask(self, ws: ClientConnection, line: str) -> tuple[dict, float]:
        t0 = time.perf_counter()
        ws.send(command(line))
        return json.loads(ws.recv(timeout=60))["kw"], time.perf_counter() - t0

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def stall(root: Path, workdir: Path) -> dict[str, Any]:
    agent = Agent(root, workdir)
    pid = 0
    clients: list[ClientConnection] = []
    try:
        config = workdir / "quiet.json"
        config.write_text(
            json.dumps(
                {
                    "environment": {"work_dir": str(workdir / "quiet")},
                    "yuno": {"yuno_role": "quiet", "yuno_name": "quiet"},
                    "services": [],
                }
            )
        )
        other = agent.session()
        clients.append(other)
        launched, _ = agent.ask(other, f"run-yuno config={config} wait=20")
        pid = launched["data"][0]["pid"]
        threads_before = agent.threads()
        os.kill(pid, signal.SIGSTOP)
        waiters = [agent.session() for _ in range(4)]
        clients += waiters
        for i in range(64):
            waiters[i % 4].send(command("command-yuno yuno_name=quiet command=help"))
        time.sleep(2)  # let them all reach the agent
        times = [agent.ask(other, "list-yunos")[1] for _ in range(50)]
        return {
            "list_yunos_median_ms": round(1000 * statistics.median(times), 2),
            "list_yunos_max_ms": round(1000 * max(times), 2),
            "agent_threads": f"{threads_before} -> {agent.threads()}",
        }
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        for ws in clients:
            ws.close()
        agent.stop()


def flood(root: Path, workdir: Path, seconds: float) -> dict[str, Any]:
    agent = Agent(root, workdir)
    try:
        greedy, other = agent.session(max_queue=4), agent.session()
        for _ in range(200):
            agent.ask(greedy, "list-yunos")
        before = agent.rss_kib()
        padded = command("list-yunos", __temp__="x" * 1000)
        sent = [0]

        def send_all() -> None:
            try:
                for _ in range(100_000):
                    greedy.send(padded)
                    sent[0] += 1
            except Exception:
                pass

        thread = threading.Thread(target=send_all, daemon=True)
        thread.start()
        deadline = time.monotonic() + seconds
        times = []
        while time.monotonic() < deadline:
            times.append(agent.ask(other, "list-yunos")[1])
            time.sleep(0.1)
        after = agent.rss_kib()
        greedy.socket.shutdown(socket.SHUT_RDWR)
        thread.join(10)
        return {
            "frames_sent": sent[0],
            "rss_kib": f"{before} -> {after} (+{after - before})",
            "other_list_yunos_median_ms": round(1000 * statistics.median(times), 2),
            "other_list_yunos_max_ms": round(1000 * max(times), 2),
        }
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alike")
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    args = parser.parse_args()
    roots = {"this": ROOT}
    if args.baseline:
        roots["baseline"] = args.baseline.resolve()
    results: dict[str, dict[str, Any]] = {name: {} for name in roots}
    with tempfile.TemporaryDirectory(prefix="bench-security-") as tmp:
        for scenario in ("stall", "flood"):
            for name, root in roots.items():  # alternating: drifting load hits both alike
                workdir = Path(tmp) / f"{scenario}-{name}"
                workdir.mkdir()
                if scenario == "stall":
                    results[name]["stall"] = stall(root, workdir)
                else:
                    results[name]["flood"] = flood(root, workdir, args.flood_seconds)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
