"""Layer 2 end to end: a real agent keeps real yunos on the certificates of its store.

The agent runs `configs/agent.json` with a second `-f` pointing it at a temporary store
(the config variables `cert_sync_*`); yunos run `configs/echo-tls.json` launched by the
agent. A certificate is changed the way real tools do it and the test only looks at what a
TLS client is served: no `reload-certs` is ever sent by the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from certs import Issued, TestCA
from clients import wait_for
from procs import (
    CONFIGS,
    Agent,
    child_env,
    free_port,
    kill_tree,
    wait_port,
    write_json,
    ycommand,
)

ECHO = CONFIGS / "echo-tls.json"
DEBOUNCE = 0.2
TOKEN = "cert-sync-test-token"


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate a TLS client is served on 127.0.0.1:port (AA:BB:...)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest().upper()


def fingerprint(issued: Issued) -> str:
    from cryptography.hazmat.primitives import hashes

    return issued.cert.fingerprint(hashes.SHA256()).hex().upper()


class Prober:
    """Connects with a client that verifies the chain, over and over, in a thread: a
    listener serving a certificate with the wrong key fails the handshake."""

    def __init__(self, port: int, ca: TestCA) -> None:
        self.port, self.ctx = port, ca.client_context()
        self.seen: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
                    with self.ctx.wrap_socket(raw) as s:
                        der = s.getpeercert(binary_form=True)
                        self.seen.append(hashlib.sha256(der).hexdigest().upper())
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


# ---------------------------------------------------------------------------
# Store layouts and the ways tools change them
# ---------------------------------------------------------------------------


@dataclass
class Layout:
    """Where the agent's store is, what the yunos load, and how a new pair lands there."""

    root: Path
    kind: str
    store: Path = field(init=False)
    cert: Path = field(init=False)
    key: Path = field(init=False)
    generation: int = 0

    def __post_init__(self) -> None:
        if self.kind == "kubernetes":
            self.store = self.root / "secret"
            self.cert, self.key = self.store / "tls.crt", self.store / "tls.key"
        elif self.kind.startswith("certbot"):
            self.store = self.root / "letsencrypt" / "live" / "example.test"
            self.cert, self.key = self.store / "fullchain.pem", self.store / "privkey.pem"
        else:
            self.store = self.root / "store"
            self.cert, self.key = self.store / "one.crt", self.store / "private" / "one.key"

    def install(self, issued: Issued, first: bool = False) -> None:
        """Put `issued` in place as the tool named by `kind` would."""
        cert, key = issued.cert_path.read_bytes(), issued.key_path.read_bytes()
        self.generation += 1
        if first or self.kind == "atomic-rename":
            for path, data in ((self.key, key), (self.cert, cert)):
                if self.kind == "kubernetes" or self.kind.startswith("certbot"):
                    break
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            else:
                return
        if self.kind == "install-C":
            for path, data, mode in ((self.key, key, "0600"), (self.cert, cert, "0644")):
                src = self.root / f"incoming{path.suffix}"
                src.write_bytes(data)
                subprocess.run(["install", "-C", "-m", mode, src, path], check=True)
        elif self.kind == "rewrite-in-place":
            for path, data in ((self.key, key), (self.cert, cert)):
                with open(path, "wb") as f:  # truncate, write in two parts, close
                    f.write(data[: len(data) // 2])
                    f.flush()
                    time.sleep(DEBOUNCE * 2)
                    f.write(data[len(data) // 2 :])
        elif self.kind == "kubernetes":
            self._secret_swap(cert, key)
        elif self.kind.startswith("certbot"):
            self._certbot_renew(cert, key, key_first=self.kind.endswith("key-first"))

    def _secret_swap(self, cert: bytes, key: bytes) -> None:
        data_dir = self.store / f"..2026_11_30_{self.generation:02d}"
        data_dir.mkdir(parents=True)
        (data_dir / "tls.crt").write_bytes(cert)
        (data_dir / "tls.key").write_bytes(key)
        link = self.store / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        os.symlink(data_dir.name, self.store / "..data_tmp")
        os.rename(self.store / "..data_tmp", link)
        for name in ("tls.crt", "tls.key"):
            if not (self.store / name).is_symlink():
                os.symlink(f"..data/{name}", self.store / name)
        if old:
            subprocess.run(["rm", "-rf", str(self.store / old)], check=True)

    def _certbot_renew(self, cert: bytes, key: bytes, key_first: bool) -> None:
        archive = self.root / "letsencrypt" / "archive" / "example.test"
        archive.mkdir(parents=True, exist_ok=True)
        self.store.mkdir(parents=True, exist_ok=True)
        n = self.generation
        (archive / f"fullchain{n}.pem").write_bytes(cert)
        (archive / f"privkey{n}.pem").write_bytes(key)
        names = ["privkey", "fullchain"] if key_first else ["fullchain", "privkey"]
        for name in names:  # one link at a time, with ticks in between
            tmp = self.store / f"{name}.pem.new"
            os.symlink(f"../../archive/example.test/{name}{n}.pem", tmp)
            os.rename(tmp, self.store / f"{name}.pem")
            time.sleep(DEBOUNCE * 4)


# ---------------------------------------------------------------------------
# The agent and its yunos
# ---------------------------------------------------------------------------


class SyncAgent:
    """A real agent on a temporary store, and the yunos it launched."""

    def __init__(
        self,
        tmp: Path,
        store: Path,
        watch: bool = True,
        copy_cmd: str = "",
        tls: tuple[TestCA, Path, Path] | None = None,
        **global_kw: object,
    ) -> None:
        self.tmp = tmp
        self.stamp = tmp / "last-deploy-hook-run"
        self.agent = Agent(tmp)
        self.options: list[str] = []
        self.yunos: dict[str, tuple[int, int]] = {}  # name -> (port, pid)
        override = json.loads(self.agent.override.read_text())
        override["__json_config_variables__"].update(
            cert_sync_store_dir=str(store),
            cert_sync_copy_cmd=copy_cmd,
            cert_sync_watch=watch,
        )
        override["global"] = {
            "agent.cert_sync_debounce_sec": DEBOUNCE,
            "agent.cert_sync_stamp_file": str(self.stamp),
            **global_kw,
        }
        if tls is not None:  # the agent's own port is wss:// with these files
            ca, cert, key = tls
            self.agent.url = f"wss://127.0.0.1:{self.agent.port}"
            override["__json_config_variables__"]["agent_url"] = self.agent.url
            override["global"]["C_IEVENT_SRV.crypto"] = {
                "ssl_certificate": str(cert),
                "ssl_certificate_key": str(key),
            }
            override["global"]["C_IEVENT_SRV.auth_tokens"] = [TOKEN]
            cafile = ca.write_ca(tmp / "ca.pem")
            self.options = ["--cafile", str(cafile), "-t", TOKEN]
        write_json(self.agent.override, override)

    @property
    def url(self) -> str:
        return self.agent.url

    def start(self) -> SyncAgent:
        self.agent.start()
        return self

    def cmd(self, command: str, wait: float = 30.0) -> dict:
        """The envelope of `ycommand --json -c command` (the last one)."""
        proc = ycommand(self.url, "-c", command, wait=wait, extra=["--json", *self.options])
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no answer: rc={proc.returncode} {proc.stdout!r} {proc.stderr!r}"
        return json.loads(lines[-1])

    def status(self) -> dict:
        answer = self.cmd("cert-sync-status")
        assert answer["result"] == 0, answer
        return answer["data"]

    def run_yuno(self, name: str, cert: Path, key: Path, **kw_global: object) -> int:
        port = free_port()
        override = {
            "__json_config_variables__": {
                "yuno_name": name,
                "url": f"tcps://127.0.0.1:{port}",
                "ssl_certificate": str(cert),
                "ssl_certificate_key": str(key),
                "work_dir": str(self.tmp / name),
            }
        }
        if kw_global:
            override["global"] = {f"echo_tls.{k}": v for k, v in kw_global.items()}
        path = write_json(self.tmp / f"{name}.json", override)
        answer = self.cmd(f"run-yuno config={ECHO},{path} wait=20", wait=40)
        assert answer["result"] == 0, answer
        wait_port(port, timeout=30)
        self.yunos[name] = (port, answer["data"][0]["pid"])
        return port

    def stop(self) -> None:
        for _port, pid in self.yunos.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kill_tree([pid for _port, pid in self.yunos.values()])
        self.agent.stop()

    def ticks(self) -> list[dict]:
        return [r for r in self.agent.log_lines() if r.get("msg") == "cert-sync tick"]


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def make_agent(tmp_path) -> Iterator[Callable[..., SyncAgent]]:
    made: list[SyncAgent] = []

    def make(store: Path, **kw: Any) -> SyncAgent:
        agent = SyncAgent(tmp_path, store, **kw).start()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
    # nothing of ours may hold a key in a log
    for log in tmp_path.rglob("*.log"):
        assert "PRIVATE KEY" not in log.read_text()


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

LAYOUTS = [
    "atomic-rename",
    "install-C",
    "rewrite-in-place",
    "kubernetes",
    "certbot-cert-first",
    "certbot-key-first",
]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_a_certificate_changed_in_the_store_is_served_with_no_command_sent(
    tmp_path, ca, make_agent, kind
):
    layout = Layout(tmp_path, kind)
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store)
    port = agent.run_yuno("echo1", layout.cert, layout.key)
    assert served_fingerprint(port) == fingerprint(old)
    wait_for(lambda: agent.status()["watching"] == [str(layout.store)], timeout=10)

    prober = Prober(port, ca)
    try:
        layout.install(new)
        wait_for(lambda: served_fingerprint(port) == fingerprint(new), timeout=20)
        time.sleep(0.2)
    finally:
        prober.close()
    # no client ever met a certificate with the wrong key, nor anything but old or new
    assert prober.failures == []
    assert set(prober.seen) <= {fingerprint(old), fingerprint(new)}
    assert fingerprint(new) in prober.seen

    # the tick that did it is one JSON line naming the file and both fingerprints (written
    # just after its last reload; a later tick may find everything in sync: "no-change")
    def reloaded_ticks() -> list[dict]:
        return [t for t in agent.ticks() if any(r["action"] == "reloaded" for r in t["listeners"])]

    reloaded = wait_for(reloaded_ticks, timeout=10)
    assert reloaded[-1]["trigger"] == "watch"
    status = agent.status()
    assert status["lagging"] == [] and status["last_action"] > 0
    row = next(r for r in reloaded[-1]["listeners"] if r["action"] == "reloaded")
    assert row["gobj"] == "echo_tls" and row["yuno"] == "echo_tls^echo1"
    assert row["new_fingerprint"].replace(":", "") == fingerprint(new)


def test_with_the_watch_off_cert_sync_now_picks_up_the_change(tmp_path, ca, make_agent):
    layout = Layout(tmp_path, "atomic-rename")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store, watch=False)
    port = agent.run_yuno("echo1", layout.cert, layout.key)
    status = agent.status()
    assert status["watching"] == [] and status["watch_note"] == "off: cert_sync_watch is 0"
    assert status["enabled"] is True and status["interval_sec"] == 900
    assert 850 < status["next_check"] - time.time() <= 900
    assert status["deploy_hook_last_run"] == 0  # no stamp yet
    agent.stamp.write_text("1764460800\n")
    assert agent.status()["deploy_hook_last_run"] == 1764460800

    layout.install(new)
    time.sleep(DEBOUNCE * 5)
    assert served_fingerprint(port) == fingerprint(old)  # nobody watches

    answer = agent.cmd("cert-sync-now")
    assert answer["result"] == 0 and answer["comment"] == "cert-sync tick done: reloaded"
    data = answer["data"]
    assert data["result"] == "reloaded" and data["changed"] == 1
    assert data["store_dir"] == str(layout.store)
    assert {c["file"] for c in data["changed_files"]} == {"one.crt", "private/one.key"}
    cert_change = next(c for c in data["changed_files"] if c["file"] == "one.crt")
    assert cert_change["new_fingerprint"].replace(":", "") == fingerprint(new)
    assert "old_fingerprint" not in next(
        c for c in data["changed_files"] if c["file"].endswith(".key")
    )
    echo = next(y for y in data["yunos"] if y["yuno"] == "echo_tls^echo1")
    assert echo["listeners"][0]["action"] == "reloaded"
    assert served_fingerprint(port) == fingerprint(new)

    again = agent.cmd("cert-sync-now")
    assert again["comment"] == "cert-sync tick done: no change"
    assert again["data"]["result"] == "no-change" and again["data"]["changed"] == 0
    status = agent.status()
    assert (
        status["last_result"] == "no-change" and status["last_check"] >= status["last_action"] > 0
    )


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_copy_command_failures_are_told_apart_counted_and_never_block_the_agent(
    tmp_path, ca, make_agent
):
    layout = Layout(tmp_path, "atomic-rename")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store, watch=False)
    port = agent.run_yuno("echo1", layout.cert, layout.key)

    def now(copy_cmd: str) -> dict:
        assert agent.cmd(f"write-attr attr_name=cert_sync_copy_cmd value={copy_cmd}")["result"] == 0
        answer = agent.cmd("cert-sync-now")
        assert answer["result"] == 0, answer
        return answer["data"]

    failing = now(script(tmp_path / "fail.sh", "echo cannot copy >&2; exit 3"))
    assert failing["result"] == "copy-script-failed" and failing["changed"] == 0
    assert failing["copy"]["outcome"] == "failed" and failing["copy"]["exit_code"] == 3
    assert "cannot copy" in failing["copy"]["output"]
    assert agent.status()["failures"] == 1

    missing = now(str(tmp_path / "no-such-copy-certs.sh"))
    assert missing["result"] == "copy-script-failed"
    assert missing["copy"]["outcome"] == "not-found"
    assert agent.status()["failures"] == 2

    # A hang past the timeout: the agent keeps answering, then kills the process group.
    assert agent.cmd("write-attr attr_name=cert_sync_copy_timeout_sec value=6")["result"] == 0
    # a child in its group; a duration no other run of this test uses, to find them by
    naptime = f"47.{os.getpid()}{time.monotonic_ns() % 1000:03d}"
    hang = script(tmp_path / "hang.sh", f"sleep {naptime} & sleep {naptime}")
    assert agent.cmd(f"write-attr attr_name=cert_sync_copy_cmd value={hang}")["result"] == 0
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yuneta.ycommand",
            "-u",
            agent.url,
            "-w",
            "30",
            "--json",
            "-c",
            "cert-sync-now",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        wait_for(lambda: agent.status()["running"], timeout=10)
        listed = agent.cmd("list-yunos", wait=5)
        assert listed["result"] == 0 and listed["data"][0]["yuno_name"] == "echo1"
        assert agent.status()["running"]  # answered while the copy still hangs
        out, _ = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    hung = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])["data"]
    assert hung["copy"]["outcome"] == "timeout" and hung["result"] == "copy-script-failed"
    status = agent.status()
    assert status["failures"] == 3 and status["last_copy"]["outcome"] == "timeout"
    survivors = subprocess.run(["pgrep", "-f", f"sleep {naptime}"], capture_output=True, text=True)
    assert survivors.stdout.strip() == ""  # the whole group is gone

    # A copy that brings a new certificate and still exits non-zero: reloaded, with the error.
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "one.crt").write_bytes(new.cert_path.read_bytes())
    (staged / "one.key").write_bytes(new.key_path.read_bytes())
    copy = script(
        tmp_path / "copy.sh",
        f"install -C {staged / 'one.key'} {layout.key} && install -C {staged / 'one.crt'} "
        f"{layout.cert}; exit 1",
    )
    brought = now(copy)
    assert brought["result"] == "reloaded (copy script reported error)" and brought["changed"] == 1
    assert served_fingerprint(port) == fingerprint(new)
    assert agent.status()["failures"] == 3  # counted only when nothing changed

    works = now(script(tmp_path / "ok.sh", "exit 0"))
    assert works["result"] == "no-change" and works["copy"]["outcome"] == "ok"
    # one log line per tick: the baseline at start and the yuno's arrival (no copy), then
    # each cert-sync-now
    outcomes = [(t["trigger"], t["copy"]["outcome"]) for t in agent.ticks()]
    assert outcomes == [
        ("start", "skipped"),
        ("connect", "skipped"),
        *[("now", o) for o in ("failed", "not-found", "timeout", "failed", "ok")],
    ]


