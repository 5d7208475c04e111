"""Layer 1 without certbot: the real copy script and deploy hook on certbot-shaped lineages.

The lineages are written in certbot's layout (archive/<name>/*N.pem, relative links in live/)
with a test CA, so every case here runs in a second; the same scripts against the real
certbot and pebble are in test_layer1_certbot.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from certs import TestCA
from layer1 import COPY_CERTS, DEPLOY_HOOK, Inotify, make_lineage, run_script

ROOT_RUN = os.geteuid() == 0
# As root, the copies are given to `nobody` (the yuneta user does not exist on this machine:
# the real yuneta owner is checked by the install test, in a private /etc).
OWNER = ("nobody", "nogroup") if ROOT_RUN else ("", "")


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    le, store = tmp_path / "letsencrypt", tmp_path / "store" / "certs"
    (le / "live").mkdir(parents=True)
    return {"le": le, "store": store}


def copy_env(host: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "YUNETA_LETSENCRYPT_DIR": str(host["le"]),
        "YUNETA_CERTS_DIR": str(host["store"]),
        "YUNETA_CERTS_OWNER": OWNER[0],
        "YUNETA_CERTS_GROUP": OWNER[1],
        **extra,
    }


def owner_of(path: Path) -> tuple[str, str]:
    import grp
    import pwd

    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


def tree_state(d: Path) -> dict[str, tuple[int, int, int, int]]:
    """(mode, uid, mtime_ns, inode) of every file: anything that moves shows."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(d))] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ino)
    return out


def test_copy_certs_mirrors_every_live_lineage_with_the_spec_owners_and_modes(host):
    ca = TestCA()
    make_lineage(ca, host["le"], "example.test")
    make_lineage(ca, host["le"], "other.test")
    (host["le"] / "live" / "README").write_text("certbot puts this file here\n")

    proc = run_script(COPY_CERTS, copy_env(host))

    assert proc.returncode == 0, proc.stderr
    store = host["store"]
    for name in ("example.test", "other.test"):
        archive = host["le"] / "archive" / name
        assert (store / f"{name}.crt").read_bytes() == (archive / "fullchain1.pem").read_bytes()
        assert (store / f"{name}.chain").read_bytes() == (archive / "chain1.pem").read_bytes()
        key = store / "private" / f"{name}.key"
        assert key.read_bytes() == (archive / "privkey1.pem").read_bytes()
        assert stat.S_IMODE((store / f"{name}.crt").stat().st_mode) == 0o644
        assert stat.S_IMODE((store / f"{name}.chain").stat().st_mode) == 0o644
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        if ROOT_RUN:
            assert owner_of(key) == OWNER and owner_of(store / f"{name}.crt") == OWNER
    assert stat.S_IMODE((store / "private").stat().st_mode) == 0o700
    assert sorted(p.name for p in store.iterdir()) == [
        "example.test.chain",
        "example.test.crt",
        "other.test.chain",
        "other.test.crt",
        "private",
    ]
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr


def test_a_second_copy_with_nothing_renewed_moves_nothing(host):
    make_lineage(TestCA(), host["le"], "example.test")
    assert run_script(COPY_CERTS, copy_env(host)).returncode == 0
    before = tree_state(host["store"])
    time.sleep(0.05)  # a rewrite would get a later mtime

    proc = run_script(COPY_CERTS, copy_env(host))

    assert proc.returncode == 0, proc.stderr
    assert tree_state(host["store"]) == before
    assert "key unchanged, crt unchanged, chain unchanged" in proc.stdout


def test_a_renewal_lands_key_first_each_file_by_rename(host):
    ca = TestCA()
    make_lineage(ca, host["le"], "example.test", n=1)
    assert run_script(COPY_CERTS, copy_env(host)).returncode == 0
    make_lineage(ca, host["le"], "example.test", n=2)
    store = host["store"]
    watch = Inotify(store, store / "private")
    try:
        proc = run_script(COPY_CERTS, copy_env(host))
        landed = watch.landed()
    finally:
        watch.close()

    assert proc.returncode == 0, proc.stderr
    # Renamed into place (MOVED_TO), never rewritten in place: a reader meets old or new.
    # The chain (the same CA) did not change, so it did not move.
    assert landed == [store / "private" / "example.test.key", store / "example.test.crt"]
    assert "key written, crt written, chain unchanged" in proc.stdout
    fullchain2 = (host["le"] / "archive" / "example.test" / "fullchain2.pem").read_bytes()
    assert (store / "example.test.crt").read_bytes() == fullchain2


