"""The TLS listener as a product: real `yuneta run` processes, the agent, ycommand, openssl.

Certificates come from `scripts/make-certs.py` (a private CA and a `localhost` server
certificate in the store layout); a rotation is what that script does: a new key and
certificate written key first, each atomically by rename, then
`command-yuno command=reload-certs service=__yuno__` through the agent. Clients run in one
asyncio loop in the test process and verify the server against the CA, by IP address.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from certs import serial_of_peer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from procs import (
    CONFIGS,
    ROOT,
    Agent,
    child_env,
    free_port,
    kill_tree,
    wait_port,
    write_json,
    ycommand,
    ycommand_json,
)

ECHO_CONFIG = CONFIGS / "echo-tls.json"
RELOAD = "command-yuno command=reload-certs service=__yuno__"
IO_TIMEOUT = 30.0  # only to turn a hang into a failure


def _load_make_certs() -> Any:
    spec = importlib.util.spec_from_file_location("make_certs", ROOT / "scripts" / "make-certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_certs = _load_make_certs()


# ---------------------------------------------------------------------------
# The certificate store and the echo yuno
# ---------------------------------------------------------------------------


@dataclass
class Store:
    """A store made by scripts/make-certs.py: CA, server certificate and key for `localhost`."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.dir / "localhost.crt"

    @property
    def key(self) -> Path:
        return self.dir / "private" / "localhost.key"

    def rotate(self) -> str:
        """Issue a new key and certificate in place (key first, atomic renames); its serial."""
        return format(make_certs.issue(self.dir, "localhost", 90).serial_number, "X")

    def client_context(self) -> ssl.SSLContext:
        """Trusts the store's CA and checks the server's IP SAN (we connect to 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_store(directory: Path) -> tuple[Store, str]:
    """Run the real script once; (the store, the serial it printed)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make-certs.py"),
            "--store",
            str(directory),
            "--name",
            "localhost",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Store(directory), proc.stdout.split(" serial ")[1].split()[0]


def echo_override(path: Path, store: Store, port: int, name: str, cert: Path | None = None) -> Path:
    variables = {
        "url": f"tcps://127.0.0.1:{port}",
        "ssl_certificate": str(cert or store.cert),
        "ssl_certificate_key": str(store.key),
        "work_dir": str(path.parent / name),
        "yuno_name": name,
    }
    return write_json(path, {"__json_config_variables__": variables})


@dataclass
class EchoYuno:
    """The demo yuno launched by a real agent with `run-yuno`; reload goes through the agent."""

    agent: Agent
    store: Store
    port: int
    name: str
    pid: int
    serial: str  # the serial it started with

    def log_lines(self) -> list[dict]:
        lines = []
        for log in (self.agent.workdir / "agent").glob("yunos/*/yuno.log"):
            for line in log.read_text().splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines


@pytest.fixture
def echo_yuno(tmp_path: Path) -> Iterator[EchoYuno]:
    store, serial = make_store(tmp_path / "store")
    agent = Agent(tmp_path / "agent-run").start()
    port, name = free_port(), "echo_product"
    override = echo_override(tmp_path / "echo-override.json", store, port, name)
    pid = 0
    try:
        rc, answer = ycommand_json(
            agent.url, f"run-yuno config={ECHO_CONFIG},{override} wait=20", wait=40
        )
        assert rc == 0 and answer["result"] == 0, answer
        pid = answer["data"][0]["pid"]
        wait_port(port, timeout=30)
        yield EchoYuno(agent, store, port, name, pid, serial)
    finally:
        ycommand(agent.url, "-c", f"kill-yuno yuno_name={name}", wait=30)
        if pid:
            kill_tree([pid])
        agent.stop()


# ---------------------------------------------------------------------------
# Clients (one asyncio loop) and the command path
# ---------------------------------------------------------------------------


