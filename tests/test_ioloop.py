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