def test_a_stopped_yuno_gets_the_new_certificate_after_sigcont_with_no_further_change(
    tmp_path, ca, make_agent
):
    layout = Layout(tmp_path, "atomic-rename")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store)
    assert agent.cmd("write-attr attr_name=command_timeout value=2")["result"] == 0
    running = agent.run_yuno("running", layout.cert, layout.key)
    stopped = agent.run_yuno("stopped", layout.cert, layout.key)
    wait_for(lambda: agent.status()["watching"], timeout=10)
    os.kill(agent.yunos["stopped"][1], signal.SIGSTOP)
    try:
        layout.install(new)
        wait_for(lambda: served_fingerprint(running) == fingerprint(new), timeout=20)
        listed = agent.cmd("list-yunos", wait=5)
        assert {y["yuno_name"] for y in listed["data"]} == {"running", "stopped"}
        lagging = wait_for(lambda: agent.status()["lagging"], timeout=20)
        assert [(lag["yuno"], lag["gobj"]) for lag in lagging] == [("echo_tls^stopped", "*")]
        assert "No answer within 2 s" in lagging[0]["reason"]
    finally:
        os.kill(agent.yunos["stopped"][1], signal.SIGCONT)
    wait_for(lambda: served_fingerprint(stopped) == fingerprint(new), timeout=30)
    wait_for(lambda: agent.status()["lagging"] == [], timeout=30)