class Client:
    """One verified TLS connection to the echo listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.serial = serial_of_peer(writer.get_extra_info("ssl_object"))

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, ssl_handshake_timeout=IO_TIMEOUT),
            IO_TIMEOUT,
        )
        return cls(reader, writer)

    async def echo(self, line: bytes) -> bool:
        self.writer.write(line)
        got = await asyncio.wait_for(self.reader.readexactly(len(line)), IO_TIMEOUT)
        return got == line

    def close(self) -> None:
        self.writer.close()


async def open_clients(port: int, ctx: ssl.SSLContext, n: int, parallel: int = 64) -> list[Client]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> Client:
        async with gate:
            return await Client.connect(port, ctx)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def echo_round(clients: list[Client], tag: str) -> list[str]:
    """Every client echoes one line; the failures, as `index: what`."""

    async def one(i: int, c: Client) -> str | None:
        try:
            ok = await c.echo(f"{tag} {i}\n".encode())
        except Exception as exc:
            return f"{i}: {type(exc).__name__} {exc}"
        return None if ok else f"{i}: wrong echo"

    return [f for f in await asyncio.gather(*(one(i, c) for i, c in enumerate(clients))) if f]


async def ycommand_async(
    url: str, command: str, *, as_json: bool = True
) -> tuple[int, dict | None, str]:
    """The real ycommand executable: (exit code, last JSON envelope or None, stdout)."""
    argv = [
        sys.executable,
        "-m",
        "yuneta.ycommand",
        "-u",
        url,
        "-w",
        "30",
        *(["--json"] if as_json else []),
        "-c",
        command,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    envelopes = [json.loads(line) for line in text.splitlines() if as_json and line.startswith("{")]
    assert proc.returncode is not None
    return proc.returncode, (envelopes[-1] if envelopes else None), text + err.decode()


def write_mismatched_key(path: Path) -> None:
    """A valid key that belongs to no certificate, put in place atomically."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# 1. openssl s_client against `yuneta run`
# ---------------------------------------------------------------------------


def test_openssl_s_client_verifies_the_served_certificate_and_gets_its_line_back(
    tmp_path: Path,
) -> None:
    store, serial = make_store(tmp_path / "store")
    port = free_port()
    override = echo_override(tmp_path / "over.json", store, port, "echo_s_client")
    with open(tmp_path / "yuno.log", "wb") as log:
        yuno = subprocess.Popen(
            [sys.executable, "-m", "yuneta", "run", "-f", str(ECHO_CONFIG), "-f", str(override)],
            stdout=log,
            stderr=log,
            env=child_env(),
            cwd=tmp_path,
        )
    try:
        wait_port(port, timeout=30, proc=yuno)
        client = subprocess.Popen(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-CAfile",
                str(store.ca),
                "-verify_return_error",
                "-verify_ip",
                "127.0.0.1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello through yuneta\n")
        client.stdin.flush()
        out = b""
        deadline = time.monotonic() + IO_TIMEOUT
        while b"hello through yuneta\n" not in out and time.monotonic() < deadline:
            if select.select([client.stdout], [], [], 0.5)[0]:
                chunk = client.stdout.read1(65536)
                if not chunk:
                    break
                out += chunk
        rest, err = client.communicate(timeout=IO_TIMEOUT)  # closes stdin: s_client says goodbye
        out += rest
    finally:
        yuno.terminate()
        assert yuno.wait(30) == 0
    text = out.decode()
    assert client.returncode == 0, err.decode()
    assert "Verify return code: 0 (ok)" in text
    assert "subject=CN = localhost" in text and "issuer=CN = Yuneta demo CA" in text
    assert "hello through yuneta\n" in text.split("Verify return code: 0 (ok)", 1)[1]
    listening = [
        json.loads(x)
        for x in (tmp_path / "yuno.log").read_text().splitlines()
        if '"listening"' in x
    ]
    assert listening and listening[0]["serial"] == serial


# ---------------------------------------------------------------------------
# 2. zero drop through the command path
# ---------------------------------------------------------------------------


@dataclass
class Reload:
    serial: str
    issued: float  # ycommand started
    answered: float  # ycommand exited


