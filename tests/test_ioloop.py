"""The I/O loop's public API: posting, timers, descriptors, subprocesses, one epoll."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from clients import wait_for

from yuneta.netio import READ, IOLoop

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    loop.start()
    yield loop
    loop.stop()


def _epoll_fds() -> int:
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        except OSError:
            pass
    return n


def test_the_loop_polls_one_epoll_for_asyncio_and_for_sockets() -> None:
    before = _epoll_fds()
    loop = IOLoop()
    loop.start()
    try:
        assert _epoll_fds() == before + 1
        a, b = socket.socketpair()
        got: list[int] = []
        loop.post(loop.add_fd, a.fileno(), READ, got.append)
        b.send(b"x")
        wait_for(lambda: got)
        assert got[0] & READ
        assert _epoll_fds() == before + 1
        loop.run_sync(_remove(loop, a.fileno()), 5)
        a.close()
        b.close()
    finally:
        loop.stop()
    assert _epoll_fds() == before


async def _remove(loop: IOLoop, fd: int) -> None:
    loop.remove_fd(fd)


def test_post_runs_in_the_loop_thread_in_order_from_many_threads(ioloop: IOLoop) -> None:
    seen: list[tuple[int, int, bool]] = []

    def poster(tid: int) -> None:
        for i in range(200):
            ioloop.post(lambda t=tid, n=i: seen.append((t, n, ioloop.in_loop_thread())))

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(seen) == 800)
    assert all(in_loop for *_, in_loop in seen)
    for tid in range(4):
        assert [n for t, n, _ in seen if t == tid] == list(range(200))


def test_call_later_fires_once_and_cancel_from_another_thread_stops_it(ioloop: IOLoop) -> None:
    fired: list[str] = []
    ioloop.call_later(0.05, fired.append, "kept")
    cancelled = ioloop.call_later(0.2, fired.append, "cancelled")
    cancelled.cancel()
    time.sleep(0.5)
    assert fired == ["kept"]


def test_a_raising_descriptor_callback_is_reported_and_the_loop_keeps_going(
    ioloop: IOLoop,
) -> None:
    errors: list[dict] = []
    ioloop.loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    a, b = socket.socketpair()

    def boom(events: int) -> None:
        ioloop.remove_fd(a.fileno())
        raise RuntimeError("boom")

    ioloop.post(ioloop.add_fd, a.fileno(), READ, boom)
    b.send(b"x")
    wait_for(lambda: errors)
    assert isinstance(errors[0]["exception"], RuntimeError)
    assert ioloop.run_sync(_answer(), 5) == 42  # still running
    a.close()
    b.close()


async def _answer() -> int:
    return 42


def test_run_process_returns_output_without_blocking_the_caller(ioloop: IOLoop) -> None:
    future = ioloop.run_process([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 30)
    result = future.result(30)
    assert (result.returncode, result.stdout, result.timed_out) == (3, b"out\n", False)


def test_run_process_kills_a_child_and_its_children_at_the_time_limit(ioloop: IOLoop) -> None:
    # The grandchild keeps the output pipe open: only killing the group ends the wait.
    script = "import subprocess,time; subprocess.Popen(['sleep','30']); time.sleep(30)"
    t0 = time.monotonic()
    result = ioloop.run_process([sys.executable, "-c", script], 0.5).result(20)
    assert result.timed_out and result.returncode < 0
    assert time.monotonic() - t0 < 15


def test_run_process_of_a_missing_program_fails_its_future(ioloop: IOLoop) -> None:
    with pytest.raises(FileNotFoundError):
        ioloop.run_process(["/nonexistent/program"], 5).result(10)
    with pytest.raises(TypeError):
        ioloop.run_process("ls -l", 5)  # type: ignore[arg-type]


def _count_selects(ioloop: IOLoop) -> list[float | None]:
    """Record each select() asyncio's loop makes (one per asyncio loop iteration)."""
    selector = ioloop.selector
    calls: list[float | None] = []
    real = selector.select

    def counting(timeout: float | None = None) -> list:
        calls.append(timeout)
        return real(timeout)

    selector.select = counting  # type: ignore[method-assign]
    return calls


def test_descriptors_alone_never_run_an_asyncio_loop_iteration(ioloop: IOLoop) -> None:
    # The TLS listener's hot path: 200 wakeups of our own descriptor, from another thread,
    # while asyncio has nothing to do, are dispatched inside one select() call.
    a, b = socket.socketpair()
    got: list[int] = []

    def on_event(events: int) -> None:
        got.append(len(a.recv(64)))

    ioloop.post(ioloop.add_fd, a.fileno(), READ, on_event)
    time.sleep(0.1)
    calls = _count_selects(ioloop)
    ioloop.post(lambda: None)  # the select() in progress returns; the next one is counted
    wait_for(lambda: calls)
    for _ in range(200):  # one byte, one wakeup, at a time
        n = len(got)
        b.send(b"x")
        deadline = time.monotonic() + 5
        while len(got) == n and time.monotonic() < deadline:
            time.sleep(0.0002)
    assert sum(got) == 200
    assert len(calls) <= 3, calls
    ioloop.run_sync(_remove(ioloop, a.fileno()), 5)
    a.close()
    b.close()


@pytest.mark.parametrize("how", ["call_soon", "call_later", "task", "future", "ioloop_call_later"])
def test_what_a_descriptor_callback_schedules_with_asyncio_runs_at_once(
    ioloop: IOLoop, how: str
) -> None:
    # select() polls on for our descriptors with no timeout while asyncio is idle: what a
    # callback hands asyncio must end that wait, or it would run only at the next event.
    a, b = socket.socketpair()
    ran = threading.Event()
    loop = ioloop.loop
    waiter: list = []

    async def coro() -> None:
        ran.set()

    if how == "future":
        fut_holder: list = []

        async def awaiting() -> None:
            fut = loop.create_future()
            fut_holder.append(fut)
            await fut
            ran.set()

        ioloop.run(awaiting())
        wait_for(lambda: fut_holder)

    def on_event(events: int) -> None:
        a.recv(64)
        if how == "call_soon":
            loop.call_soon(ran.set)
        elif how == "call_later":
            loop.call_later(0.05, ran.set)
        elif how == "task":
            waiter.append(loop.create_task(coro()))
        elif how == "future":
            fut_holder[0].set_result(None)
        else:  # a timer armed through the public API from the loop thread
            ioloop.call_later(0.05, ran.set)

    ioloop.post(ioloop.add_fd, a.fileno(), READ, on_event)
    time.sleep(0.2)  # asyncio idle: select() waits with no timeout
    b.send(b"x")
    assert ran.wait(3), f"{how}: scheduled from a descriptor callback, never run"
    ioloop.run_sync(_remove(ioloop, a.fileno()), 5)
    a.close()
    b.close()


def test_run_process_ends_at_its_limit_even_when_a_daemon_holds_its_output(
    ioloop: IOLoop, tmp_path
) -> None:
    # The child exits 0 but leaves a daemon in its own session (out of reach of the group
    # kill) holding stdout: the limit still ends the wait, says so, and leaks no pipe.
    pidfile = tmp_path / "daemon.pid"
    script = f"echo started; setsid sleep 60 & echo $! > {pidfile}; exit 0"
    before = len(os.listdir("/proc/self/fd"))
    try:
        result = ioloop.run_process(["sh", "-c", script], 1.0).result(20)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
    assert result.timed_out and result.held_output
    assert result.returncode == 0 and result.stdout == b"started\n"
    time.sleep(0.3)
    assert len(os.listdir("/proc/self/fd")) == before