def test_a_copy_that_cannot_be_written_replaces_nothing_of_its_lineage(host):
    """A write that fails midway (here a 1 KiB file-size limit: the key and chain fit, the
    full chain does not) must not leave the new key beside the old certificate."""
    ca = TestCA()
    make_lineage(ca, host["le"], "example.test", n=1)
    assert run_script(COPY_CERTS, copy_env(host)).returncode == 0
    make_lineage(ca, host["le"], "example.test", n=2)
    store, archive = host["store"], host["le"] / "archive" / "example.test"
    assert len((archive / "privkey2.pem").read_bytes()) < 1024
    assert len((archive / "fullchain2.pem").read_bytes()) > 1024

    def files() -> dict[str, tuple[int, int, int, int]]:  # the directories' mtimes may move
        return {k: v for k, v in tree_state(store).items() if stat.S_ISREG(v[0])}

    before = files()

    limited = ("bash", "-c", 'ulimit -f 1; exec "$0"')  # bash counts -f in 1024-byte blocks
    proc = run_script(COPY_CERTS, copy_env(host), *limited)

    assert proc.returncode == 1
    assert f"cannot write {store}/example.test.crt: nothing of example.test replaced" in proc.stderr
    assert files() == before  # the old pair, untouched; no staged copy left behind
    assert (store / "private" / "example.test.key").read_bytes() == (
        archive / "privkey1.pem"
    ).read_bytes()

    proc = run_script(COPY_CERTS, copy_env(host))  # the next run copies it whole
    assert proc.returncode == 0, proc.stderr
    assert "key written, crt written, chain unchanged" in proc.stdout
    assert (store / "example.test.crt").read_bytes() == (archive / "fullchain2.pem").read_bytes()


@pytest.mark.skipif(not ROOT_RUN or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_an_unreadable_private_key_is_reported_by_name_and_the_others_still_copy(host):
    ca = TestCA()
    make_lineage(ca, host["le"], "good.test")
    make_lineage(ca, host["le"], "locked.test")
    make_lineage(ca, host["le"], "also-good.test")
    os.chmod(host["le"] / "archive" / "locked.test" / "privkey1.pem", 0)
    # Root without the capabilities that bypass file modes: the 0000 key is truly unreadable.
    # (The store stays root's here: without those capabilities root cannot write into a
    # private/ directory it has given away.)
    no_bypass = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    env = copy_env(host, YUNETA_CERTS_OWNER="", YUNETA_CERTS_GROUP="")

    proc = run_script(COPY_CERTS, env, *no_bypass)

    assert proc.returncode == 1
    assert "locked.test: cannot read" in proc.stderr
    assert "1 of 3 lineage(s) failed: locked.test" in proc.stderr
    store = host["store"]
    for name in ("good.test", "also-good.test"):
        assert (store / f"{name}.crt").exists() and (store / "private" / f"{name}.key").exists()
    assert not (store / "locked.test.crt").exists()
    assert not (store / "private" / "locked.test.key").exists()


def test_a_key_that_does_not_match_its_certificate_never_replaces_the_good_pair(host):
    ca = TestCA()
    make_lineage(ca, host["le"], "example.test", n=1)
    assert run_script(COPY_CERTS, copy_env(host)).returncode == 0
    good = tree_state(host["store"])
    # certbot swaps the live links one at a time: caught between them, the new certificate
    # meets the old key.
    make_lineage(ca, host["le"], "example.test", n=2)
    live_key = host["le"] / "live" / "example.test" / "privkey.pem"
    live_key.unlink()
    live_key.symlink_to("../../archive/example.test/privkey1.pem")

    proc = run_script(COPY_CERTS, copy_env(host))

    assert proc.returncode == 1
    assert "example.test:" in proc.stderr and "does not match" in proc.stderr
    assert tree_state(host["store"]) == good


def test_certs_list_names_the_lineages_and_refuses_path_like_names(host):
    ca = TestCA()
    make_lineage(ca, host["le"], "wanted.test")
    make_lineage(ca, host["le"], "ignored.test")
    host["store"].mkdir(parents=True)
    (host["store"] / "certs.list").write_text(
        "# lineages to mirror\nwanted.test  # the web\n\n../x\n"
    )

    proc = run_script(COPY_CERTS, copy_env(host))

    assert proc.returncode == 1
    assert "../x: not a lineage name" in proc.stderr
    assert (host["store"] / "wanted.test.crt").exists()
    assert not (host["store"] / "ignored.test.crt").exists()


def test_copy_certs_refuses_arguments_and_a_missing_letsencrypt_dir(tmp_path):
    env = {
        "YUNETA_LETSENCRYPT_DIR": str(tmp_path / "none"),
        "YUNETA_CERTS_DIR": str(tmp_path / "s"),
    }
    assert run_script(COPY_CERTS, env).returncode == 2
    proc = run_script(COPY_CERTS, env, "bash", "-c", '"$0" extra', str(COPY_CERTS))
    assert proc.returncode == 2 and "takes no arguments" in proc.stderr


# ---------------------------------------------------------------------------
#   The deploy hook
# ---------------------------------------------------------------------------


def hook_env(host: dict[str, Path], tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **copy_env(host),
        "YUNETA_COPY_CERTS": str(COPY_CERTS),
        "YUNETA_HOOK_LOG": str(tmp_path / "log" / "deploy-hook.log"),
        "YUNETA_HOOK_STAMP": str(tmp_path / "lib" / "last-deploy-hook-run"),
        "YUNETA_YCOMMAND": str(Path(os.sys.executable).parent / "ycommand"),
        "YUNETA_AGENT_URL": "ws://127.0.0.1:9",  # discard port: nothing answers
        "YUNETA_USER": "",
        "RENEWED_LINEAGE": str(host["le"] / "live" / "example.test"),
        "RENEWED_DOMAINS": "example.test www.example.test",
        **extra,
    }


def test_the_hook_runs_every_step_logs_each_and_always_writes_the_stamp(host, tmp_path):
    make_lineage(TestCA(), host["le"], "example.test")
    env = hook_env(host, tmp_path)
    before = int(time.time())

    proc = run_script(DEPLOY_HOOK, env)

    after = int(time.time())
    assert proc.returncode == 1  # the ycommand step failed: nothing listens
    log = Path(env["YUNETA_HOOK_LOG"]).read_text()
    assert f"RENEWED_LINEAGE={env['RENEWED_LINEAGE']}" in log
    assert "RENEWED_DOMAINS=example.test www.example.test" in log
    assert "copy: ok" in log
    assert "web-reload: skipped" in log
    assert "reload-yunos: FAILED" in log and "layer 2" in log
    assert "done: 1 step(s) failed" in log
    stamp = Path(env["YUNETA_HOOK_STAMP"])
    assert before <= int(stamp.read_text()) <= after
    assert stat.S_IMODE(stamp.stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(env["YUNETA_HOOK_LOG"]).stat().st_mode) == 0o644
    assert (host["store"] / "example.test.crt").exists()
    assert "PRIVATE KEY" not in log


def test_a_failing_copy_does_not_stop_the_stamp_or_the_other_steps(host, tmp_path):
    env = hook_env(host, tmp_path, YUNETA_COPY_CERTS=str(tmp_path / "no-such-script"))

    proc = run_script(DEPLOY_HOOK, env)

    assert proc.returncode == 1
    log = Path(env["YUNETA_HOOK_LOG"]).read_text()
    assert "copy: FAILED" in log
    assert "reload-yunos: running" in log
    assert "done: 2 step(s) failed" in log
    assert Path(env["YUNETA_HOOK_STAMP"]).read_text().strip().isdigit()


def test_the_web_reload_command_is_split_into_words_never_evaluated(host, tmp_path):
    make_lineage(TestCA(), host["le"], "example.test")
    recorder = tmp_path / "reload-web"
    args_file = tmp_path / "args"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args_file}\n')
    recorder.chmod(0o755)
    env = hook_env(host, tmp_path, YUNETA_WEB_RELOAD=f"{recorder} -s reload $(id) ;x")

    run_script(DEPLOY_HOOK, env)

    assert args_file.read_text().splitlines() == ["-s", "reload", "$(id)", ";x"]
    assert "web-reload: ok" in Path(env["YUNETA_HOOK_LOG"]).read_text()