@dataclass
class NewClient:
    started: float
    finished: float
    serial: str = ""
    error: str = ""


@dataclass
class ZeroDropRun:
    old_connections: int = 0
    echo_rounds: int = 0
    echo_failures: list[str] = field(default_factory=list)
    reloads: list[Reload] = field(default_factory=list)
    reload_answers: list[tuple[int, dict | None]] = field(default_factory=list)
    new_clients: list[NewClient] = field(default_factory=list)
    probes: list[tuple[str, str]] = field(default_factory=list)  # (expected, seen)


async def keep_connecting(
    port: int, ctx: ssl.SSLContext, stop: asyncio.Event, out: list[NewClient]
) -> None:
    while not stop.is_set():
        record = NewClient(time.monotonic(), 0.0)
        try:
            client = await Client.connect(port, ctx)
            record.serial = client.serial
            if not await client.echo(b"new client\n"):
                record.error = "wrong echo"
            client.close()
        except Exception as exc:
            record.error = f"{type(exc).__name__} {exc}"
        record.finished = time.monotonic()
        out.append(record)
        await asyncio.sleep(0.005)


async def zero_drop(yuno: EchoYuno, connections: int, reloads: int) -> ZeroDropRun:
    run = ZeroDropRun()
    ctx = yuno.store.client_context()
    clients = await open_clients(yuno.port, ctx, connections)
    run.old_connections = len(clients)
    assert {c.serial for c in clients} == {yuno.serial}
    run.reloads.append(Reload(yuno.serial, float("-inf"), float("-inf")))

    async def rounds(tag: str, until: asyncio.Future | None = None) -> None:
        while True:
            run.echo_failures += await echo_round(clients, f"{tag} r{run.echo_rounds}")
            run.echo_rounds += 1
            if until is None or until.done():
                return

    await rounds("before")
    stop = asyncio.Event()
    connectors = [
        asyncio.create_task(keep_connecting(yuno.port, ctx, stop, run.new_clients))
        for _ in range(3)
    ]
    await asyncio.sleep(0.5)  # new clients before the first swap see the first certificate
    for k in range(1, reloads + 1):
        serial = await asyncio.to_thread(yuno.store.rotate)
        issued = time.monotonic()
        answer = asyncio.ensure_future(ycommand_async(yuno.agent.url, RELOAD))
        await rounds(f"during {k}", until=answer)  # old connections echo while the reload runs
        rc, envelope, _ = await answer
        run.reloads.append(Reload(serial, issued, time.monotonic()))
        run.reload_answers.append((rc, envelope))
        await rounds(f"after {k}")
        probe = await Client.connect(yuno.port, ctx)
        run.probes.append((serial, probe.serial))
        run.echo_failures += [] if await probe.echo(b"probe\n") else [f"probe after reload {k}"]
        probe.close()
    stop.set()
    await asyncio.gather(*connectors)
    await rounds("final")
    for c in clients:
        c.close()
    return run


def allowed_serials(reloads: list[Reload], started: float, finished: float) -> set[str]:
    """Serials a client may see: current when it started, up to any reload begun before it ended."""
    lo = max(i for i, r in enumerate(reloads) if r.answered <= started)
    hi = max(i for i, r in enumerate(reloads) if r.issued <= finished)
    return {r.serial for r in reloads[lo : hi + 1]}


