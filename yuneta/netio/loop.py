"""The I/O loop of a yuno: one thread, one epoll, asyncio on top for code that wants coroutines.

`IOLoop` runs an asyncio event loop in its own thread whose selector is `FdSelector`: asyncio
polls it as usual, and descriptors registered with `add_fd` are dispatched straight from the
same `epoll_wait` to a plain callback (a dict lookup per event, no `Handle`, no trip through
asyncio's ready queue, no second epoll). While only such descriptors fire, `select()` polls
again itself, within asyncio's timeout, and asyncio's loop iteration is not run at all: it
runs when one of asyncio's own descriptors is ready, a timer is due, or a callback was
scheduled (`_Loop` flags `call_soon` and `call_at`). So the TLS listener's hot path is one
poll per wakeup and no asyncio, while wsio and subprocesses keep their coroutines.

The loop's public API, and from which thread each may be called:
* any thread: `post(fn, *args)`, `call_later(delay, fn, *args)` (a cancellable `Timer`),
  `run(coro)` / `run_sync(coro)`, `run_process(argv, timeout)` (a subprocess with a time
  limit whose result arrives as a Future: an actor adds a done-callback that posts an event
  to itself and never blocks);
* the loop thread only: `add_fd(fd, events, callback)`, `modify_fd`, `remove_fd`; and the
  module's `run_subprocess`, `run_process` as a coroutine for code already on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import math
import os
import select
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")

# After we close (all sent, FIN out) we keep reading, and dropping, until the peer's EOF, at
# most this long: closing with its data unread, or getting more after close, makes the
# kernel answer with a RST, which destroys whatever we sent that the peer has not read yet.
LINGER_TIMEOUT = 5.0
_DISCARD = bytearray(65536)  # what a lingering socket still receives goes here, unread
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_monotonic = time.monotonic  # asyncio's loop.time() clock


def _round_up_ms(seconds: float) -> float:
    # epoll counts whole milliseconds: a timer due in 0.3 ms must not spin through
    # zero-timeout polls until it is due.
    return math.ceil(seconds * 1e3) * 1e-3


#: Event bits of `add_fd` / `modify_fd` and of what their callbacks receive.
READ, WRITE = select.EPOLLIN, select.EPOLLOUT
# Events handed out per epoll_wait; the rest stay ready for the next one (level-triggered).
_MAX_EVENTS = 512


def _fd_of(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    """`get_map()` of FdSelector: keys looked up by descriptor or by object with fileno()."""

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[_fd_of(fileobj)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class FdSelector(selectors.BaseSelector):
    """An epoll selector for asyncio that also dispatches `add_fd` descriptors directly.

    asyncio's registrations are ordinary selector keys; `add_fd` ones never become keys:
    `select()` calls their callback with the epoll event bits as it reads the poll result.
    An exception from such a callback goes to the loop's exception handler.
    """

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._map = _KeyMap(self._keys)
        self.loop: asyncio.AbstractEventLoop | None = None
        # Set (by `_Loop`) when asyncio has a callback or timer to look at: select() returns
        # to asyncio's loop then, rather than polling on for the descriptors it dispatches.
        self.asyncio_due = False

    # -- direct descriptors (the I/O layer's sockets) ---------------------------------------

    def add_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._ep.register(fd, events)
        self._callbacks[fd] = callback

    def modify_fd(self, fd: int, events: int) -> None:
        self._ep.modify(fd, events)

    def remove_fd(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            self._ep.unregister(fd)

    # -- selectors.BaseSelector, for asyncio ------------------------------------------------

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fd_of(fileobj)
        if fd in self._keys or fd in self._callbacks:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._ep.register(fd, self._epoll_bits(events))
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._keys.pop(_fd_of(fileobj))
        try:
            self._ep.unregister(key.fd)
        except OSError:  # already closed: the kernel dropped it
            pass
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._keys[_fd_of(fileobj)]
        if events != key.events:
            self._ep.modify(key.fd, self._epoll_bits(events))
        key = key._replace(events=events, data=data)
        self._keys[key.fd] = key
        return key

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._keys.clear()
        self._callbacks.clear()
        self._ep.close()

    @staticmethod
    def _epoll_bits(events: int) -> int:
        return (READ if events & selectors.EVENT_READ else 0) | (
            WRITE if events & selectors.EVENT_WRITE else 0
        )

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait up to `timeout` for asyncio's descriptors, dispatching ours as they fire.

        asyncio's timeout already ends at its next timer; what our callbacks schedule with
        asyncio (`call_soon`, `call_at`) sets `asyncio_due`, so it is run at once too.
        """
        self.asyncio_due = False  # asyncio runs what it has before it calls select() again
        deadline = None
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            wait = _round_up_ms(timeout)
            deadline = _monotonic() + wait
        poll = self._ep.poll
        callbacks = self._callbacks
        keys = self._keys
        ready: list[tuple[selectors.SelectorKey, int]] = []
        while True:
            try:
                polled = poll(wait, _MAX_EVENTS)
            except InterruptedError:
                return ready
            for fd, bits in polled:
                # A descriptor is removed before it is closed, never left for close() to
                # drop (a forked child's copy would keep the registration firing), and
                # appears once per poll: no event of a removed one is still queued here.
                callback = callbacks.get(fd)
                if callback is not None:
                    try:
                        callback(bits)
                    except Exception as exc:
                        self._report(exc, callback)
                    continue
                key = keys.get(fd)
                if key is not None:
                    events = (selectors.EVENT_READ if bits & ~WRITE else 0) | (
                        selectors.EVENT_WRITE if bits & ~READ else 0
                    )
                    ready.append((key, events & key.events))
            if ready or self.asyncio_due or wait == 0.0:
                return ready
            if deadline is not None:
                left = deadline - _monotonic()
                if left <= 0:
                    return ready
                wait = _round_up_ms(left)

    def _report(self, exc: Exception, callback: Any) -> None:
        if self.loop is not None:
            self.loop.call_exception_handler(
                {
                    "message": "netio: descriptor callback failed",
                    "exception": exc,
                    "callback": callback,
                }
            )