def test_a_hook_log_past_its_limit_is_moved_aside_whole_and_one_old_log_is_kept(host, tmp_path):
    make_lineage(TestCA(), host["le"], "example.test")
    env = hook_env(host, tmp_path, YUNETA_HOOK_LOG_MAX="4000")
    log = Path(env["YUNETA_HOOK_LOG"])
    log.parent.mkdir(parents=True)
    old = "".join(f"2020-01-01T00:00:00Z reload-certs[1] old line {i}\n" for i in range(100))
    log.write_text(old)  # 5 KB: past the limit
    previous = Path(f"{log}.1")
    previous.write_text("the oldest log\n")

    run_script(DEPLOY_HOOK, env)

    assert previous.read_text() == old  # moved whole; the one before it is gone
    first = log.read_text()
    assert f"start: RENEWED_LINEAGE={env['RENEWED_LINEAGE']} " in first.splitlines()[0]
    assert "old line" not in first and "done: 1 step(s) failed" in first
    assert len(first) < 4000

    run_script(DEPLOY_HOOK, env)  # under the limit: appended

    assert log.read_text().startswith(first) and log.read_text().count("start:") == 2
    assert previous.read_text() == old


def test_a_hook_log_limit_that_is_not_a_number_falls_back_and_says_so(host, tmp_path):
    env = hook_env(host, tmp_path, YUNETA_HOOK_LOG_MAX="1M; rm -rf /")

    proc = run_script(DEPLOY_HOOK, env)

    assert "YUNETA_HOOK_LOG_MAX=1M; rm -rf / is not a byte count; using 1048576" in proc.stderr
    assert "done:" in Path(env["YUNETA_HOOK_LOG"]).read_text()
