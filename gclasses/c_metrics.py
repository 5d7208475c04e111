"""C_METRICS: the host's Prometheus endpoint, `/metrics`, served by the agent.

A child of C_AGENT (in a yuno without an agent it exports that yuno alone). Every
`refresh_msec` it collects on the yuno's I/O loop, from every yuno in the agent's registry
at once, the answers of `view-gobj-tree` (listener counters) and `cert-expiry-status`
(certificates, thresholds), each yuno bounded by `yuno_timeout`, plus the agent's own tree
and its `cert-sync-status`. The result comes back to this gobj's actor as EV_COLLECTED and
becomes an immutable `Snapshot`; a scrape only reads the latest one, so a yuno stopped with
SIGSTOP never delays a scrape: after one refresh it shows `yuneta_yuno_up 0` and its other
series go stale. The series themselves are tables in `gclasses/metrics_series.py`.

Serving: the yuno's I/O loop already runs websockets' HTTP/1.1 server for the control port;
its documented `process_request` hook answers plain HTTP requests, which gives `/metrics`
the control port's TLS (a hot-reloadable context picked at every handshake), handshake
timeout and header-size limits without a thread per client. The body is prometheus_client's
`generate_latest`. The rules are the control port's: loopback by default; any other
address needs TLS (`crypto`) and at least one bearer token (`auth_tokens`, each at least
`min_token_length` characters), else the config is refused before anything starts; an
address that keeps sending bad tokens waits longer and longer (`yuneta.backoff`). Unlike the
control port there is no per-UID admission on loopback: the endpoint only reads, and shows
what every TLS client is already shown (certificates) and counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import math
import time
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gclasses.c_timer import CTimer
from gclasses.metrics_series import TREE_ATTRS, Snapshot, SnapshotCollector, YunoSample
from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener
from gclasses.token_auth import check_auth_tokens, is_loopback, token_matches
from yuneta import ievent
from yuneta.backoff import FailureBackoff
from yuneta.errors import AttrError, CommandError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj, create_gobj

RW = Flag.RD | Flag.WR
PATH = "/metrics"
MAX_SKIP = 6  # rounds a down yuno may go unasked: a minute at the default refresh

GCLASS = GClassDef(
    name="C_METRICS",
    description="Prometheus /metrics of the host: every yuno's listeners, certificates, sync",
    attrs=(
        Attr("bool", "enabled", Flag.RD, True, "Serve /metrics (false: nothing listens)"),
        Attr(
            "str",
            "address",
            Flag.RD,
            "127.0.0.1",
            "Address to listen on; other than loopback needs crypto and auth_tokens",
        ),
        Attr(
            "int", "port", Flag.RD, 1992, "Port to listen on (0: any free port, then the real one)"
        ),
        *TLS_ATTRS,
        Attr("list", "auth_tokens", Flag.NONE, [], "Bearer tokens accepted (never shown)"),
        Attr("int", "min_token_length", Flag.RD, 16, "Shortest token accepted in auth_tokens"),
        Attr("str", "url", Flag.RD, "", "Where to scrape (set when listening)"),
        Attr("int", "refresh_msec", RW, 10000, "Milliseconds between collections from the yunos"),
        Attr(
            "real",
            "yuno_timeout",
            RW,
            2.0,
            "Seconds a yuno has to answer a collection; later it counts as down",
        ),
        Attr(
            "int",
            "renewal_period_sec",
            RW,
            60 * 86400,
            "Expected seconds between renewals (certbot: 60 days), for the deploy-hook alert",
        ),
        Attr("int", "scrapes", Flag.RSTATS, 0, "Scrapes answered"),
        Attr("int", "scrapes_refused", Flag.RSTATS, 0, "Requests refused (no or bad token)"),
        Attr("int", "refreshes", Flag.RSTATS, 0, "Collections completed"),
        Attr("real", "last_refresh_duration", Flag.RSTATS, 0.0, "Seconds the last one took"),
        Attr("int", "yunos_down", Flag.RSTATS, 0, "Yunos that did not answer the last one"),
    ),
    commands=TLS_COMMANDS,
    input_events=(
        "EV_TIMEOUT_PERIODIC",
        "EV_COLLECTED",
        "EV_CERT_FILES_CHANGED",
        "EV_CERT_RELOAD_RETRY",
    ),
    states={
        "ST_IDLE": (
            ("EV_TIMEOUT_PERIODIC", "ac_refresh", None),
            ("EV_COLLECTED", "ac_collected", None),
            ("EV_CERT_FILES_CHANGED", "ac_cert_files_changed", None),  # cert_watch
            ("EV_CERT_RELOAD_RETRY", "ac_cert_reload_retry", None),
        ),
    },
)

HIDDEN = "********"

#: websockets logs every answered request at INFO ("connection rejected (200 OK)").
_HTTP_LOG = logging.getLogger("yuneta.metrics.http")
_HTTP_LOG.setLevel(logging.WARNING)


@register_gclass
class CMetrics(TlsListener, GObj):
    GCLASS = GCLASS

    @classmethod
    def mt_check_kw(cls, attrs: dict[str, Any]) -> None:
        check_auth_tokens(GCLASS.name, attrs)
        if not attrs["enabled"] or is_loopback(attrs["address"]):
            return
        where = f"{attrs['address']}:{attrs['port']}"
        if not attrs["crypto"]:
            raise AttrError(
                GCLASS.name,
                "address",
                f"{where}: a non-loopback address needs TLS (crypto) and auth_tokens",
            )
        if not attrs["auth_tokens"]:
            raise AttrError(
                GCLASS.name, "auth_tokens", f"{where}: a non-loopback address needs a token"
            )

    def mt_create(self) -> None:
        # Tokens are secrets: out of the attribute table (view-attrs shows it), as the
        # control port does.
        self._auth_tokens = tuple(str(t).encode() for t in self.attrs["auth_tokens"])
        self.attrs["auth_tokens"] = [HIDDEN] * len(self._auth_tokens)
        self.attrs["use_ssl"] = bool(self.attrs["crypto"])
        self.agent = _nearest(self, "C_AGENT")
        self.timer = create_gobj("__refresh_timer__", CTimer, {}, self)
        # Written by the actor only (ac_collected); read by scrapes on the I/O loop.
        self.snapshot = Snapshot(renewal_period=float(self.attrs["renewal_period_sec"]))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(lambda: self.snapshot))
        self._server: Server | None = None
        self._collecting = False
        self._last_seen: dict[tuple[str, str], float] = {}
        self._up: set[tuple[str, str]] = set()
        #: (role, name) -> (rounds skipped each time, rounds left to skip) of down yunos.
        self._skip: dict[tuple[str, str], tuple[int, int]] = {}
        self._asked: set[tuple[str, str]] = set()  # yunos asked in the round under way
        self._scrapes = self._refused = 0  # counted on the I/O loop; mt_stats reads them
        self._backoff = FailureBackoff()  # the I/O loop's only, as the control port's
        # Asks to the agent's own actors wait here, never on the loop or its default pool.
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="metrics")

    def mt_start(self) -> None:
        if not self.attrs["enabled"]:
            self.log("info", "metrics disabled")
            return
        if self.attrs["use_ssl"]:
            self.build_ytls()  # a bad certificate is a start failure, said clearly
        assert self.runtime is not None
        try:
            port = self.runtime.io_loop.run_sync(self._listen(), 10.0)
        except OSError as exc:
            # The agent's duty is its yunos: a busy metrics port is said loudly (and a
            # Prometheus sees its target down), never a reason to supervise nothing.
            self.log(
                "error",
                "metrics cannot listen; the agent runs without /metrics",
                address=self.attrs["address"],
                port=self.attrs["port"],
                error=str(exc),
            )
            return
        scheme = "https" if self.attrs["use_ssl"] else "http"
        host = self.attrs["address"]
        host = f"[{host}]" if ":" in host else host
        self.attrs.update(port=port, url=f"{scheme}://{host}:{port}{PATH}")
        self.start_cert_watch()
        self.log(
            "info", "metrics listening", url=self.attrs["url"], port=port, **self.cert_fields()
        )

    def mt_stop(self) -> None:
        self.stop_cert_watch()
        if self._server is not None and self.runtime is not None:
            self.runtime.io_loop.run_sync(self._close(), 10.0)
            self.log("info", "metrics stopped", url=self.attrs["url"])

    def mt_play(self) -> None:
        if self.attrs["enabled"]:
            self.ac_refresh("EV_TIMEOUT_PERIODIC", {}, self)
            self.timer.set_timeout_periodic(self.attrs["refresh_msec"])

    def mt_pause(self) -> None:
        self.timer.clear_timeout()

    def mt_destroy(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def mt_writing(self, name: str) -> None:
        if name in ("refresh_msec", "yuno_timeout") and self.attrs[name] <= 0:
            raise CommandError(f"{name} must be more than 0")
        if name == "refresh_msec" and self.playing:
            self.timer.set_timeout_periodic(self.attrs["refresh_msec"])
        TlsListener.mt_writing(self, name)

    def mt_stats(self) -> dict[str, Any]:
        return {"scrapes": self._scrapes, "scrapes_refused": self._refused}

    # ----- collection (actor) ---------------------------------------------------------

    def ac_refresh(self, event: str, kw: dict, src: Any) -> int:
        if self._collecting:
            return 0  # the last round is still waiting on its bound: never pile rounds up
        assert self.runtime is not None
        self._collecting = True
        future = self.runtime.io_loop.run(self._collect_all(self._targets()))
        future.add_done_callback(lambda f: self.send_event("EV_COLLECTED", {"future": f}))
        return 0

    def ac_collected(self, event: str, kw: dict, src: Any) -> int:
        self._collecting = False
        try:
            samples, sync, started, duration = kw["future"].result()
        except Exception as exc:
            self.log_error("metrics collection failed", error=repr(exc))
            return -1
        yunos = []
        for sample in samples:
            key = (sample.role, sample.name)
            label = f"{key[0]}^{key[1]}"
            if sample.up:  # said once, when it changes
                if key not in self._up and key in self._last_seen:
                    self.log("info", "yuno answers metrics again", yuno=label)
                self._last_seen[key] = started
                self._skip.pop(key, None)
            else:
                if key in self._up:
                    self.log("warning", "yuno stopped answering metrics", yuno=label)
                self._back_off(key)
            yunos.append(replace(sample, last_seen=self._last_seen.get(key, 0.0)))
        self._up = {(y.role, y.name) for y in yunos if y.up}
        self.snapshot = Snapshot(
            taken=started,
            duration=duration,
            yunos=tuple(yunos),
            sync=sync,
            renewal_period=float(self.attrs["renewal_period_sec"]),
        )
        self.attrs["refreshes"] += 1
        self.attrs["last_refresh_duration"] = round(duration, 6)
        self.attrs["yunos_down"] = sum(1 for y in yunos if not y.up)
        return 0

    def _back_off(self, key: tuple[str, str]) -> None:
        """A yuno that does not answer is asked again after 1, 2, 4... rounds (at most
        MAX_SKIP): a stopped yuno reads nothing, so every request to it waits in its
        socket's buffers until it runs again; this keeps that queue small."""
        if key not in self._asked:
            return  # skipped this round: its wait goes on
        rounds = min(self._skip[key][0] * 2, MAX_SKIP) if key in self._skip else 1
        self._skip[key] = (rounds, rounds)

    def _targets(self) -> list[tuple[str, str, Any]]:
        """(role, name, channel or None) of every yuno to ask, one per role^name: a running
        entry wins over a dead one of the same name (a relaunch gets a new id)."""
        if self.agent is None:
            return []
        best: dict[tuple[str, str], tuple[int, Any]] = {}
        for e in self.agent.match({}):
            if not e.yuno_role and not e.yuno_name:
                continue  # launched, not identified yet: no name to label it with
            channel = e.channel if e.running else None
            rank = 2 if channel is not None else 1 if e.running else 0
            key = (e.yuno_role, e.yuno_name)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, channel)
        targets = []
        self._asked = set()
        for (role, name), (_rank, channel) in best.items():
            skip = self._skip.get((role, name))
            if skip is not None and skip[1] > 0:
                self._skip[(role, name)] = (skip[0], skip[1] - 1)
                channel = None  # down at its last ask: not asked this round
            if channel is not None:
                self._asked.add((role, name))
            targets.append((role, name, channel))
        return targets

    # ----- collection (I/O loop) ------------------------------------------------------

    async def _collect_all(
        self, targets: list[tuple[str, str, Any]]
    ) -> tuple[list[YunoSample], dict | None, float, float]:
        started, t0 = time.time(), time.monotonic()
        timeout = float(self.attrs["yuno_timeout"])
        own, sync, *others = await asyncio.gather(
            self._collect_local(timeout),
            self._sync_status(timeout),
            *(self._collect_remote(role, name, ch, timeout) for role, name, ch in targets),
        )
        return [own, *others], sync, started, time.monotonic() - t0

    async def _collect_remote(
        self, role: str, name: str, channel: Any, timeout: float
    ) -> YunoSample:
        if channel is None:
            return YunoSample(role, name, up=False)
        gate = self._gate(role, name)
        t0 = time.monotonic()
        tree, expiry = await asyncio.gather(
            channel.request(
                "view-gobj-tree", {"service": "__yuno__", "attrs": TREE_ATTRS}, gate, timeout
            ),
            channel.request("cert-expiry-status", {"service": "__yuno__"}, gate, timeout),
        )
        return _sample(role, name, tree, expiry, time.monotonic() - t0)

    async def _collect_local(self, timeout: float) -> YunoSample:
        """This yuno itself (the agent), through its root's own commands."""
        assert self.runtime is not None and self.runtime.root is not None
        root = self.runtime.root
        role, name = root.attrs["yuno_role"], root.attrs["yuno_name"]
        t0 = time.monotonic()
        tree, expiry = await asyncio.gather(
            self._ask(root, "view-gobj-tree", {"attrs": TREE_ATTRS}, timeout),
            self._ask(root, "cert-expiry-status", {}, timeout),
        )
        return _sample(role, name, tree, expiry, time.monotonic() - t0)

    async def _sync_status(self, timeout: float) -> dict | None:
        if self.agent is None or self.agent.find_command("cert-sync-status") is None:
            return None  # an agent without cert-sync: no sync series
        answer = await self._ask(self.agent, "cert-sync-status", {}, timeout)
        data = answer.get("data")
        return data if answer.get("result", -1) >= 0 and isinstance(data, dict) else None

    async def _ask(self, gobj: GObj, command: str, kw: dict, timeout: float) -> dict:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, lambda: gobj.command(command, kw, src=self)),
                timeout,
            )
        except TimeoutError:
            return {"result": -1, "comment": f"No answer within {timeout:g} s"}

    def _gate(self, role: str, name: str) -> ievent.Gate:
        assert self.runtime is not None and self.runtime.root is not None
        root = self.runtime.root.attrs
        return ievent.Gate(
            src_yuno=root["yuno_name"],
            src_role=root["yuno_role"],
            src_service=self.name,
            dst_yuno=name,
            dst_role=role,
            dst_service="__yuno__",
        )

    # ----- HTTP (I/O loop) ------------------------------------------------------------

    async def _listen(self) -> int:
        # Ytls's session context hands each handshake to the current certificate.
        ctx = self.ytls.get_context() if self.ytls is not None else None
        self._server = await serve(
            _no_websocket,
            self.attrs["address"],
            self.attrs["port"],
            ssl=ctx,
            process_request=self._http,
            compression=None,
            ping_interval=None,
            logger=_HTTP_LOG,
        )
        return self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _http(self, connection: ServerConnection, request: Request) -> Response:
        """Answer one HTTP request (never a WebSocket): /metrics, with a token if any."""
        if self._auth_tokens:
            refused = self._check_token(connection, request.headers.get("Authorization"))
            if refused is not None:
                self._refused += 1
                return refused
        if request.path.split("?", 1)[0] != PATH:
            return _response(http.HTTPStatus.NOT_FOUND, f"try {PATH}\n".encode())
        self._scrapes += 1
        body = generate_latest(self.registry)
        return _response(http.HTTPStatus.OK, body, [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)])

    def _check_token(self, connection: ServerConnection, header: str | None) -> Response | None:
        """None when the bearer token is right; else the refusal. As on the control port,
        an address that keeps failing waits longer and longer before it is even checked."""
        address = str(connection.remote_address[0])
        wait = self._backoff.wait_left(address)
        if wait > 0:
            return _response(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed attempts from {address}: next one checked in {wait:.1f} s\n".encode(),
                [("Retry-After", str(math.ceil(wait)))],
            )
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if token_matches(token.strip().encode(), self._auth_tokens):
                self._backoff.succeeded(address)
                return None
        self._backoff.failed(address)
        return _response(
            http.HTTPStatus.UNAUTHORIZED,
            b"a valid bearer token is required\n",
            [("WWW-Authenticate", 'Bearer realm="yuneta metrics"')],
        )


def _nearest(gobj: GObj, gclass: str) -> Any:
    node = gobj.parent
    while node is not None and node.gclass.name != gclass:
        node = node.parent
    return node


def _sample(role: str, name: str, tree: dict, expiry: dict, seconds: float) -> YunoSample:
    """A yuno is up when its tree came back; a failing cert-expiry-status only costs the
    certificate series (an older yuno may not have it)."""
    if tree.get("result", -1) < 0 or not isinstance(tree.get("data"), dict):
        return YunoSample(role, name, up=False)
    certs = expiry.get("data") if expiry.get("result", -1) >= 0 else None
    return YunoSample(
        role,
        name,
        up=True,
        collect_seconds=seconds,
        tree=tree["data"],
        expiry=certs if isinstance(certs, dict) else None,
    )


def _response(status: http.HTTPStatus, body: bytes, headers: list | None = None) -> Response:
    head = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    for key, value in headers or []:
        if key in head:
            del head[key]
        head[key] = value
    return Response(status.value, status.phrase, head, body)


async def _no_websocket(connection: ServerConnection) -> None:
    """Never called: every request is answered by `_http` before any upgrade."""
    await connection.close()