class _Loop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, telling its `FdSelector` when it has work: a callback or a
    timer scheduled from the loop thread (from another thread, `call_soon_threadsafe`
    writes to asyncio's self-pipe, which is one of asyncio's own descriptors)."""

    def __init__(self, selector: FdSelector) -> None:
        super().__init__(selector)
        self._fd_selector = selector

    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        self._fd_selector.asyncio_due = True
        return super().call_soon(callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self._fd_selector.asyncio_due = True
        return super().call_at(when, callback, *args, context=context)


class Timer:
    """A `call_later` timer; `cancel()` from any thread."""

    __slots__ = ("_ioloop", "_handle", "_cancelled")

    def __init__(self, ioloop: IOLoop) -> None:
        self._ioloop = ioloop
        self._handle: asyncio.TimerHandle | None = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        handle = self._handle
        if handle is not None:
            if self._ioloop.in_loop_thread():
                handle.cancel()
            else:
                self._ioloop.post(handle.cancel)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a `run_process` child ended: `returncode` (negative: killed by that signal),
    its output, and `timed_out` when the time limit killed it; `held_output` when it had
    exited by then but something it started still held its output open."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    held_output: bool = False


class IOLoop:
    """An asyncio event loop over an `FdSelector`, in its own daemon thread.

    `start()` returns once the loop runs; `stop()` closes every server started on it
    (connections included), stops the loop and joins the thread.
    """

    def __init__(self, name: str = "yuneta-io") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selector: FdSelector | None = None
        self._thread: threading.Thread | None = None
        self._servers: set[Any] = set()  # TcpServers with sockets or connections here
        self._on_stop: list[Callable[[], None]] = []
        self._lingering: dict[int, Any] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running asyncio loop (RuntimeError before `start()`)."""
        if self._loop is None:
            raise RuntimeError(f"IOLoop {self.name} is not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def start(self) -> None:
        """Start the loop thread; idempotent while running."""
        if self.running:
            return
        selector = FdSelector()
        loop = _Loop(selector)
        selector.loop = loop
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                for hook in self._on_stop:
                    hook()
                self._on_stop.clear()
                for fd, sock in list(self._lingering.items()):
                    selector.remove_fd(fd)
                    sock.close()
                self._lingering.clear()
                loop.close()  # closes the selector and its epoll

        self._loop = loop
        self._selector = selector
        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Close all servers and their connections (gracefully, within `timeout`), then stop."""
        if not self.running:
            return
        if self._servers:
            self.run_sync(self._close_servers(timeout), timeout + 1.0)
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout + 1.0)
        self._thread = None
        self._loop = None
        self._selector = None

    async def _close_servers(self, timeout: float) -> None:
        await asyncio.gather(
            *(s.aclose(close_connections=True, timeout=timeout) for s in list(self._servers))
        )

    # -- any thread -----------------------------------------------------------------------------

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` in the loop thread soon; callable from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        """asyncio's spelling of `post` (returns the cancellable handle)."""
        return self.loop.call_soon_threadsafe(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run `fn(*args)` in the loop thread after `delay` seconds; callable from any thread."""
        timer = Timer(self)
        loop = self.loop

        def arm() -> None:
            if not timer._cancelled:
                timer._handle = loop.call_later(delay, fn, *args)

        if self.in_loop_thread():
            arm()
        else:
            loop.call_soon_threadsafe(arm)
        return timer

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` in the loop from another thread; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` in the loop and wait for its result (never call from the loop thread)."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("run_sync() called from the IOLoop thread would deadlock")
        return self.run(coro).result(timeout)

    def run_process(
        self, argv: Sequence[str], timeout: float, *, stdin: bytes | None = None
    ) -> concurrent.futures.Future[ProcessResult]:
        """Run `argv` (no shell) with a time limit; the Future gets its `ProcessResult`.

        At the limit the child is killed (SIGKILL) and reaped: `timed_out` is True. A
        program that cannot start sets the Future's exception (OSError). Any thread.
        """
        if isinstance(argv, str | bytes) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError("argv must be a non-empty list of strings")
        return self.run(run_subprocess(tuple(argv), timeout, stdin=stdin))

    # -- loop thread only -------------------------------------------------------------------------

    def add_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Call `callback(event_bits)` when `fd` is ready for `events` (READ | WRITE)."""
        self._selector_now().add_fd(fd, events, callback)

    def modify_fd(self, fd: int, events: int) -> None:
        self._selector_now().modify_fd(fd, events)

    def remove_fd(self, fd: int) -> None:
        """Stop watching `fd` (before closing it: see `FdSelector.select`)."""
        self._selector_now().remove_fd(fd)

    def on_stop(self, hook: Callable[[], None]) -> None:
        """Run `hook()` in the loop thread as the loop ends, before its selector closes."""
        self._on_stop.append(hook)

    def linger(self, sock: Any) -> None:
        """Everything is sent: FIN, then drop what still arrives until the peer's EOF (or
        LINGER_TIMEOUT), then close `sock`. For closes we start, so off the hot path."""
        fd = sock.fileno()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # not connected any more
            sock.close()
            return
        lingering = self._lingering
        selector = self._selector_now()

        def done() -> None:
            if fd in lingering and lingering[fd] is sock:
                del lingering[fd]
                timer.cancel()
                selector.remove_fd(fd)
                sock.close()

        def on_event(events: int) -> None:
            try:
                if sock.recv_into(_DISCARD, 0, _DONTWAIT):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass
            done()  # EOF or an error

        lingering[fd] = sock
        selector.add_fd(fd, READ, on_event)
        timer = self.loop.call_later(LINGER_TIMEOUT, done)

    @property
    def selector(self) -> FdSelector:
        """The loop's selector (for the I/O layer's per-event calls, loop thread only)."""
        return self._selector_now()

    def add_server(self, server: Any) -> None:
        """`IOLoop.stop` will `aclose(close_connections=True)` this server (loop thread)."""
        self._servers.add(server)

    def discard_server(self, server: Any) -> None:
        self._servers.discard(server)

    def _selector_now(self) -> FdSelector:
        if self._selector is None:
            raise RuntimeError(f"IOLoop {self.name} is not started")
        return self._selector


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Output(asyncio.Protocol):
    """What a child writes to one of its output pipes (only the last `keep` bytes, if set:
    a child that prints megabytes must not grow us); `closed` is done at the pipe's EOF."""

    def __init__(self, keep: int | None) -> None:
        self.data = bytearray()
        self.keep = keep
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.keep is not None:
            del self.data[: -self.keep]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_subprocess(
    argv: Sequence[str],
    timeout: float,
    *,
    stdin: bytes | None = None,
    merge_stderr: bool = False,
    keep: int | None = None,
) -> ProcessResult:
    """`IOLoop.run_process` as a coroutine, for code already on the loop.

    The child runs in its own session (a signal to our group never reaches it; the limit
    kills its whole group). It is done when it has exited and its output pipes are closed:
    a process it started that still holds them is still working, as far as we can tell.
    The pipes are ours, not asyncio's, and always closed, even when a daemon outside the
    group holds their other end. `merge_stderr` sends stderr into `stdout`; `keep` keeps
    only the last bytes of each. OSError if the program cannot start.
    """
    loop = asyncio.get_running_loop()
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(1 if merge_stderr else 2)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=pipes[0][1],
            stderr=pipes[-1][1],
            start_new_session=True,
        )
    except BaseException:
        for read_fd, _ in pipes:
            os.close(read_fd)
        raise
    finally:
        for _, write_fd in pipes:
            os.close(write_fd)  # the child has its own copy
    outputs = [_Output(keep) for _ in pipes]
    transports = []
    for output, (read_fd, _) in zip(outputs, pipes, strict=True):
        transport, _ = await loop.connect_read_pipe(
            lambda output=output: output,  # type: ignore[misc]
            os.fdopen(read_fd, "rb", buffering=0),
        )
        transports.append(transport)

    async def finished() -> None:
        if stdin is not None:
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError):  # it exited without reading it all
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        await proc.wait()
        for output in outputs:
            await output.closed

    held_output = timed_out = False
    try:
        await asyncio.wait_for(finished(), timeout)
    except TimeoutError:
        held_output, timed_out = proc.returncode is not None, True
        _kill_group(proc)  # its own children too: they may hold the output pipes open
        await proc.wait()
    except BaseException:  # cancelled (loop stopping): leave no child behind
        if proc.returncode is None:
            _kill_group(proc)
            await proc.wait()
        raise
    finally:
        for transport in transports:
            transport.close()
    assert proc.returncode is not None
    stdout = bytes(outputs[0].data)
    stderr = b"" if merge_stderr else bytes(outputs[1].data)
    return ProcessResult(tuple(argv), proc.returncode, stdout, stderr, timed_out, held_output)