def test_a_bad_new_certificate_leaves_every_listener_on_the_old_one_and_says_why(
    tmp_path, ca, make_agent
):
    layout = Layout(tmp_path, "atomic-rename")
    old = ca.issue(tmp_path / "a", "old")
    layout.install(old, first=True)
    agent = make_agent(layout.store)
    ports = [agent.run_yuno(name, layout.cert, layout.key) for name in ("one", "two")]
    wait_for(lambda: agent.status()["watching"], timeout=10)
    prober = Prober(ports[0], ca)
    try:
        # a new certificate whose key never arrives: first retried, then a failure
        stray = ca.issue(tmp_path / "c", "stray")
        tmp = layout.cert.with_name(".tmp")
        tmp.write_bytes(stray.cert_path.read_bytes())
        os.replace(tmp, layout.cert)
        lagging = wait_for(
            lambda: len(agent.status()["lagging"]) == 2 and agent.status()["lagging"], timeout=30
        )
    finally:
        prober.close()
    assert {(lag["yuno"], lag["gobj"]) for lag in lagging} == {
        ("echo_tls^one", "echo_tls"),
        ("echo_tls^two", "echo_tls"),
    }
    for lag in lagging:
        assert (lag["yuno_role"], lag["since"] > 0) == ("echo_tls", True)
        assert "private key does not match certificate" in lag["reason"]
        assert lag["served_fingerprint"].replace(":", "") == fingerprint(old)
    assert [served_fingerprint(p) for p in ports] == [fingerprint(old)] * 2
    assert prober.failures == [] and set(prober.seen) == {fingerprint(old)}
    failed = [r for t in agent.ticks() for r in t["listeners"] if r["action"] == "failed"]
    assert failed and failed[0]["attempts"] == 5  # retried, bounded
    # the agent keeps at it (later ticks try again) and the status keeps saying why
    wait_for(lambda: any(t["trigger"] == "retry" for t in agent.ticks()), timeout=20)
    assert len(agent.status()["lagging"]) == 2
    # the right certificate arrives: everyone catches up, nobody lags any more
    layout.install(old)
    wait_for(lambda: agent.status()["lagging"] == [], timeout=20)
    assert [served_fingerprint(p) for p in ports] == [fingerprint(old)] * 2


