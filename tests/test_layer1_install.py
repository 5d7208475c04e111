"""`yuneta install` / `uninstall`, for real.

As root (CI) every install runs in a private mount namespace whose /etc is a copy: useradd
really creates the yuneta user there, sudo really reads the drop-in, and this machine's /etc
never changes. The installed tree lives in the test's directory, mounted at /mnt inside.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from certs import TestCA
from layer1 import as_host_root, make_lineage, passwd_entry, private_etc, yuneta_argv
from procs import child_env, free_port, wait_port, ycommand_json

ROOT_RUN = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT_RUN, reason="a real install needs root")
# As root, installs run only in a private mount namespace (else useradd would change this
# machine's /etc): where the kernel refuses one, no root install can be tested here.
if ROOT_RUN and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
    pytestmark = pytest.mark.skip(reason="as root, but unshare --mount is refused here")


def install(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `yuneta ARGS --prefix P` for real; (the process, P as seen from this test)."""
    if "--metrics-port" not in args:  # 1992 may be taken: other suites run beside this one
        args = (*args, "--metrics-port", "0")
    if ROOT_RUN:
        proc = as_host_root(tmp_path, *yuneta_argv(*args, "--prefix", "/mnt/p"))
        return proc, tmp_path / "mnt" / "p"
    prefix = tmp_path / "p"
    proc = subprocess.run(
        yuneta_argv(*args, "--prefix", str(prefix)),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    return proc, prefix


def snapshot(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(d))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@needs_root
def test_install_as_root_creates_the_user_and_the_spec_tree_and_a_second_run_changes_nothing(
    tmp_path,
):
    first, prefix = install(tmp_path, "install")
    assert first.returncode == 0, first.stderr
    assert "create user yuneta" in first.stdout

    user = passwd_entry(private_etc(tmp_path), "yuneta")
    assert user is not None and user[6] == "/usr/sbin/nologin"
    assert passwd_entry(Path("/etc"), "yuneta") is None  # this machine's /etc is untouched
    uid, gid = int(user[2]), int(user[3])
    certs = prefix / "yuneta" / "store" / "certs"
    expected = {  # path: (uid, gid, mode)
        certs: (0, 0, 0o755),
        certs / "private": (uid, gid, 0o700),
        certs / "copy-certs.sh": (0, 0, 0o755),
        prefix / "etc/letsencrypt/renewal-hooks/deploy/reload-certs": (0, 0, 0o755),
        prefix / "etc/sudoers.d/90-yuneta": (0, 0, 0o440),
        prefix / "etc/systemd/system/yuneta-agent.service": (0, 0, 0o644),
        prefix / "yuneta/agent/agent.json": (0, 0, 0o644),
        prefix / "yuneta/agent/work": (uid, gid, 0o750),
        prefix / "var/lib/yuneta": (0, 0, 0o755),
        prefix / "var/log/yuneta": (0, 0, 0o755),
    }
    for path, (o_uid, o_gid, o_mode) in expected.items():
        st = path.lstat()
        assert (st.st_uid, st.st_gid, mode(path)) == (o_uid, o_gid, o_mode), path
    before = snapshot(prefix)
    time.sleep(0.05)

    second, _ = install(tmp_path, "install")

    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith(("create", "write"))]
    assert snapshot(prefix) == before


@needs_root
def test_the_installed_copy_script_gives_certbot_lineages_to_the_yuneta_user(tmp_path):
    proc, prefix = install(tmp_path, "install")
    assert proc.returncode == 0, proc.stderr
    make_lineage(TestCA(), prefix / "etc" / "letsencrypt", "example.test")

    # No YUNETA_* variables: the installed script carries its prefix and owner.
    run = as_host_root(tmp_path, "/mnt/p/yuneta/store/certs/copy-certs.sh")

    assert run.returncode == 0, run.stderr
    uid = int(passwd_entry(private_etc(tmp_path), "yuneta")[2])
    certs = prefix / "yuneta" / "store" / "certs"
    for path, want in (
        (certs / "example.test.crt", 0o644),
        (certs / "private/example.test.key", 0o600),
    ):
        assert (path.stat().st_uid, mode(path)) == (uid, want)


