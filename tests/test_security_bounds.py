"""No client can exhaust the agent: bounded work per connection and per yuno.

A real agent and a real yuno. A client that sends 100,000 commands and never reads fills its
own socket (the agent stops reading it after `max_inflight`), so the agent's RSS stays where
it was and other clients are answered as usual. A SIGSTOPped yuno with 64 command-yuno
waiting for it holds no threads (futures, not pool threads), the next one past
`max_yuno_inflight` is refused at once, and another client's list-yunos and help answer in
milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import wait_for
from procs import Agent, ycommand_json
from websockets.sync.client import ClientConnection, connect

from yuneta import ievent

YUNO_WAITERS = 64


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def session(agent: Agent, max_queue: int | None = None) -> ClientConnection:
    """An identified connection; `max_queue` frames received and not read before its
    background reader stops reading the socket (None: it reads everything)."""
    ws = connect(agent.url, proxy=None, open_timeout=10, legacy=True, max_queue=max_queue)
    kw = ievent.build_identity_card(
        "", "ycommand", "ycommand", "", "yuneta_agent", "__default_service__", "yuneta", "h", 9
    )
    ws.send(ievent.encode_frame(ievent.EV_IDENTITY_CARD, kw))
    assert json.loads(ws.recv(timeout=10))["kw"]["result"] == 0
    return ws


def command(line: str) -> str:
    return ievent.encode_frame(ievent.EV_MT_COMMAND, {"__command__": line})


def ask(ws: ClientConnection, line: str) -> tuple[dict, float]:
    """(answer kw, round trip in seconds)."""
    t0 = time.perf_counter()
    ws.send(command(line))
    answer = json.loads(ws.recv(timeout=30))["kw"]
    return answer, time.perf_counter() - t0


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path, extra={"global": {"C_AGENT.max_yuno_inflight": YUNO_WAITERS}})
    agent.start()
    try:
        yield agent
    finally:
        _, listed = ycommand_json(agent.url, "list-yunos")
        agent.stop()
        for y in listed.get("data") or []:
            if y["pid"] and y["launched"]:
                try:
                    os.kill(y["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def run_quiet_yuno(tmp_path: Path, agent: Agent) -> int:
    config = tmp_path / "quiet.json"
    config.write_text(
        json.dumps(
            {
                "environment": {"work_dir": str(tmp_path / "quiet-work")},
                "yuno": {"yuno_role": "quiet", "yuno_name": "quiet"},
                "services": [],
            }
        )
    )
    code, answer = ycommand_json(agent.url, f"run-yuno config={config} wait=20")
    assert code == 0 and answer["data"][0]["connected"], answer
    return answer["data"][0]["pid"]


def test_unread_commands_leave_the_agent_rss_flat_and_others_unaffected(agent: Agent):
    assert agent.proc is not None
    pid = agent.proc.pid
    greedy = session(agent, max_queue=4)  # it truly stops reading: answers pile up
    other = session(agent)
    for _ in range(200):  # warm up every code path the greedy client will use
        ask(greedy, "list-yunos")
    before = rss_kib(pid)

    # 1 KiB each (the padding rides in __temp__, which no command reads): 100 MB in all,
    # far more than the kernel's socket buffers hold.
    frame = ievent.encode_frame(
        ievent.EV_MT_COMMAND, {"__command__": "list-yunos", "__temp__": "x" * 1000}
    )
    sent = [0]

    def flood() -> None:
        try:
            for _ in range(100_000):
                greedy.send(frame)
                sent[0] += 1
        except Exception:  # its socket is shut down below, mid-send
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        # The agent stops reading: the sender stalls with its socket buffers full.
        def stalled() -> bool:
            mark = sent[0]
            time.sleep(1.0)
            return sent[0] == mark or not sender.is_alive()

        wait_for(stalled, timeout=120, interval=0)
        times = [ask(other, "list-yunos")[1] for _ in range(20)]
        answer, _ = ask(other, "list-yunos")
        assert answer["result"] == 0
        during = rss_kib(pid)
    finally:
        greedy.socket.shutdown(socket.SHUT_RDWR)
        sender.join(30)
        greedy.close()
    print(
        f"\nsent {sent[0]} of 100000 unread; agent RSS {before} KiB -> {during} KiB "
        f"(+{during - before} KiB); other client's list-yunos median "
        f"{1000 * statistics.median(times):.1f} ms, max {1000 * max(times):.1f} ms"
    )
    assert sent[0] < 100_000  # the agent stopped reading: the rest waits in the client
    assert during - before < 8 * 1024
    assert max(times) < 1.0  # generous: the stalled client costs the others nothing
    # After the greedy client left, the agent still answers and gave its memory back.
    assert ask(other, "help")[0]["result"] == 0
    other.close()


def test_a_stopped_yuno_costs_timers_not_threads_and_list_yunos_stays_fast(
    tmp_path: Path, agent: Agent
):
    assert agent.proc is not None
    yuno_pid = run_quiet_yuno(tmp_path, agent)
    waiters = [session(agent) for _ in range(4)]
    probes: list[ClientConnection] = []
    other = session(agent)
    threads_before = threads(agent.proc.pid)
    os.kill(yuno_pid, signal.SIGSTOP)
    try:
        for i in range(YUNO_WAITERS):
            waiters[i % 4].send(command("command-yuno yuno_name=quiet command=help"))
        # One more finds the yuno full: -1 at once, naming the limit. (A probe that arrives
        # before all 64 are in is one of them; the next probe, on a new connection, is not.)
        answer: dict = {}
        for _ in range(100):
            probe = session(agent)
            probes.append(probe)
            started = time.perf_counter()
            probe.send(command("command-yuno yuno_name=quiet command=help"))
            try:
                answer = json.loads(probe.recv(timeout=0.5))["kw"]
                break
            except TimeoutError:
                continue
        refused_in = time.perf_counter() - started
        assert f"Too many commands in flight ({YUNO_WAITERS}) to this yuno" in json.dumps(answer)
        listed = [ask(other, "list-yunos") for _ in range(20)]
        helped = [ask(other, "help") for _ in range(20)]
        assert all(a["result"] == 0 for a, _ in listed + helped)
        assert listed[0][0]["data"][0]["yuno_name"] == "quiet"
        times = [t for _, t in listed]
        help_times = [t for _, t in helped]
        print(
            f"\n{YUNO_WAITERS} command-yuno waiting on a stopped yuno; agent threads "
            f"{threads_before} -> {threads(agent.proc.pid)}; 65th refused in "
            f"{1000 * refused_in:.1f} ms; list-yunos median {1000 * statistics.median(times):.1f}"
            f" ms max {1000 * max(times):.1f} ms; help median "
            f"{1000 * statistics.median(help_times):.1f} ms max {1000 * max(help_times):.1f} ms"
        )
        assert max(times) < 1.0 and max(help_times) < 1.0  # generous bound; figures above
    finally:
        os.kill(yuno_pid, signal.SIGCONT)
        for ws in [*waiters, *probes, other]:
            ws.close()