def test_a_store_created_after_the_agent_started_is_watched_once_it_exists(
    tmp_path, ca, make_agent
):
    layout = Layout(tmp_path / "late", "atomic-rename")
    agent = make_agent(layout.store)
    status = agent.status()
    assert status["watching"] == []
    assert status["watch_note"] == f"waiting for {layout.store} to exist (watching {tmp_path})"
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)  # creates the store
    wait_for(lambda: agent.status()["watching"] == [str(layout.store)], timeout=10)
    assert agent.status()["watch_note"] == ""
    port = agent.run_yuno("echo1", layout.cert, layout.key)
    layout.install(new)
    wait_for(lambda: served_fingerprint(port) == fingerprint(new), timeout=20)


def test_cert_sync_attributes_persist_take_effect_at_once_and_keep_their_floor(
    tmp_path, make_agent
):
    store = tmp_path / "store"
    store.mkdir()
    agent = make_agent(store)
    assert agent.status()["watching"] == [str(store)]
    refused = agent.cmd("write-attr attr_name=cert_sync_interval_sec value=10")
    assert refused["result"] == -1 and "at least 30 seconds" in refused["comment"]
    other = tmp_path / "other"
    other.mkdir()
    for name, value in (
        ("cert_sync_interval_sec", 120),
        ("cert_sync_store_dir", str(other)),
        ("cert_sync_copy_cmd", "/bin/true"),
        ("cert_sync_copy_timeout_sec", 7),
    ):
        assert agent.cmd(f"write-attr attr_name={name} value={value}")["result"] == 0
    status = agent.status()  # at once: the watch moved, the timer re-armed
    assert status["watching"] == [str(other)] and 100 < status["next_check"] - time.time() <= 120
    assert agent.cmd("write-attr attr_name=cert_sync_watch value=0")["result"] == 0
    assert agent.status()["watch_note"] == "off: cert_sync_watch is 0"

    agent.agent.stop()
    agent.agent.start()
    status = agent.status()
    assert (status["interval_sec"], status["store_dir"], status["copy_cmd"]) == (
        120,
        str(other),
        "/bin/true",
    )
    assert status["copy_timeout_sec"] == 7 and status["watch_note"] == "off: cert_sync_watch is 0"
    assert agent.cmd("write-attr attr_name=cert_sync_enabled value=0")["result"] == 0
    assert agent.status()["next_check"] == 0 and agent.status()["enabled"] is False


