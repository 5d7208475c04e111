"""WebSocket transport of the inter-event protocol, on the yuno's I/O loop.

`WsServer` accepts connections (any path, no subprotocol) and runs one
`ievent.ServerSession` per connection: identity cards are checked there, commands are run
through the `on_command` callback in a worker thread (it asks an actor; a handler that must
wait hands back a Future, awaited here on the loop, so a slow yuno holds no thread), and
answers go back on the same connection. Each connection has at most `max_inflight` commands
(and queued answers) in flight: beyond that the server stops reading it until answers
drain, so a client that sends without reading fills its own socket, not our memory.
A server may also *send* commands to a connected peer (the agent commanding a yuno):
`Channel.request` sends an EV_MT_COMMAND with a `msg_id` and waits for the matching answer,
at most `max_pending` at a time per peer.

`WsClient` is the other end kept by a yuno: it connects to the agent, identifies itself,
answers the commands the agent sends, and reconnects with backoff when the link drops.

Malformed frames, oversize frames and peers that vanish are logged and never stop the
server. Everything here runs in the IOLoop thread except the callbacks run in workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from yuneta import ievent
from yuneta.command import envelope
from yuneta.log import log
from yuneta.netio import IOLoop

#: on_command(channel, command_line, kw, service, extra) -> envelope, or a Future of it;
#: runs in a worker thread.
CommandHandler = Callable[["Channel", str, dict, str, dict], "dict | concurrent.futures.Future"]

IDENTITY_TIMEOUT = 10.0
#: Commands (and answers waiting to go out) per connection before we stop reading it.
MAX_INFLIGHT = 64
#: The longest a command's Future is awaited (GObj.command's own bound).
COMMAND_WAIT = 60.0
REFUSAL_LOG_INTERVAL = 60.0


class Channel:
    """One live inter-event connection (either side), able to send commands to its peer."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.id = next(Channel._ids)
        self.card: dict[str, Any] = {}
        self.peer = _peer(ws)
        #: Set by the server's admission check: the peer's local UID, when the kernel told it.
        self.uid: int | None = None
        self.refusal_logged = False
        self._pending: dict[Any, asyncio.Future[dict]] = {}
        self._msg_ids = itertools.count(1)

    async def send(self, event: str, kw: Mapping[str, Any]) -> None:
        await self.ws.send(ievent.encode_frame(event, kw))

    async def request(
        self,
        command_line: str,
        kw: Mapping[str, Any],
        gate: ievent.Gate,
        timeout: float,
        max_pending: int | None = None,
    ) -> dict:
        """Send an EV_MT_COMMAND to the peer and return its answer's envelope.

        A peer that does not answer within `timeout` gives a -1 envelope saying so; with
        `max_pending` requests already waiting for this peer, a -1 at once (a stopped peer
        must not collect an unbounded pile of waiters).
        """
        if max_pending is not None and len(self._pending) >= max_pending:
            return envelope(
                -1, f"Too many commands in flight ({max_pending}) to this yuno: try again later"
            )
        msg_id = f"{self.id}-{next(self._msg_ids)}"
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self.send(
                ievent.EV_MT_COMMAND, ievent.build_command(command_line, kw, gate, msg_id=msg_id)
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return envelope(-1, f"No answer within {timeout:g} s")
        except websockets.ConnectionClosed:
            return envelope(-1, "Connection closed before the answer")
        finally:
            self._pending.pop(msg_id, None)

    def answer_received(self, kw: dict[str, Any]) -> bool:
        """Deliver an EV_MT_COMMAND_ANSWER to the request waiting for it."""
        md = kw.get("__md_iev__")
        msg_id = md.get(ievent.MSG_ID_KEY) if isinstance(md, dict) else None
        future = self._pending.get(msg_id)
        if future is None or future.done():
            return False
        future.set_result({k: kw.get(k) for k in ("result", "comment", "schema", "data")})
        return True

    def connection_lost(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_result(envelope(-1, "Connection lost"))


def _verb(command_line: str) -> str:
    """Only the command's name goes to logs: its parameters may carry secrets."""
    return command_line.strip().split(" ", 1)[0]


def _peer(ws: Any) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"


def request_all(
    ioloop: IOLoop,
    calls: list[tuple[Channel | None, ievent.Gate]],
    command: str,
    params: Mapping[str, Any],
    timeout: float,
    max_pending: int | None = None,
) -> concurrent.futures.Future[list[dict]]:
    """Send `command` to every channel at once (from any thread but the loop's); a Future of
    their envelopes, in order. A missing channel answers -1 "Not connected"; one with
    `max_pending` requests already waiting answers -1 at once."""

    async def ask_all() -> list[dict]:
        async def ask(channel: Channel | None, gate: ievent.Gate) -> dict:
            if channel is None:
                return envelope(-1, "Not connected")
            return await channel.request(command, params, gate, timeout, max_pending)

        return list(await asyncio.gather(*(ask(c, g) for c, g in calls)))

    return ioloop.run(ask_all())


class WsServer:
    """An inter-event WebSocket server (plain `ws://` or TLS `wss://`) on an IOLoop."""

    def __init__(
        self,
        ioloop: IOLoop,
        host: str,
        port: int,
        *,
        owner: str,
        session_factory: Callable[[Channel], ievent.ServerSession],
        on_command: CommandHandler,
        on_open: Callable[[Channel], None] | None = None,
        on_close: Callable[[Channel], None] | None = None,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        max_frame_size: int = ievent.DEFAULT_MAX_FRAME_SIZE,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.ioloop = ioloop
        self.host = host
        self.port = port
        self.owner = owner
        self.session_factory = session_factory
        self.on_command = on_command
        self.on_open = on_open
        self.on_close = on_close
        self.ssl_context = ssl_context
        self.max_frame_size = max_frame_size
        self.max_inflight = max(1, max_inflight)
        self.channels: set[Channel] = set()
        self._server: Server | None = None
        self._refusals: dict[Any, tuple[float, int]] = {}
        # Commands may wait on actors that wait on other yunos: give them their own
        # threads, so a few slow ones cannot starve the loop's default executor.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="ievent-cmd"
        )

    def start(self, timeout: float = 10.0) -> int:
        """Bind and listen (call from outside the loop thread); returns the real port."""
        return self.ioloop.run_sync(self._start(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None and self.ioloop.running:
            self.ioloop.run_sync(self._stop(), timeout + 1)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _start(self) -> int:
        # Ytls's session context hands every handshake to the certificate current at that
        # moment (yuneta.ytls.session_context), so a reload reaches new connections without
        # re-binding and sessions resume across it.
        ctx = self.ssl_context() if self.ssl_context is not None else None
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=ctx,
            max_size=self.max_frame_size,
            compression=None,
            ping_interval=None,
            logger=None,
        )
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self.port
        return self.port

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        channel = Channel(ws, self.owner)
        session = self.session_factory(channel)
        self.channels.add(channel)
        opened = False
        tasks: set[asyncio.Task] = set()
        # Answers leave in request order (the C protocol has no message id): each answer
        # waits for the one before it, while the commands themselves run concurrently.
        last: asyncio.Task | None = None

        def in_order(coro: Any) -> asyncio.Task:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDENTITY_TIMEOUT
        try:
            while True:
                # Backpressure: with max_inflight answers pending, read nothing more from
                # this peer until one is sent (its frames wait in its socket, not here).
                while len(tasks) >= self.max_inflight:
                    await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
                # The card must arrive within IDENTITY_TIMEOUT of the connection, whatever else
                # (junk, refused cards) the peer sends meanwhile: no unidentified squatters.
                timeout = None if opened else max(0.0, deadline - loop.time())
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout)
                except TimeoutError:
                    log(
                        "warning",
                        self.owner,
                        "no identity card in time, closing",
                        peer=channel.peer,
                    )
                    return
                for item in session.receive_data(message):
                    if isinstance(item, ievent.SendFrame):
                        if last is None or last.done():
                            await ws.send(item.text)
                        else:
                            last = in_order(self._send_after(last, channel, item.text))
                    elif isinstance(item, ievent.Close):
                        return
                    elif isinstance(item, ievent.IdentityAccepted):
                        opened = True
                        channel.card = item.card
                        log(
                            "info",
                            self.owner,
                            "identity card accepted",
                            peer=channel.peer,
                            src_role=item.client.src_role,
                            src_yuno=item.client.src_yuno,
                            uid=channel.uid,
                        )
                        if self.on_open is not None:
                            self.on_open(channel)
                    elif isinstance(item, ievent.IdentityRefused):
                        self._log_refusal(channel, item)
                    elif isinstance(item, ievent.CommandRequest):
                        last = in_order(self._run_command(session, channel, item, last))
                    elif isinstance(item, ievent.EventReceived):
                        if item.event in (ievent.EV_MT_COMMAND_ANSWER, ievent.EV_MT_STATS_ANSWER):
                            channel.answer_received(item.kw)
                        else:
                            log(
                                "debug",
                                self.owner,
                                "inter-event ignored",
                                event=item.event,
                                peer=channel.peer,
                            )
                    elif isinstance(item, ievent.ProtocolFault):
                        log(
                            "warning",
                            self.owner,
                            "bad inter-event",
                            reason=item.reason,
                            peer=channel.peer,
                        )
        except websockets.ConnectionClosed as exc:
            # The server itself fails an oversize frame with 1009: that is the close it sent
            # (exc.sent); exc.rcvd is usually None because the peer's echo is not awaited.
            if any(frame is not None and frame.code == 1009 for frame in (exc.sent, exc.rcvd)):
                log(
                    "warning",
                    self.owner,
                    "frame over the size limit, connection closed",
                    peer=channel.peer,
                )
        except Exception as exc:  # a broken peer never stops the server
            log(
                "error",
                self.owner,
                "connection handler failed",
                peer=channel.peer,
                error=repr(exc),
                exc_info=True,
            )
        finally:
            session.connection_lost()
            channel.connection_lost()
            self.channels.discard(channel)
            # An admission check may have registered the peer before the ACK went out.
            if (opened or channel.card) and self.on_close is not None:
                self.on_close(channel)

    def _log_refusal(self, channel: Channel, refused: ievent.IdentityRefused) -> None:
        """Once per connection, and at most once a minute per local UID (or address when
        the UID is unknown): a refused peer retrying on new connections cannot flood the log."""
        if channel.refusal_logged:
            return
        channel.refusal_logged = True
        who = channel.uid if channel.uid is not None else channel.peer.rsplit(":", 1)[0]
        key = (who, re.sub(r"\d", "", refused.comment))  # "retry in 3.2 s" is one reason
        now = time.monotonic()
        last, suppressed = self._refusals.get(key, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refusals[key] = (last, suppressed + 1)
            return
        if len(self._refusals) >= 4096:
            self._refusals.clear()
        self._refusals[key] = (now, 0)
        log(
            "warning",
            self.owner,
            "identity card refused",
            peer=channel.peer,
            uid=channel.uid,
            result=refused.result,
            comment=refused.comment,
            suppressed=suppressed,
        )

    async def _send_after(self, previous: asyncio.Task, channel: Channel, text: str) -> None:
        await asyncio.wait([previous])
        try:
            await channel.ws.send(text)
        except websockets.ConnectionClosed:
            pass

    async def _run_command(
        self,
        session: ievent.ServerSession,
        channel: Channel,
        request: ievent.CommandRequest,
        previous: asyncio.Task | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        answer: dict
        try:
            handled = await loop.run_in_executor(
                self._executor,
                self.on_command,
                channel,
                request.command,
                dict(request.kw),
                request.service,
                {},
            )
            if isinstance(handled, concurrent.futures.Future):
                answer = await asyncio.wait_for(asyncio.wrap_future(handled), COMMAND_WAIT)
            else:
                answer = handled
        except TimeoutError:
            answer = envelope(-1, f"No answer within {COMMAND_WAIT:g} s")
        except Exception as exc:
            log(
                "error",
                self.owner,
                "command handler failed",
                command=_verb(request.command),
                error=repr(exc),
                exc_info=True,
            )
            answer = envelope(-1, f"{type(exc).__name__}: {exc}")
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await channel.ws.send(session.answer(request, answer).text)
        except websockets.ConnectionClosed:
            log(
                "info",
                self.owner,
                "client left before its answer",
                command=_verb(request.command),
                peer=channel.peer,
            )


class WsClient:
    """A yuno's link to its agent: connect, identify, answer commands, reconnect with backoff."""

    def __init__(
        self,
        ioloop: IOLoop,
        url: str,
        *,
        owner: str,
        session_factory: Callable[[], ievent.ClientSession],
        card_extra: Mapping[str, Any],
        md_yuno: Mapping[str, Any],
        on_command: CommandHandler,
        on_state: Callable[[bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.ioloop = ioloop
        self.url = url
        self.owner = owner
        self.session_factory = session_factory
        self.card_extra = dict(card_extra)
        self.md_yuno = dict(md_yuno)
        self.on_command = on_command
        self.on_state = on_state
        self.ssl_context = ssl_context
        self.max_backoff = max_backoff
        self.connected = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.ioloop.call_soon_threadsafe(self._spawn)

    def _spawn(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self, timeout: float = 5.0) -> None:
        if self.ioloop.running:
            self.ioloop.run_sync(self._cancel(), timeout)

    async def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            if self.on_state is not None:
                self.on_state(value)

    async def _run(self) -> None:
        delay, failures = 0.2, 0
        while True:
            try:
                async with connect(
                    self.url,
                    open_timeout=5,
                    ssl=self.ssl_context,
                    compression=None,
                    ping_interval=None,
                    max_size=ievent.DEFAULT_MAX_FRAME_SIZE,
                    proxy=None,
                ) as ws:
                    if await self._session(ws):
                        delay, failures = 0.2, 0
            except asyncio.CancelledError:
                self._set_connected(False)
                raise
            except Exception as exc:  # refused, reset, bad TLS: retry, and say so now and then
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log(
                        "warning",
                        self.owner,
                        "cannot reach the agent, retrying",
                        url=self.url,
                        attempts=failures,
                        error=repr(exc),
                    )
            self._set_connected(False)
            await asyncio.sleep(delay)
            delay = min(self.max_backoff, delay * 2)

    async def _session(self, ws: Any) -> bool:
        """Run one connected session; True when it got as far as an accepted identity."""
        session = self.session_factory()
        card = session.connection_made()
        for key, value in self.card_extra.items():
            card.kw[key] = value
        await ws.send(card.text)
        channel = Channel(ws, self.owner)
        opened = False
        tasks: set[asyncio.Task] = set()
        try:
            async for message in ws:
                for item in session.receive_data(message):
                    if isinstance(item, ievent.SessionOpened):
                        opened = True
                        self._set_connected(True)
                        log("info", self.owner, "connected to agent", url=self.url)
                    elif isinstance(item, ievent.IdentityRefused):
                        log(
                            "error",
                            self.owner,
                            "agent refused our identity card",
                            comment=item.comment,
                        )
                        return False
                    elif (
                        isinstance(item, ievent.EventReceived)
                        and item.event == ievent.EV_MT_COMMAND
                    ):
                        task = asyncio.ensure_future(self._answer(channel, item.kw))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(item, ievent.ProtocolFault):
                        log("warning", self.owner, "bad inter-event from agent", reason=item.reason)
        except websockets.ConnectionClosed:
            pass
        if opened:
            log("warning", self.owner, "agent link lost, reconnecting", url=self.url)
        return opened

    async def _answer(self, channel: Channel, request_kw: dict[str, Any]) -> None:
        command = request_kw.get("__command__")
        named = request_kw.get("service")
        service = named if isinstance(named, str) else ""
        extra = (
            {"gobj": request_kw["__gobj__"]} if isinstance(request_kw.get("__gobj__"), str) else {}
        )
        params = {k: v for k, v in request_kw.items() if not k.startswith("__") and k != "service"}
        result: dict
        if not isinstance(command, str) or not command.strip():
            result = envelope(-1, "What command?")
        else:
            loop = asyncio.get_running_loop()
            try:
                handled = await loop.run_in_executor(
                    None, self.on_command, channel, command, params, service, extra
                )
                if isinstance(handled, concurrent.futures.Future):  # a handler that waits
                    result = await asyncio.wait_for(asyncio.wrap_future(handled), COMMAND_WAIT)
                else:
                    result = handled
            except TimeoutError:
                result = envelope(-1, f"No answer within {COMMAND_WAIT:g} s")
            except Exception as exc:
                result = envelope(-1, f"{type(exc).__name__}: {exc}")
        answer = ievent.build_command_answer(
            result, request_kw, self.md_yuno, my_service=service or "__yuno__"
        )
        try:
            await channel.send(ievent.EV_MT_COMMAND_ANSWER, answer)
        except websockets.ConnectionClosed:
            pass