@needs_root
@pytest.mark.skipif(not shutil.which("visudo"), reason="no visudo")
def test_the_sudoers_drop_in_lets_yuneta_run_the_copy_script_and_nothing_else(tmp_path):
    proc, prefix = install(tmp_path, "install")
    assert proc.returncode == 0, proc.stderr
    drop_in = prefix / "etc" / "sudoers.d" / "90-yuneta"
    check = subprocess.run(["visudo", "-cf", str(drop_in)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = [r for r in drop_in.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules == ['yuneta ALL=(root) NOPASSWD: /mnt/p/yuneta/store/certs/copy-certs.sh ""']
    make_lineage(TestCA(), prefix / "etc" / "letsencrypt", "example.test")
    script = "/mnt/p/yuneta/store/certs/copy-certs.sh"
    as_yuneta = ["runuser", "-u", "yuneta", "--"]
    steps = " ; ".join(
        [
            "cp /mnt/p/etc/sudoers.d/90-yuneta /etc/sudoers.d/",
            f"{' '.join(as_yuneta)} sudo -n {script} >/dev/null; echo copy=$?",
            f"{' '.join(as_yuneta)} sudo -n /bin/true 2>/dev/null; echo other=$?",
            f"{' '.join(as_yuneta)} sudo -n {script} --evil 2>/dev/null; echo args=$?",
            f"{' '.join(as_yuneta)} env YUNETA_CERTS_DIR=/mnt/evil sudo -n {script} >/dev/null;"
            " echo env=$?",
            f"{' '.join(as_yuneta)} setpriv --no-new-privs sudo -n {script} 2>/dev/null;"
            " echo nnp=$?",
        ]
    )

    run = as_host_root(tmp_path, "bash", "-c", steps)

    answers = dict(line.split("=") for line in run.stdout.split() if "=" in line)
    assert answers == {"copy": "0", "other": "1", "args": "1", "env": "0", "nnp": "1"}, run
    assert (prefix / "yuneta/store/certs/example.test.crt").exists()
    assert not (tmp_path / "mnt" / "evil").exists()  # sudo's env_reset dropped the variable
    # With no_new_privs sudo cannot work: why the unit leaves NoNewPrivileges off.
    unit = (prefix / "etc/systemd/system/yuneta-agent.service").read_text()
    assert "NoNewPrivileges=yes" not in unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_the_agent_unit_passes_systemd_analyze_verify_and_is_hardened(tmp_path):
    proc, prefix = install(tmp_path, "install")
    assert proc.returncode == 0, proc.stderr
    unit = prefix / "etc/systemd/system/yuneta-agent.service"

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert verify.returncode == 0 and not verify.stdout + verify.stderr, verify
    lines = set(unit.read_text().splitlines())
    user = "yuneta" if ROOT_RUN else os.environ.get("USER", "")
    certs = "/mnt/p/yuneta/store/certs" if ROOT_RUN else str(prefix / "yuneta/store/certs")
    for want in ("Restart=on-failure", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert want in lines
    assert any(certs in x.removeprefix("ReadWritePaths=").split() for x in lines)
    if ROOT_RUN:
        assert f"User={user}" in lines
    assert "StandardError=journal" in lines


def test_dry_run_prints_every_action_of_the_real_run_and_changes_nothing(tmp_path):
    dry, prefix = install(tmp_path, "install", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (prefix / "yuneta").exists()

    real, _ = install(tmp_path, "install")

    assert real.returncode == 0, real.stderr
    actions = [
        line
        for line in real.stdout.splitlines()
        if line.split(" ", 1)[0] in ("create", "write", "fix", "update")
    ]
    assert len(actions) >= 15
    assert [f"would {a}" for a in actions] == [
        line
        for line in dry.stdout.splitlines()
        if line.startswith("would ") and "change" not in line
    ]


def test_the_installed_agent_config_starts_an_agent_that_answers(tmp_path):
    port, metrics_port = free_port(), free_port()
    proc, prefix = install(
        tmp_path,
        "install",
        "--agent-url",
        f"ws://127.0.0.1:{port}",
        "--metrics-port",
        str(metrics_port),
    )
    assert proc.returncode == 0, proc.stderr
    config = prefix / "yuneta" / "agent" / "agent.json"
    agent = subprocess.Popen(
        yuneta_argv("run", "-f", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        cwd=tmp_path,
    )
    try:
        wait_port(port, proc=agent)
        rc, answer = ycommand_json(f"ws://127.0.0.1:{port}", "list-yunos")
        assert rc == 0 and answer["result"] == 0, answer
        rc, status = ycommand_json(f"ws://127.0.0.1:{port}", "cert-sync-status")
        assert rc == 0, status
        inside = "/mnt/p" if ROOT_RUN else str(prefix)  # the paths the installed files name
        assert status["data"]["store_dir"] == f"{inside}/yuneta/store/certs"
        copy_script = f"{inside}/yuneta/store/certs/copy-certs.sh"
        want = f"{shutil.which('sudo')} -n {copy_script}" if ROOT_RUN else copy_script
        assert status["data"]["copy_cmd"] == want
        wait_port(metrics_port, proc=agent)
    finally:
        agent.terminate()
        agent.wait(20)


def test_uninstall_removes_what_install_wrote_and_keeps_certificates_and_state(tmp_path):
    proc, prefix = install(tmp_path, "install")
    assert proc.returncode == 0, proc.stderr
    certs = prefix / "yuneta" / "store" / "certs"
    (certs / "example.test.crt").write_text("a certificate\n")
    (certs / "private" / "example.test.key").write_text("a key\n")
    stamp = prefix / "var/lib/yuneta/last-deploy-hook-run"
    stamp.write_text("1700000000\n")

    first, _ = install(tmp_path, "uninstall")
    second, _ = install(tmp_path, "uninstall")

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for gone in (
        certs / "copy-certs.sh",
        prefix / "etc/letsencrypt/renewal-hooks/deploy/reload-certs",
        prefix / "etc/sudoers.d/90-yuneta",
        prefix / "etc/systemd/system/yuneta-agent.service",
        prefix / "yuneta/agent/agent.json",
    ):
        assert not gone.exists(), gone
    assert (certs / "example.test.crt").read_text() == "a certificate\n"
    assert (certs / "private" / "example.test.key").read_text() == "a key\n"
    assert stamp.read_text() == "1700000000\n"
    assert "nothing to do" in second.stdout


def test_uninstall_keeps_an_agent_config_edited_since_install(tmp_path):
    install(tmp_path, "install")
    _, prefix = install(tmp_path, "install")
    config = prefix / "yuneta" / "agent" / "agent.json"
    config.write_text(config.read_text().replace('"agent"', '"edited"'))

    proc, _ = install(tmp_path, "uninstall")

    assert config.exists() and "keep   /" in proc.stdout


def test_a_relative_prefix_is_one_line_error(tmp_path):
    proc = subprocess.run(
        yuneta_argv("install", "--prefix", "relative/dir", "--dry-run"),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "yuneta install: --prefix relative/dir: must be an absolute path"


@needs_root
def test_the_installed_hook_copies_stamps_and_runs_ycommand_as_the_yuneta_user(tmp_path):
    proc, prefix = install(tmp_path, "install")
    assert proc.returncode == 0, proc.stderr
    make_lineage(TestCA(), prefix / "etc" / "letsencrypt", "example.test")
    # Stands in for ycommand (the yuneta user cannot run this test's Python, under /root):
    # records who ran it and with what, where everyone can write.
    record = tmp_path / "mnt" / "ycommand-record"
    fake = tmp_path / "mnt" / "ycommand"
    fake.write_text('#!/bin/sh\n{ id -un; printf "%s\\n" "$@"; } > /mnt/ycommand-record\n')
    fake.chmod(0o755)
    (tmp_path / "mnt").chmod(0o777)
    hook = "/mnt/p/etc/letsencrypt/renewal-hooks/deploy/reload-certs"

    run = as_host_root(
        tmp_path, hook, env={"YUNETA_YCOMMAND": "/mnt/ycommand", "RENEWED_DOMAINS": "example.test"}
    )

    assert run.returncode == 0, (prefix / "var/log/yuneta/deploy-hook.log").read_text()
    who, *argv = record.read_text().splitlines()
    assert who == "yuneta"
    assert argv == [
        "-u",
        "ws://127.0.0.1:1991",
        "-w",
        "30",
        "-c",
        "command-yuno command=reload-certs service=__yuno__",
    ]
    uid = int(passwd_entry(private_etc(tmp_path), "yuneta")[2])
    assert (prefix / "yuneta/store/certs/example.test.crt").stat().st_uid == uid
    assert (prefix / "var/lib/yuneta/last-deploy-hook-run").read_text().strip().isdigit()
    log = (prefix / "var/log/yuneta/deploy-hook.log").read_text()
    assert "RENEWED_DOMAINS=example.test" in log and "done: 0 step(s) failed" in log