def test_cert_watch_on_a_yuno_without_an_agent_reloads_from_a_data_swap(tmp_path, ca):
    layout = Layout(tmp_path, "kubernetes")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    port = free_port()
    override = write_json(
        tmp_path / "pod.json",
        {
            "__json_config_variables__": {
                "yuno_name": "pod",
                "url": f"tcps://127.0.0.1:{port}",
                "ssl_certificate": str(layout.cert),
                "ssl_certificate_key": str(layout.key),
                "work_dir": str(tmp_path / "pod"),
            },
            "global": {"echo_tls.cert_watch": True, "echo_tls.cert_watch_debounce": DEBOUNCE},
        },
    )
    log = open(tmp_path / "pod.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "yuneta", "run", "-f", str(ECHO), "-f", str(override)],
        stdout=log,
        stderr=log,
        env=child_env(),
    )
    try:
        wait_port(port, proc=proc)
        assert served_fingerprint(port) == fingerprint(old)
        layout.install(new)
        wait_for(lambda: served_fingerprint(port) == fingerprint(new), timeout=20)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
    lines = [
        json.loads(line)
        for line in (tmp_path / "pod.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(r["msg"] == "watching certificate files" for r in lines)
    assert any(r["msg"] == "TLS certificates reloaded" for r in lines)


def test_the_agents_own_wss_port_is_converged_too(tmp_path, ca, make_agent):
    layout = Layout(tmp_path, "atomic-rename")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store, tls=(ca, layout.cert, layout.key))
    assert served_fingerprint(agent.agent.port) == fingerprint(old)
    wait_for(lambda: agent.status()["watching"] == [str(layout.store)], timeout=10)
    layout.install(new)
    wait_for(lambda: served_fingerprint(agent.agent.port) == fingerprint(new), timeout=20)

    def reloaded() -> list[dict]:  # the tick's line comes just after its last reload
        return [r for t in agent.ticks() for r in t["listeners"] if r["action"] == "reloaded"]

    rows = wait_for(reloaded, timeout=10)
    # (a loaded machine may split the key's and the certificate's renames into two ticks)
    assert {(r["yuno"], r["gobj"]) for r in rows} == {("yuneta_agent^agent", "__input_side__")}


def test_cert_watch_on_the_agents_wss_port_reloads_it_without_cert_sync(tmp_path, ca, make_agent):
    layout = Layout(tmp_path, "kubernetes")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(
        tmp_path / "unused-store",
        tls=(ca, layout.cert, layout.key),
        **{"agent.cert_sync_enabled": False, "C_IEVENT_SRV.cert_watch": True},
    )
    assert agent.status()["watch_note"] == "off: cert_sync_enabled is 0"
    assert served_fingerprint(agent.agent.port) == fingerprint(old)
    layout.install(new)
    wait_for(lambda: served_fingerprint(agent.agent.port) == fingerprint(new), timeout=20)
    assert agent.ticks() == []  # the listener did it by itself


def test_a_yuno_left_behind_while_the_agent_was_down_is_converged_when_it_reconnects(
    tmp_path, ca, make_agent
):
    layout = Layout(tmp_path, "atomic-rename")
    old, new = ca.issue(tmp_path / "a", "old"), ca.issue(tmp_path / "b", "new")
    layout.install(old, first=True)
    agent = make_agent(layout.store)
    port = agent.run_yuno("echo1", layout.cert, layout.key)
    agent.agent.stop()  # the yuno keeps running and keeps serving
    layout.install(new)  # nobody watches now
    time.sleep(DEBOUNCE * 3)
    assert served_fingerprint(port) == fingerprint(old)
    agent.agent.start()
    wait_for(lambda: served_fingerprint(port) == fingerprint(new), timeout=30)
    assert agent.status()["lagging"] == []


# ----- the copy command itself (real subprocesses, no agent) ---------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_daemon_holding_the_copy_output_ends_in_a_timeout_that_says_so_and_leaks_no_pipe(
    tmp_path: Path,
) -> None:
    """The command exits 0 but leaves a daemon (its own session, so the group kill misses
    it) holding its output: still copying as far as the agent can tell, so the time limit
    ends it, with a reason that says what happened, and the agent's end of the pipe is closed
    rather than left open as long as the daemon lives."""
    import asyncio

    from gclasses.cert_sync import run_copy

    pidfile = tmp_path / "daemon.pid"
    script = f"echo copied; setsid sleep 60 & echo $! > {pidfile}; exit 0"

    async def copy_then_settle() -> dict:
        result = await run_copy(["sh", "-c", script], timeout=2)
        await asyncio.sleep(0.3)  # a pipe closed late would still be open now
        return result

    before = _open_fds()
    try:
        result = asyncio.run(copy_then_settle())
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert result["outcome"] == "timeout" and result["exit_code"] is None
    assert result["output"] == (
        "exited 0, but something it started held its output open past 2 s: process group killed"
    )
    assert result["seconds"] < 10
    assert _open_fds() == before


def test_a_copy_command_keeps_the_tail_of_a_long_output_and_its_exit_code() -> None:
    import asyncio

    from gclasses.cert_sync import OUTPUT_TAIL, run_copy

    script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; exit 3"
    result = asyncio.run(run_copy(["sh", "-c", script], timeout=30))
    assert (result["outcome"], result["exit_code"]) == ("failed", 3)
    assert result["output"].endswith("line-1999") and len(result["output"]) <= OUTPUT_TAIL
    missing = asyncio.run(run_copy(["/nonexistent/copy-certs"], timeout=5))
    assert missing["outcome"] == "not-found" and "no such file" in missing["output"]
