"""The DTLS listener as a product: `configs/echo-dtls.json` launched by a real agent with
`run-yuno`, certificates from `scripts/make-certs.py`, reloads through the real ycommand, and
`openssl s_client -dtls1_2` / pyOpenSSL clients on real UDP sockets."""

from __future__ import annotations

import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dtls_helpers import DtlsClient, free_udp_port
from metrics_env import MetricsAgent, start_agent
from procs import CONFIGS, kill_tree, write_json, ycommand, ycommand_json
from test_tls_product import RELOAD, Store, make_store, write_mismatched_key

ECHO_DTLS = CONFIGS / "echo-dtls.json"


@dataclass
class DtlsYuno:
    host: MetricsAgent  # the agent, with its /metrics
    store: Store
    port: int
    name: str
    serial: str

    @property
    def agent_url(self) -> str:
        return self.host.agent.url

    def client(self, timeout: float = 10.0) -> DtlsClient:
        return DtlsClient(self.port, self.store.ca).handshake(timeout)


def wait_dtls(port: int, ca: Path, timeout: float = 30.0) -> None:
    """Until a DTLS handshake on `port` completes (UDP has no connect to wait for)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            DtlsClient(port, ca).handshake(1.0).close()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@pytest.fixture
def dtls_yuno(tmp_path: Path) -> Iterator[DtlsYuno]:
    store, serial = make_store(tmp_path / "store")
    host = start_agent(tmp_path / "agent-run")
    agent = host.agent
    port, name = free_udp_port(), "echo_dtls_product"
    override = write_json(
        tmp_path / "echo-dtls-override.json",
        {
            "__json_config_variables__": {
                "url": f"udps://127.0.0.1:{port}",
                "ssl_certificate": str(store.cert),
                "ssl_certificate_key": str(store.key),
                "work_dir": str(tmp_path / name),
                "yuno_name": name,
            }
        },
    )
    pid = 0
    try:
        rc, answer = ycommand_json(
            agent.url, f"run-yuno config={ECHO_DTLS},{override} wait=20", wait=40
        )
        assert rc == 0 and answer["result"] == 0, answer
        pid = answer["data"][0]["pid"]
        wait_dtls(port, store.ca)
        yield DtlsYuno(host, store, port, name, serial)
    finally:
        ycommand(agent.url, "-c", f"kill-yuno yuno_name={name}", wait=30)
        if pid:
            kill_tree([pid])
        agent.stop()


def s_client_echo(port: int, ca: Path, line: bytes) -> str:
    client = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-dtls1_2",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(ca),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(line)
        client.stdin.flush()
        out = b""
        deadline = time.monotonic() + 30
        while line not in out.split(b"Verify return code", 1)[-1] and time.monotonic() < deadline:
            if select.select([client.stdout], [], [], 0.5)[0]:
                chunk = client.stdout.read1(65536)
                if not chunk:
                    break
                out += chunk
        rest, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    return (out + rest + err).decode()


def test_reload_certs_through_ycommand_and_the_agent_reaches_the_dtls_listener(
    dtls_yuno: DtlsYuno,
) -> None:
    text = s_client_echo(dtls_yuno.port, dtls_yuno.store.ca, b"hello from s_client\n")
    assert "Verify return code: 0 (ok)" in text and "subject=CN = localhost" in text
    assert "hello from s_client" in text.split("Verify return code: 0 (ok)", 1)[1]

    live = [dtls_yuno.client() for _ in range(20)]
    assert {c.serial for c in live} == {dtls_yuno.serial}
    new_serial = dtls_yuno.store.rotate()
    rc, envelope = ycommand_json(dtls_yuno.agent_url, RELOAD)
    assert rc == 0 and envelope["result"] == 0, envelope
    answer = envelope["data"][0]["data"]
    assert answer["reloaded"] == 1 and answer["failed"] == 0
    assert answer["details"] == [
        {"gobj": "echo_dtls", "result": 0, "comment": "TLS certificates reloaded"}
    ]
    for i, client in enumerate(live):
        assert client.echo(f"after reload {i}".encode()) == f"after reload {i}".encode()
    with dtls_yuno.client() as fresh:
        assert fresh.serial == new_serial != dtls_yuno.serial

    rc, status = ycommand_json(
        dtls_yuno.agent_url, "command-yuno command=cert-expiry-status service=__yuno__"
    )
    data = status["data"][0]["data"]
    assert rc == 0 and data["listeners"] == 1
    assert data["details"][0]["gobj"] == "echo_dtls" and data["details"][0]["serial"] == new_serial

    # A key that matches nothing: refused by name, the live sessions and the new cert stay.
    write_mismatched_key(dtls_yuno.store.key)
    proc = ycommand(dtls_yuno.agent_url, "-c", RELOAD)
    assert proc.returncode == 255, proc.stdout
    assert (
        f"ERROR -1: echo_dtls^{dtls_yuno.name}: reloaded 0 TLS listener(s), 1 failed" in proc.stdout
    )
    assert (
        f"ssl_certificate_key {dtls_yuno.store.key}: private key does not match certificate"
        in proc.stdout
    )
    with dtls_yuno.client() as fresh:
        assert fresh.serial == new_serial
    for client in live:
        assert client.echo(b"still here") == b"still here"

    # What the operator's Prometheus sees of the DTLS listener.
    who = {"yuno_role": "echo_dtls", "yuno_name": dtls_yuno.name, "listener": "echo_dtls"}
    scrape = dtls_yuno.host.wait_scrape(
        lambda s: s.get("yuneta_tls_reloads_total", result="failure", **who) == 1
    )
    assert scrape.get("yuneta_dtls_sessions", **who) == 20
    assert scrape.get("yuneta_dtls_sessions_accepted_total", **who) >= 23
    assert scrape.get("yuneta_dtls_cookie_rejections_total", **who) >= 23
    assert scrape.get("yuneta_tls_reloads_total", result="success", **who) == 1
    assert scrape.labels("yuneta_tls_cert_info", **who)[0]["serial"] == new_serial
    for client in live:
        client.close()
