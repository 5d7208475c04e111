"""The agent's /metrics, scraped from a real agent with real yunos (tests/metrics_env.py).

What an operator's Prometheus sees: every yuno and listener with its certificate, counters
that move on a reload, a stopped yuno that shows as down without slowing a scrape, and a
non-loopback endpoint that cannot start without TLS and a token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import Issued, serial_of_peer
from dtls_helpers import DtlsClient, free_udp_port
from metrics_env import ECHO_DTLS, YUNO_TIMEOUT, MetricsAgent, http_get, new_ca, start_agent
from procs import Agent, run_agent_to_exit, write_json, ycommand_json
from prometheus_client import CollectorRegistry, generate_latest

from gclasses.metrics_series import Snapshot, SnapshotCollector, YunoSample, families

RELOAD = "command-yuno command=reload-certs service=__yuno__"
ECHO = {"yuno_role": "echo_tls", "yuno_name": "echo1", "listener": "echo_tls"}
ECHO_YUNO = {"yuno_role": "echo_tls", "yuno_name": "echo1"}
AGENT = {"yuno_role": "yuneta_agent", "yuno_name": "agent"}


@contextmanager
def running_agent_process(agent: Agent) -> Iterator[Agent]:
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[MetricsAgent]:
    metrics = start_agent(tmp_path / "agent-run")
    try:
        yield metrics
    finally:
        metrics.stop()


def test_scrape_shows_each_yuno_listener_and_certificate(host, tmp_path):
    ca = new_ca()
    issued = ca.issue(tmp_path / "certs", "localhost", days=30)
    _pid, port = host.run_echo(tmp_path, "echo1", issued)
    scrape = host.wait_scrape(lambda s: s.get("yuneta_yuno_up", **ECHO_YUNO) == 1)

    assert scrape.get("yuneta_yuno_up", **AGENT) == 1
    assert (
        scrape.get("yuneta_tls_cert_not_after_timestamp_seconds", **ECHO)
        == issued.cert.not_valid_after_utc.timestamp()
    )
    assert (
        scrape.get("yuneta_tls_cert_not_before_timestamp_seconds", **ECHO)
        == issued.cert.not_valid_before_utc.timestamp()
    )
    (info,) = scrape.labels("yuneta_tls_cert_info", **ECHO)
    assert info["serial"] == issued.serial and info["subject"] in ("/CN=localhost", "CN=localhost")
    # The yuno's own thresholds (echo-tls.json: 7 and 2 days), in seconds.
    assert scrape.get("yuneta_cert_expiry_warning_threshold_seconds", **ECHO_YUNO) == 7 * 86400
    assert scrape.get("yuneta_cert_expiry_critical_threshold_seconds", **ECHO_YUNO) == 2 * 86400
    assert scrape.get("yuneta_tls_reloads_total", result="success", **ECHO) == 0
    # wait_port's probe (one plain connect) is the one handshake failure so far.
    scrape = host.wait_scrape(lambda s: s.get("yuneta_tls_handshake_failures_total", **ECHO) == 1)
    failures = 1
    accepted = scrape.get("yuneta_listener_connections_accepted_total", **ECHO)

    # One handshake that fails (plain bytes to a TLS port), one client that stays.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
        bad.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        bad.recv(100)
    client = ca.client_context().wrap_socket(socket.create_connection(("127.0.0.1", port)))
    try:
        scrape = host.wait_scrape(
            lambda s: (
                s.get("yuneta_listener_connections", **ECHO) == 1
                and s.get("yuneta_tls_handshake_failures_total", **ECHO) == failures + 1
            )
        )
        assert scrape.get("yuneta_listener_connections_accepted_total", **ECHO) == accepted + 1
    finally:
        client.close()
    host.wait_scrape(lambda s: s.get("yuneta_listener_connections", **ECHO) == 0)


def test_reload_moves_the_counter_and_not_after(host, tmp_path):
    ca = new_ca()
    first = ca.issue(tmp_path / "certs", "localhost", days=30)
    host.run_echo(tmp_path, "echo1", first)
    host.wait_scrape(lambda s: s.get("yuneta_yuno_up", **ECHO_YUNO) == 1)

    second = ca.issue(tmp_path / "certs", "localhost", days=80)  # same paths, new content
    rc, answer = ycommand_json(host.agent.url, RELOAD)
    assert rc == 0, answer
    new_not_after = second.cert.not_valid_after_utc.timestamp()
    scrape = host.wait_scrape(
        lambda s: s.get("yuneta_tls_reloads_total", result="success", **ECHO) == 1
    )
    assert scrape.get("yuneta_tls_cert_not_after_timestamp_seconds", **ECHO) == new_not_after
    assert new_not_after != first.cert.not_valid_after_utc.timestamp()
    assert scrape.labels("yuneta_tls_cert_info", **ECHO)[0]["serial"] == second.serial
    assert scrape.get("yuneta_tls_last_reload_failed", **ECHO) == 0

    # A refused reload (a key that does not match) counts as a failure and keeps serving
    # the certificate it had.
    other = ca.issue(tmp_path / "other", "other")
    second.key_path.write_bytes(other.key_path.read_bytes())
    rc, answer = ycommand_json(host.agent.url, RELOAD)
    assert rc != 0 and answer["result"] < 0, answer
    scrape = host.wait_scrape(
        lambda s: s.get("yuneta_tls_reloads_total", result="failure", **ECHO) == 1
    )
    assert scrape.get("yuneta_tls_last_reload_failed", **ECHO) == 1
    assert scrape.get("yuneta_tls_reloads_total", result="success", **ECHO) == 1
    assert scrape.get("yuneta_tls_cert_not_after_timestamp_seconds", **ECHO) == new_not_after


def test_stopped_yuno_is_down_and_never_delays_a_scrape(host, tmp_path):
    ca = new_ca()
    pid, _port = host.run_echo(tmp_path, "echo1", ca.issue(tmp_path / "certs", "localhost"))
    host.wait_scrape(lambda s: s.get("yuneta_yuno_up", **ECHO_YUNO) == 1)
    os.kill(pid, signal.SIGSTOP)
    try:
        # Within a refresh and its bound the yuno is down; its listener series are gone
        # (stale in Prometheus) and the agent still answers. No scrape waits for it.
        slowest = 0.0
        deadline = time.monotonic() + 20
        while True:
            scrape = host.scrape()
            slowest = max(slowest, scrape.seconds)
            if scrape.get("yuneta_yuno_up", **ECHO_YUNO) == 0:
                break
            assert time.monotonic() < deadline, "the stopped yuno never showed as down"
        assert scrape.get("yuneta_yuno_up", **AGENT) == 1
        assert scrape.get("yuneta_tls_cert_not_after_timestamp_seconds", **ECHO) is None
        assert scrape.get("yuneta_yuno_last_seen_timestamp_seconds", **ECHO_YUNO) > 0
        # Rounds keep completing while it stays stopped: each one bounded by yuno_timeout.
        refreshed = scrape.get("yuneta_metrics_refresh_timestamp_seconds")
        for _ in range(10):
            scrape = host.scrape()
            slowest = max(slowest, scrape.seconds)
            time.sleep(0.2)
        assert scrape.get("yuneta_metrics_refresh_timestamp_seconds") > refreshed
        assert scrape.get("yuneta_metrics_refresh_duration_seconds") < YUNO_TIMEOUT + 0.5
        assert slowest < YUNO_TIMEOUT, f"a scrape took {slowest:.3f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
    host.wait_scrape(lambda s: s.get("yuneta_yuno_up", **ECHO_YUNO) == 1)


def test_dtls_listener_sessions_and_certificate(host, tmp_path):
    ca = new_ca()
    issued = ca.issue(tmp_path / "certs", "localhost", days=40)
    port = free_udp_port()
    host.run_yuno(tmp_path, "dtls1", issued, ECHO_DTLS, f"udps://127.0.0.1:{port}")
    dtls = {"yuno_role": "echo_dtls", "yuno_name": "dtls1", "listener": "echo_dtls"}
    deadline = time.monotonic() + 30
    while True:  # UDP has no connect to wait for: a first handshake says it listens
        try:
            DtlsClient(port, ca).handshake(1.0).close()
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the DTLS yuno never answered"
    with DtlsClient(port, ca).handshake() as client:
        assert client.echo(b"ping") == b"ping"
        scrape = host.wait_scrape(lambda s: s.get("yuneta_dtls_sessions", **dtls) == 1)
        assert scrape.get("yuneta_dtls_sessions_accepted_total", **dtls) >= 2
        assert (
            scrape.get("yuneta_tls_cert_not_after_timestamp_seconds", **dtls)
            == issued.cert.not_valid_after_utc.timestamp()
        )
        assert scrape.get("yuneta_tls_reloads_total", result="success", **dtls) == 0
        assert scrape.get("yuneta_udp_datagrams_rejected_total", **dtls) == 0
        assert scrape.get("yuneta_listener_connections_rejected_total", **dtls) is None
    # close_notify ends the session: the gauge comes back down.
    host.wait_scrape(lambda s: s.get("yuneta_dtls_sessions", **dtls) == 0)


def _run_agent(tmp_path: Path, variables: dict, metrics_kw: dict) -> subprocess.CompletedProcess:
    override = write_json(
        tmp_path / "override.json",
        {
            "__json_config_variables__": {
                "agent_url": "ws://127.0.0.1:0",
                "work_dir": str(tmp_path / "agent"),
                "metrics_port": 0,
                **variables,
            },
            "global": {f"C_METRICS.{k}": v for k, v in metrics_kw.items()},
        },
    )
    return run_agent_to_exit(override, tmp_path)


@pytest.mark.parametrize(
    "metrics_kw, attr",
    [
        ({}, "address"),  # plain HTTP
        ({"auth_tokens": ["t0ken-for-prometheus"]}, "address"),  # a token but no TLS
        ({"crypto": {"ssl_certificate": "x.crt", "ssl_certificate_key": "x.key"}}, "auth_tokens"),
    ],
    ids=["no-tls-no-token", "token-without-tls", "tls-without-token"],
)
def test_non_loopback_address_without_tls_and_token_is_refused_at_start(tmp_path, metrics_kw, attr):
    proc = _run_agent(tmp_path, {"metrics_address": "0.0.0.0"}, metrics_kw)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert f"C_METRICS: attribute '{attr}'" in lines[0]
    assert "non-loopback" in lines[0] and "0.0.0.0" in lines[0]
    assert "configs/agent.json" in lines[0] or "override.json" in lines[0]


def test_a_short_token_is_refused_at_start_even_on_loopback(tmp_path):
    proc = _run_agent(tmp_path, {}, {"auth_tokens": ["short"]})
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "C_METRICS: attribute 'auth_tokens'" in line
    assert "shorter than min_token_length (16 characters)" in line


def test_a_busy_metrics_port_leaves_the_agent_supervising(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = Agent(
            tmp_path / "agent-run", extra={"__json_config_variables__": {"metrics_port": port}}
        )
        with running_agent_process(agent):
            rc, answer = ycommand_json(agent.url, "list-yunos")
            assert rc == 0, answer
            deadline = time.monotonic() + 20
            while not [
                line
                for line in agent.log_lines()
                if line.get("msg", "").startswith("metrics cannot listen")
                and line.get("port") == port
            ]:
                assert time.monotonic() < deadline, agent.log.read_text()
                time.sleep(0.05)


def test_disabled_metrics_listen_nowhere(tmp_path):
    # Disabled, even a non-loopback address is no error: nothing listens.
    agent = Agent(tmp_path / "agent-run")
    data = json.loads(agent.override.read_text())
    data["__json_config_variables__"].update(metrics_enabled=False, metrics_address="0.0.0.0")
    write_json(agent.override, data)
    with running_agent_process(agent):
        rc, answer = ycommand_json(agent.url, "view-gobj-tree attrs=url")
        assert rc == 0, answer
        deadline = time.monotonic() + 20
        while not any(line.get("msg") == "metrics disabled" for line in agent.log_lines()):
            assert time.monotonic() < deadline, agent.log.read_text()
            time.sleep(0.05)
        assert not any(line.get("msg") == "metrics listening" for line in agent.log_lines())


def test_tls_and_token_on_any_address(tmp_path):
    ca = new_ca()
    issued = ca.issue(tmp_path / "certs", "metrics")
    token = "scrape-t0ken-5f3a"
    host = start_agent(
        tmp_path / "agent-run",
        variables={"metrics_address": "0.0.0.0"},
        metrics_kw={"crypto": issued.crypto(), "auth_tokens": [token], "cert_watch": True},
        token=token,
        context=ca.client_context(),
    )
    try:
        assert host.url.startswith("https://127.0.0.1:")
        status, headers, _ = http_get(host.url, None, host.context)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = http_get(host.url, "wrong-" + token, host.context)
        assert status == 401
        # As on the control port, an address that keeps failing is made to wait: then not
        # even the right token is looked at until its window ends.
        for _ in range(20):
            status, headers, body = http_get(host.url, "wrong-" + token, host.context)
            if status == 429:
                break
            assert status == 401
        assert status == 429 and int(headers["Retry-After"]) >= 1, body
        deadline = time.monotonic() + 30
        while http_get(host.url, token, host.context)[0] == 429:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(OSError):  # no TLS, no answer
            http_get(host.url.replace("https://", "http://"), token)
        scrape = host.wait_scrape(
            lambda s: (
                s.get(
                    "yuneta_tls_cert_not_after_timestamp_seconds", listener="__metrics__", **AGENT
                )
                is not None
            )
        )
        # The endpoint's own certificate is a listener's certificate like any other.
        assert (
            scrape.get(
                "yuneta_tls_cert_not_after_timestamp_seconds", listener="__metrics__", **AGENT
            )
            == issued.cert.not_valid_after_utc.timestamp()
        )
        # cert_watch: a renewed certificate in place is served at the next handshake.
        renewed = ca.issue(tmp_path / "certs", "metrics", days=90)
        scrape = host.wait_scrape(
            lambda s: (
                s.get("yuneta_tls_reloads_total", listener="__metrics__", result="success", **AGENT)
                >= 1
            )
        )
        assert (
            scrape.get(
                "yuneta_tls_cert_not_after_timestamp_seconds", listener="__metrics__", **AGENT
            )
            == renewed.cert.not_valid_after_utc.timestamp()
        )
        port = int(host.url.rsplit(":", 1)[1].split("/")[0])
        with host.context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as tls:
            assert serial_of_peer(tls) == renewed.serial
        # The token is a secret: never in an attribute answer.
        rc, answer = ycommand_json(host.agent.url, "view-gobj-tree attrs=auth_tokens,crypto,url")
        assert token not in str(answer)
    finally:
        host.stop()


# ----- the series table, without processes -------------------------------------------


def test_a_down_yuno_exports_only_that_it_is_down():
    tree = {
        "name": "y",
        "children": [{"name": "l", "attrs": {"use_ssl": True, "reloads": 3, "connxs": 2}}],
    }
    snap = Snapshot(
        yunos=(
            YunoSample("r", "up", True, 10.0, 0.1, tree, None),
            YunoSample("r", "down", False, 5.0, 0.0, tree, None),
        )
    )
    names = {
        (m.name, tuple(sorted(s.labels.items())), s.value)
        for m in families(snap)
        for s in m.samples
    }
    assert ("yuneta_yuno_up", (("yuno_name", "down"), ("yuno_role", "r")), 0.0) in names
    assert (
        "yuneta_listener_connections",
        (("listener", "l"), ("yuno_name", "up"), ("yuno_role", "r")),
        2.0,
    ) in names
    assert not any(
        n == "yuneta_listener_connections" and ("yuno_name", "down") in ls for n, ls, _ in names
    )


def test_two_gobjs_of_one_name_never_make_a_duplicate_sample():
    node = {"name": "l", "attrs": {"use_ssl": False, "connxs": 1}}
    tree = {
        "name": "y",
        "children": [
            node,
            {"name": "x", "children": [dict(node, attrs={"use_ssl": False, "connxs": 9})]},
        ],
    }
    certs = [
        {"gobj": "l", "not_after": 5, "serial": "A"},
        {"gobj": "l", "not_after": 6, "serial": "B"},
    ]
    expiry = {"details": certs}
    snap = Snapshot(yunos=(YunoSample("r", "n", True, 1.0, 0.0, tree, expiry),))
    by_name = {m.name: m for m in families(snap)}
    assert [s.value for s in by_name["yuneta_listener_connections"].samples] == [1.0]
    assert [s.value for s in by_name["yuneta_tls_cert_not_after_timestamp_seconds"].samples] == [5]
    assert [s.labels["serial"] for s in by_name["yuneta_tls_cert"].samples] == ["A"]
    text = generate_latest(_Registry(snap)).decode()
    assert text.count("yuneta_tls_cert_info{") == 1


class _Registry(CollectorRegistry):
    def __init__(self, snap: Snapshot) -> None:
        super().__init__(auto_describe=False)
        self.register(SnapshotCollector(lambda: snap))


def _samples(snap: Snapshot) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in families(snap)
        for s in m.samples
    }


def test_cert_sync_status_becomes_series():
    sync = {
        "enabled": True,
        "interval_sec": 900,
        "last_check": 990,
        "last_action": 500,
        "last_result": "copy-script-failed",
        "failures": 2,
        "deploy_hook_last_run": 400,
        "lagging": [{"yuno": "echo_tls^e1", "gobj": "echo_tls", "since": 100, "reason": "x"}],
    }
    got = _samples(Snapshot(taken=1000.0, sync=sync))
    assert got[("yuneta_cert_sync_enabled", ())] == 1
    assert got[("yuneta_cert_sync_interval_seconds", ())] == 900
    assert got[("yuneta_cert_sync_last_check_timestamp_seconds", ())] == 990
    assert got[("yuneta_cert_sync_last_action_timestamp_seconds", ())] == 500
    assert got[("yuneta_cert_sync_failures_total", ())] == 2
    assert got[("yuneta_deploy_hook_last_run_timestamp_seconds", ())] == 400
    assert got[("yuneta_cert_sync_last_result", (("result", "copy-script-failed"),))] == 1
    assert got[("yuneta_cert_sync_last_result", (("result", "reloaded"),))] == 0
    assert got[("yuneta_cert_sync_listeners_lagging", ())] == 1
    lag = (("listener", "echo_tls"), ("yuno_name", "e1"), ("yuno_role", "echo_tls"))
    assert got[("yuneta_cert_sync_listener_lagging_seconds", lag)] == 900


def test_an_attribute_of_one_name_feeds_the_family_of_its_gclass():
    # `rejected` counts connections on C_TCP_S and datagrams on C_UDP_S.
    tree = {
        "name": "y",
        "children": [
            {"name": "t", "gclass": "C_TCP_S", "attrs": {"use_ssl": True, "rejected": 1}},
            {"name": "u", "gclass": "C_UDP_S", "attrs": {"use_ssl": True, "rejected": 7}},
        ],
    }
    got = _samples(Snapshot(yunos=(YunoSample("r", "n", True, 1.0, 0.0, tree, None),)))
    t = (("listener", "t"), ("yuno_name", "n"), ("yuno_role", "r"))
    u = (("listener", "u"), ("yuno_name", "n"), ("yuno_role", "r"))
    assert got[("yuneta_listener_connections_rejected_total", t)] == 1
    assert got[("yuneta_udp_datagrams_rejected_total", u)] == 7
    assert ("yuneta_listener_connections_rejected_total", u) not in got


def _install(issued: Issued, cert: Path, key: Path) -> None:
    """Key first, then certificate, each by an atomic rename (what copy-certs.sh ends with)."""
    for src, dst in ((issued.key_path, key), (issued.cert_path, cert)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


def test_cert_sync_results_lagging_and_deploy_hook_reach_the_scrape(tmp_path):
    ca = new_ca()
    store = tmp_path / "store"
    cert, key = store / "one.crt", store / "private" / "one.key"
    _install(ca.issue(tmp_path / "v1", "localhost", days=30), cert, key)
    stamp = tmp_path / "last-deploy-hook-run"
    stamp.write_text("1700000000\n")
    host = start_agent(
        tmp_path / "agent-run",
        variables={"cert_sync_store_dir": str(store), "cert_sync_copy_cmd": "/bin/false"},
        agent_kw={"cert_sync_debounce_sec": 0.2, "cert_sync_stamp_file": str(stamp)},
    )
    try:
        pid, _port = host.run_echo(tmp_path, "echo1", _Files(cert, key))
        # The copy command fails and nothing changed: a failure (SPEC 5).
        rc, answer = ycommand_json(host.agent.url, "cert-sync-now")
        assert answer["data"]["result"] == "copy-script-failed", answer
        scrape = host.wait_scrape(
            lambda s: s.get("yuneta_cert_sync_last_result", result="copy-script-failed") == 1
        )
        assert scrape.get("yuneta_cert_sync_failures_total") >= 1
        assert scrape.get("yuneta_cert_sync_last_result", result="no-change") == 0
        assert scrape.get("yuneta_deploy_hook_last_run_timestamp_seconds") == 1700000000
        assert scrape.get("yuneta_cert_sync_enabled") == 1
        assert scrape.get("yuneta_cert_sync_interval_seconds") == 900
        assert scrape.get("yuneta_cert_sync_listeners_lagging") == 0

        # A stopped yuno cannot take the store's new certificate: it lags, as a whole ("*").
        os.kill(pid, signal.SIGSTOP)
        try:
            new = ca.issue(tmp_path / "v2", "localhost", days=60)
            _install(new, cert, key)
            scrape = host.wait_scrape(
                lambda s: s.get("yuneta_cert_sync_listeners_lagging") == 1, timeout=60
            )
            assert (
                scrape.get("yuneta_cert_sync_listener_lagging_seconds", listener="*", **ECHO_YUNO)
                >= 0
            )
            assert scrape.get("yuneta_cert_sync_last_action_timestamp_seconds") > 0
        finally:
            os.kill(pid, signal.SIGCONT)
        # Running again, it converges: nothing lags and the new certificate is served.
        new_not_after = new.cert.not_valid_after_utc.timestamp()
        host.wait_scrape(
            lambda s: (
                s.get("yuneta_cert_sync_listeners_lagging") == 0
                and s.get("yuneta_tls_cert_not_after_timestamp_seconds", **ECHO) == new_not_after
            ),
            timeout=60,
        )
    finally:
        host.stop()


@dataclass
class _Files:
    """The store's files, where a yuno is pointed at (run_echo takes an Issued's paths)."""

    cert_path: Path
    key_path: Path
