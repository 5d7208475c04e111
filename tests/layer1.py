"""Layer 1 test helpers: certbot-shaped lineages, the copy script and hook, pebble + certbot.

`Pebble` runs Debian's pebble on loopback with a certificate of its own for its HTTPS endpoint
and the environment that makes it deterministic (SPEC 8); `Certbot` drives the real certbot
against it with private config, work and logs directories. `as_host_root` runs a command in a
private mount namespace whose /etc is a copy, so a real `yuneta install` as root can create
the yuneta user and try sudo without touching this machine's /etc.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme
from certs import TestCA
from procs import ROOT, child_env, free_port, wait_port

COPY_CERTS = ROOT / "scripts" / "copy-certs.sh"
DEPLOY_HOOK = ROOT / "scripts" / "deploy-hook.sh"
TOOL_TIMEOUT = 120


# ---------------------------------------------------------------------------
#   Lineages in certbot's layout, without certbot
# ---------------------------------------------------------------------------


def make_lineage(ca: TestCA, le_dir: Path, name: str, n: int = 1) -> str:
    """Write archive/<name>/{cert,chain,fullchain,privkey}<n>.pem and point live/ at them.

    Links are relative, as certbot makes them. Returns the leaf's serial (upper-case hex).
    """
    archive, live = le_dir / "archive" / name, le_dir / "live" / name
    archive.mkdir(parents=True, exist_ok=True)
    live.mkdir(parents=True, exist_ok=True)
    os.chmod(le_dir / "live", 0o700)
    os.chmod(le_dir / "archive", 0o700)
    issued = ca.issue(archive / "tmp", name)
    fullchain = issued.cert_path.read_bytes()
    leaf_end = fullchain.index(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    files = {
        "cert": fullchain[:leaf_end],
        "chain": fullchain[leaf_end:],
        "fullchain": fullchain,
        "privkey": issued.key_path.read_bytes(),
    }
    shutil.rmtree(archive / "tmp")
    for kind, data in files.items():
        path = archive / f"{kind}{n}.pem"
        path.write_bytes(data)
        os.chmod(path, 0o600 if kind == "privkey" else 0o644)
        link = live / f"{kind}.pem"
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..") / ".." / "archive" / name / path.name)
    return issued.serial


def run_script(script: Path, env: dict[str, str], *prefix_argv: str) -> subprocess.CompletedProcess:
    """Run a shell script (optionally under a wrapper such as setpriv) with only `env` added."""
    full_env = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [*prefix_argv, str(script)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )


class Inotify:
    """The kernel's inotify, read directly: the order in which files land in a directory."""

    IN_MOVED_TO = 0x80
    IN_CLOSE_WRITE = 0x08

    def __init__(self, *dirs: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.dirs = {}
        for d in dirs:
            wd = self._libc.inotify_add_watch(
                self.fd, os.fsencode(d), self.IN_MOVED_TO | self.IN_CLOSE_WRITE
            )
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.dirs[wd] = d

    def landed(self) -> list[Path]:
        """Paths renamed into (or closed after writing in) the watched directories, in order."""
        out: list[Path] = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        pos = 0
        while pos < len(data):
            wd, _mask, _cookie, size = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16 : pos + 16 + size].rstrip(b"\0").decode()
            pos += 16 + size
            if not name.startswith("."):
                out.append(self.dirs[wd] / name)
        return out

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------
#   pebble and certbot
# ---------------------------------------------------------------------------


class Pebble:
    """Debian's pebble on 127.0.0.1 (free ports), deterministic, one process for all tests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # pebble ships no certificate for its own HTTPS endpoint: make one.
        tls_ca = trustme.CA()
        leaf = tls_ca.issue_cert("localhost", "127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(workdir / "pebble.pem"))
        self.tls_ca = workdir / "pebble-tls-ca.pem"
        tls_ca.cert_pem.write_to_path(str(self.tls_ca))
        self.port, self.mgmt_port = free_port(), free_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(workdir / "pebble.pem"),
                "privateKey": str(workdir / "pebble.pem"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (workdir / "pebble.json").write_text(json.dumps(config))
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Pebble:
        env = {
            **os.environ,
            "PEBBLE_VA_ALWAYS_VALID": "1",
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        with open(self.workdir / "pebble.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["pebble", "-config", str(self.workdir / "pebble.json")],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.workdir,
            )
        wait_port(self.port, proc=self.proc)
        wait_port(self.mgmt_port, proc=self.proc)
        return self

    def issuing_root(self) -> bytes:
        """The root pebble signs with (new at every start), from its management port."""
        ctx = ssl.create_default_context(cafile=str(self.tls_ca))
        url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=30) as answer:
            return answer.read()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Certbot:
    """The real certbot against `pebble`, with its own directories under `workdir`."""

    pebble: Pebble
    config_dir: Path
    workdir: Path

    def run(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {
            **os.environ,
            "REQUESTS_CA_BUNDLE": str(self.pebble.tls_ca),
            **(env or {}),
        }
        common = [
            "--non-interactive",
            "--config-dir",
            str(self.config_dir),
            "--work-dir",
            str(self.workdir / "certbot-work"),
            "--logs-dir",
            str(self.workdir / "certbot-logs"),
        ]
        proc = subprocess.run(
            ["certbot", *argv, *common],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
        assert proc.returncode == 0, f"certbot {argv[0]}: {proc.stdout}\n{proc.stderr}"
        return proc

    def certonly(self, name: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.run(
            "certonly",
            "--server",
            self.pebble.directory,
            "--agree-tos",
            "--register-unsafely-without-email",
            "--manual",
            "--manual-auth-hook",
            "/bin/true",
            "-d",
            name,
            *extra,
            env=env,
        )

    def renew(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.run("renew", "--force-renewal", "--no-random-sleep-on-renew", env=env)


# ---------------------------------------------------------------------------
#   Running as this host's root in a private /etc
# ---------------------------------------------------------------------------

_NAMESPACE_SETUP = """
set -e
mount --bind "$1" /etc
mount --bind "$2" /mnt
shift 2
exec "$@"
"""


def private_etc(workdir: Path) -> Path:
    """A copy of /etc for `as_host_root` (made once per workdir)."""
    etc = workdir / "etc-copy"
    if not etc.exists():
        subprocess.run(["cp", "-a", "/etc", str(etc)], check=True, timeout=TOOL_TIMEOUT)
    return etc


def as_host_root(
    workdir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run argv as root in a mount namespace: /etc is `workdir`/etc-copy, /mnt is `workdir`/mnt.

    The tree under /mnt stays in `workdir` for the test to inspect; every change to /etc
    (useradd, a sudoers drop-in) lands in the copy. /mnt is reachable by every user, which
    tmp_path (under a 0700 directory) is not.
    """
    etc, mnt = private_etc(workdir), workdir / "mnt"
    mnt.mkdir(exist_ok=True)
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            _NAMESPACE_SETUP,
            "ns",
            str(etc),
            str(mnt),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        env={**child_env(), **(env or {})},
    )


def yuneta_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "yuneta", *args]


def passwd_entry(etc: Path, user: str) -> list[str] | None:
    for line in (etc / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    return None