@pytest.mark.timeout(300)
def test_live_connections_survive_twenty_reloads_through_the_agent_and_new_ones_get_the_current_cert(
    echo_yuno: EchoYuno,
) -> None:
    t0 = time.monotonic()
    run = asyncio.run(zero_drop(echo_yuno, connections=500, reloads=20))
    duration = time.monotonic() - t0

    assert run.old_connections == 500
    assert run.echo_failures == []
    assert [rc for rc, _ in run.reload_answers] == [0] * 20
    for _, envelope in run.reload_answers:
        assert envelope is not None and envelope["result"] == 0, envelope
        assert (
            envelope["data"][0]["data"]["reloaded"] == 1
            and envelope["data"][0]["data"]["failed"] == 0
        )
    assert len({r.serial for r in run.reloads}) == 21
    assert all(expected == seen for expected, seen in run.probes), run.probes
    failed = [c for c in run.new_clients if c.error]
    assert failed == []
    wrong = [
        (c, allowed_serials(run.reloads, c.started, c.finished))
        for c in run.new_clients
        if c.serial not in allowed_serials(run.reloads, c.started, c.finished)
    ]
    assert wrong == []
    before_first_swap = [c for c in run.new_clients if c.finished < run.reloads[1].issued]
    assert before_first_swap and all(c.serial == echo_yuno.serial for c in before_first_swap)
    assert len({c.serial for c in run.new_clients}) >= 15  # they really followed the rotation
    reloaded = [x for x in echo_yuno.log_lines() if x.get("msg") == "TLS certificates reloaded"]
    assert [x["serial"] for x in reloaded] == [r.serial for r in run.reloads[1:]]
    print(
        f"\nzero-drop: {run.old_connections} live connections, {len(run.reload_answers)} reloads, "
        f"{run.echo_rounds} echo rounds ({run.echo_rounds * run.old_connections} echoes), "
        f"{len(run.new_clients)} new clients + {len(run.probes)} probes, "
        f"failures={len(run.echo_failures) + len(failed) + len(wrong)}, duration {duration:.1f} s"
    )


# ---------------------------------------------------------------------------
# 3. a bad certificate through the command path
# ---------------------------------------------------------------------------


async def bad_key_then_good(yuno: EchoYuno) -> None:
    ctx = yuno.store.client_context()
    clients = await open_clients(yuno.port, ctx, 20)
    assert await echo_round(clients, "before") == []

    write_mismatched_key(yuno.store.key)
    rc, _, out = await ycommand_async(yuno.agent.url, RELOAD, as_json=False)
    assert rc == 255, out
    assert f"ERROR -1: echo_tls^{yuno.name}: reloaded 0 TLS listener(s), 1 failed" in out
    assert f"ssl_certificate_key {yuno.store.key}: private key does not match certificate" in out
    assert await echo_round(clients, "after refusal") == []
    fresh = await Client.connect(yuno.port, ctx)
    assert fresh.serial == yuno.serial and await fresh.echo(b"still the old certificate\n")
    fresh.close()
    refused = [
        x for x in yuno.log_lines() if x.get("msg") == "TLS reload refused, old certificate kept"
    ]
    assert refused and refused[-1]["path"] == str(yuno.store.key)

    new_serial = await asyncio.to_thread(yuno.store.rotate)
    rc, envelope, out = await ycommand_async(yuno.agent.url, RELOAD)
    assert rc == 0 and envelope is not None and envelope["result"] == 0, out
    assert await echo_round(clients, "after good reload") == []
    fresh = await Client.connect(yuno.port, ctx)
    assert fresh.serial == new_serial != yuno.serial and await fresh.echo(b"the new certificate\n")
    fresh.close()
    for c in clients:
        c.close()


def test_mismatched_key_is_refused_by_name_and_the_old_certificate_keeps_serving(
    echo_yuno: EchoYuno,
) -> None:
    asyncio.run(bad_key_then_good(echo_yuno))


# ---------------------------------------------------------------------------
# 4. a missing certificate at start
# ---------------------------------------------------------------------------


def test_missing_certificate_at_start_exits_non_zero_naming_the_file_and_listens_nowhere(
    tmp_path: Path,
) -> None:
    store, _ = make_store(tmp_path / "store")
    missing = tmp_path / "store" / "nowhere.crt"
    port = free_port()
    override = echo_override(tmp_path / "over.json", store, port, "echo_missing", cert=missing)
    proc = subprocess.run(
        [sys.executable, "-m", "yuneta", "run", "-f", str(ECHO_CONFIG), "-f", str(override)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert f"ssl_certificate {missing}: file not found" in proc.stderr
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass
