"""Layer 1 end to end with the real tools: certbot renews against pebble, the hook delivers.

One pebble for the module (it forgets its accounts when restarted). Each test installs with
`yuneta install --prefix` into its own directory, runs the agent from the installed config,
and gives certbot a config dir inside the prefix, so the hook certbot fires is the installed
one with the defaults install wrote into it: no YUNETA_* variable is set anywhere here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from layer1 import Certbot, Pebble, run_script, yuneta_argv
from procs import CONFIGS, child_env, free_port, kill_tree, wait_port, write_json, ycommand_json

pytestmark = pytest.mark.skipif(
    not (shutil.which("certbot") and shutil.which("pebble")), reason="needs certbot and pebble"
)
NAME = "example.test"
IO_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble(tmp_path_factory.mktemp("pebble")).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Host:
    """An installed prefix, its certbot, and (fixture `host`) its agent."""

    prefix: Path
    agent_url: str
    agent: subprocess.Popen | None
    certbot: Certbot
    workdir: Path

    @property
    def certs(self) -> Path:
        return self.prefix / "yuneta" / "store" / "certs"

    @property
    def hook_log(self) -> Path:
        return self.prefix / "var" / "log" / "yuneta" / "deploy-hook.log"

    @property
    def stamp(self) -> Path:
        return self.prefix / "var" / "lib" / "yuneta" / "last-deploy-hook-run"

    @property
    def hook(self) -> Path:
        return self.prefix / "etc" / "letsencrypt" / "renewal-hooks" / "deploy" / "reload-certs"

    def start_agent(self, **variables: object) -> None:
        """The agent from the installed config; `variables` override some of its values."""
        config = self.prefix / "yuneta" / "agent" / "agent.json"
        override = write_json(
            self.workdir / "agent-override.json", {"__json_config_variables__": variables}
        )
        with open(self.workdir / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                yuneta_argv("run", "-f", str(config), "-f", str(override)),
                stdout=log,
                stderr=log,
                env=child_env(),
                cwd=self.workdir,
            )
        wait_port(int(self.agent_url.rsplit(":", 1)[1]), proc=self.agent)

    def live_serial(self, name: str = NAME) -> str:
        pem = (self.prefix / "etc" / "letsencrypt" / "live" / name / "cert.pem").read_bytes()
        return format(x509.load_pem_x509_certificate(pem).serial_number, "X")


@pytest.fixture
def installed(pebble: Pebble, tmp_path: Path) -> Iterator[Host]:
    """`yuneta install --prefix` in tmp_path, for this user (nothing is added to /etc)."""
    prefix, port = tmp_path / "p", free_port()
    me = pwd.getpwuid(os.geteuid()).pw_name
    argv = ["--prefix", str(prefix), "--user", me, "--agent-url", f"ws://127.0.0.1:{port}"]
    install = subprocess.run(
        yuneta_argv("install", *argv, "--metrics-port", "0"),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert install.returncode == 0, install.stderr
    certbot = Certbot(pebble, prefix / "etc" / "letsencrypt", tmp_path)
    host = Host(prefix, f"ws://127.0.0.1:{port}", None, certbot, tmp_path)
    try:
        yield host
    finally:
        if host.agent is not None:
            host.agent.terminate()
            try:
                host.agent.wait(20)
            except subprocess.TimeoutExpired:
                host.agent.kill()


def run_echo_yuno(host: Host, name: str) -> tuple[int, int]:
    """run-yuno the TLS echo on the store's copies of NAME; (its port, its pid)."""
    port = free_port()
    variables = {
        "url": f"tcps://127.0.0.1:{port}",
        "ssl_certificate": str(host.certs / f"{NAME}.crt"),
        "ssl_certificate_key": str(host.certs / "private" / f"{NAME}.key"),
        "work_dir": str(host.workdir / name),
        "yuno_name": name,
    }
    override = write_json(host.workdir / f"{name}.json", {"__json_config_variables__": variables})
    rc, answer = ycommand_json(
        host.agent_url, f"run-yuno config={CONFIGS / 'echo-tls.json'},{override} wait=20", wait=40
    )
    assert rc == 0 and answer["result"] == 0, answer
    wait_port(port, timeout=30)
    return port, answer["data"][0]["pid"]


class Session:
    """A TLS session to the yuno that checks the name certbot asked for."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname=NAME)
        der = self.sock.getpeercert(binary_form=True)
        self.serial = format(x509.load_der_x509_certificate(der).serial_number, "X")

    def echo(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        got = b""
        while len(got) < len(line):
            chunk = self.sock.recv(len(line) - len(got))
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def hook_runs(host: Host) -> list[str]:
    return [x for x in host.hook_log.read_text().splitlines() if " start: " in x]


def test_certbot_issue_and_forced_renewal_reach_the_running_yuno_through_the_installed_hook(
    installed: Host, pebble: Pebble
):
    host = installed
    host.start_agent(cert_sync_watch=False)  # layer 1 alone: the agent does not watch the store
    host.certbot.certonly(NAME, "--deploy-hook", str(host.hook))
    issued = host.live_serial()
    # The hook copied the new lineage into the store (no yuno ran yet to be told).
    crt = host.certs / f"{NAME}.crt"
    live = host.prefix / "etc" / "letsencrypt" / "live" / NAME
    assert crt.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert len(hook_runs(host)) == 1 and "copy: ok" in host.hook_log.read_text()
    port, pid = run_echo_yuno(host, "echo_certbot")
    try:
        ctx = ssl.create_default_context(cadata=pebble.issuing_root().decode())
        old = Session(port, ctx)
        assert old.serial == issued
        assert old.echo(b"before renewal\n") == b"before renewal\n"
        renew_started = int(time.time())

        host.certbot.renew()

        renewed = host.live_serial()
        assert renewed != issued
        assert os.readlink(live / "cert.pem").endswith("cert2.pem")
        runs = hook_runs(host)
        # renew fires the hook once, from renewal-hooks/deploy/ (certbot skips the same saved
        # --deploy-hook), with the lineage and its domains.
        assert len(runs) == 2 and f"RENEWED_LINEAGE={live}" in runs[1]
        assert f"RENEWED_DOMAINS={NAME}" in runs[1]
        last_run = host.hook_log.read_text().split(runs[1])[1]
        assert "copy: ok" in last_run and "reload-yunos: ok" in last_run, last_run
        assert "done: 0 step(s) failed" in last_run
        assert renew_started <= int(host.stamp.read_text()) <= int(time.time())
        # The new serial is on the wire for a new session; the old one keeps echoing on the old.
        fresh = Session(port, ctx)
        assert fresh.serial == renewed
        assert fresh.echo(b"new session\n") == b"new session\n"
        assert old.echo(b"after renewal\n") == b"after renewal\n"
        fresh.close()
        old.close()
    finally:
        ycommand_json(host.agent_url, "kill-yuno yuno_name=echo_certbot", wait=30)
        kill_tree([pid])


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_a_certbot_lineage_with_an_unreadable_key_is_named_and_the_others_still_copy(
    installed: Host,
):
    host = installed
    host.certbot.certonly(NAME)
    host.certbot.certonly("locked.test")
    archive = host.prefix / "etc" / "letsencrypt" / "archive" / "locked.test"
    os.chmod(archive / "privkey1.pem", 0)
    # As root but without the capabilities that bypass modes, the 0000 key cannot be read.
    no_bypass = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]

    proc = run_script(host.certs / "copy-certs.sh", {}, *no_bypass)

    assert proc.returncode == 1
    assert f"locked.test: cannot read {archive / 'privkey1.pem'}" in proc.stderr
    assert "1 of 2 lineage(s) failed: locked.test" in proc.stderr
    assert (host.certs / f"{NAME}.crt").exists()
    assert (host.certs / "private" / f"{NAME}.key").exists()
    assert not (host.certs / "locked.test.crt").exists()
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr


def cert_sync_status(host: Host) -> dict:
    rc, answer = ycommand_json(host.agent_url, "cert-sync-status")
    assert rc == 0 and answer["result"] == 0, answer
    return answer["data"]


def wait_for_serial(port: int, ctx: ssl.SSLContext, serial: str, within: float) -> float:
    """Open sessions until one is served `serial`; the seconds that took (fails after `within`)."""
    t0 = time.monotonic()
    seen = ""
    while time.monotonic() - t0 < within:
        probe = Session(port, ctx)
        seen = probe.serial
        probe.close()
        if seen == serial:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"still serving {seen}, not {serial}, after {within} s")


def test_when_the_hook_cannot_reach_the_agent_or_does_not_fire_the_agents_sync_delivers(
    installed: Host, pebble: Pebble
):
    host = installed
    host.start_agent()  # layer 2 as installed: watch the store, copy with the installed script
    host.certbot.certonly(NAME)  # no --deploy-hook: the store is the agent's to fill
    rc, answer = ycommand_json(host.agent_url, "cert-sync-now")
    assert rc == 0 and (host.certs / f"{NAME}.crt").exists(), answer
    port, pid = run_echo_yuno(host, "echo_layer2")
    try:
        ctx = ssl.create_default_context(cadata=pebble.issuing_root().decode())
        old = Session(port, ctx)
        assert old.serial == host.live_serial()

        # 1. The hook fires but its ycommand step cannot reach the agent.
        nobody_listens = f"ws://127.0.0.1:{free_port()}"
        renew_t0 = time.monotonic()
        host.certbot.renew(env={"YUNETA_AGENT_URL": nobody_listens})
        renew_took = time.monotonic() - renew_t0
        first = host.live_serial()
        log = host.hook_log.read_text()
        assert "copy: ok" in log and "reload-yunos: FAILED" in log, log
        stamp = int(host.stamp.read_text())
        # The hook's copy changed the store; the agent's watch reloads the yuno in seconds.
        by_watch = wait_for_serial(port, ctx, first, within=15)
        assert by_watch < 10
        status = cert_sync_status(host)
        assert status["deploy_hook_last_run"] == stamp and status["last_result"] == "reloaded"

        # 2. The hook does not fire at all (not executable: certbot skips it).
        host.hook.chmod(0o644)
        while int(time.time()) <= stamp:  # the stamp has whole seconds: let one pass (<= 1 s)
            time.sleep(0.05)
        renewed_at = int(time.time())
        host.certbot.renew()
        second = host.live_serial()
        assert second != first and int(host.stamp.read_text()) == stamp
        assert (host.certs / f"{NAME}.crt").read_bytes() != (
            host.prefix / "etc" / "letsencrypt" / "live" / NAME / "fullchain.pem"
        ).read_bytes()  # nothing copied it yet
        # The timer's tick (cert-sync-now runs the same) copies with the installed script.
        rc, answer = ycommand_json(host.agent_url, "cert-sync-now")
        assert rc == 0 and answer["data"]["changed"] == 1, answer
        assert wait_for_serial(port, ctx, second, within=15) < 10
        status = cert_sync_status(host)
        # A stale stamp: the operator's hint that the hook stopped firing.
        assert status["deploy_hook_last_run"] == stamp < renewed_at
        assert old.echo(b"through both renewals\n") == b"through both renewals\n"
        old.close()
        print(
            f"\ncertbot renew took {renew_took:.2f} s; layer 2 served the renewed serial "
            f"{by_watch:.2f} s after it returned (the hook copies during certbot's run)"
        )
    finally:
        ycommand_json(host.agent_url, "kill-yuno yuno_name=echo_layer2", wait=30)
        kill_tree([pid])
