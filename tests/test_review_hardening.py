"""Layer 1, layer 2 and the control plane tried from outside: odd inputs an operator or a
hostile local peer can produce, each once found to break something."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
import threading
from pathlib import Path

from certs import TestCA
from clients import wait_for
from layer1 import COPY_CERTS, make_lineage, run_script
from procs import ROOT, Agent, child_env, ycommand_json

from gclasses.cert_sync import OUTPUT_TAIL, run_copy, take_snapshot


def test_certs_list_keeps_blanks_inside_a_lineage_name(tmp_path: Path) -> None:
    # The list used to squeeze every blank out, so "my site" looked for live/mysite.
    le, store = tmp_path / "letsencrypt", tmp_path / "store"
    make_lineage(TestCA(), le, "my site")
    store.mkdir()
    (store / "certs.list").write_text("  my site  # the web\n")
    env = {
        "YUNETA_LETSENCRYPT_DIR": str(le),
        "YUNETA_CERTS_DIR": str(store),
        "YUNETA_CERTS_OWNER": "",
        "YUNETA_CERTS_GROUP": "",
    }

    proc = run_script(COPY_CERTS, env)

    assert proc.returncode == 0, proc.stderr
    assert (store / "my site.crt").exists() and (store / "private" / "my site.key").exists()


def test_a_copy_command_printing_megabytes_keeps_only_its_tail_in_memory() -> None:
    # communicate() kept all of it: `yes` for the 60 s timeout is gigabytes in the agent.
    # Measured in a fresh interpreter: peak RSS with 40 MB of output beside one with none.
    probe = (
        "import asyncio, json, resource, sys\n"
        "from gclasses.cert_sync import run_copy\n"
        "asyncio.run(run_copy(['true'], 30.0))\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "r = asyncio.run(run_copy(sys.argv[1:], 30.0))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_kib': peak - base, **r}))\n"
    )
    argv = [sys.executable, "-c", probe, "head", "-c", "40000000", "/dev/zero"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    assert result["outcome"] == "ok"
    assert len(result["output"]) <= OUTPUT_TAIL
    assert result["grew_kib"] < 10_000, f"RSS grew {result['grew_kib']} KiB for 40 MB of output"


def test_a_grandchild_holding_the_pipe_is_killed_at_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    argv = ["sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; exit 0']

    async def copy_then_settle() -> dict:
        result = await run_copy(argv, 1.0)
        await asyncio.sleep(0.3)  # the killed group's pipe reaches EOF (the agent's loop lives on)
        return result

    result = asyncio.run(copy_then_settle())

    assert result["outcome"] == "timeout"
    pid = int(pidfile.read_text())
    for _ in range(100):  # reaped by init once killed: gone within moments
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        threading.Event().wait(0.05)
    else:
        raise AssertionError(f"grandchild {pid} outlived the copy timeout")


def test_a_fifo_or_a_huge_file_in_the_store_never_stalls_a_snapshot(tmp_path: Path) -> None:
    # A FIFO named like a certificate blocked the tick (and so cert-sync) forever; a huge
    # file was read whole into memory on every tick.
    ca = TestCA()
    issued = ca.issue(tmp_path / "issued", "good.test")
    store = tmp_path / "store"
    (store / "private").mkdir(parents=True)
    (store / "good.crt").write_bytes(issued.cert_path.read_bytes())
    os.mkfifo(store / "stuck.crt")
    (store / "private" / "huge.key").write_bytes(b"\0" * (2 << 20))
    (store / "loop.crt").symlink_to("loop.crt")

    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(take_snapshot(str(store))), daemon=True)
    worker.start()
    worker.join(10)

    assert not worker.is_alive(), "take_snapshot is stuck on a FIFO"
    assert out["good.crt"].fingerprint.count(":") == 31
    assert out["stuck.crt"].sha256 == "" and out["private/huge.key"].sha256 == ""
    assert "loop.crt" not in out


def test_an_install_the_agent_would_refuse_changes_nothing(tmp_path: Path) -> None:
    # The config's check ran only when its turn came: the store, the copy script and the
    # agent's directories were already in place, half an install left behind.
    me = pwd.getpwuid(os.geteuid()).pw_name  # an existing user: nothing to create
    prefix = tmp_path / "p"
    argv = [sys.executable, "-m", "yuneta", "install", "--prefix", str(prefix), "--user", me]
    argv += ["--metrics-port", "0", "--agent-url", "http://127.0.0.1:1991"]

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())

    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "scheme must be one of" in proc.stderr
    assert not prefix.exists()


def test_a_burst_of_store_events_is_one_tick_with_a_bounded_log_line(tmp_path: Path) -> None:
    # 500 files landing at once were one tick (good) whose log line named every one of
    # them: 53 KB, past journald's 48 KiB line limit, so the JSON arrived split in pieces.
    store = tmp_path / "store"
    store.mkdir()
    agent = Agent(
        tmp_path,
        extra={
            "__json_config_variables__": {
                "cert_sync_store_dir": str(store),
                "cert_sync_watch": True,
            },
            "global": {"agent.cert_sync_debounce_sec": 0.3},
        },
    ).start()

    def ticks() -> list[dict]:
        return [r for r in agent.log_lines() if r.get("msg") == "cert-sync tick"]

    try:
        wait_for(lambda: [t for t in ticks() if t["trigger"] == "start"], timeout=20)
        for i in range(500):
            (store / f"site{i:03d}.crt").write_text("not yet a certificate\n")
        watch = wait_for(lambda: [t for t in ticks() if t["trigger"] == "watch"], timeout=20)
        threading.Event().wait(1.0)  # a second tick for the same burst would show by now
        watch = [t for t in ticks() if t["trigger"] == "watch"]
        lines = [line for line in agent.log.read_text().splitlines() if '"cert-sync tick"' in line]
    finally:
        agent.stop()
    assert len(watch) == 1 and watch[0]["changed_count"] == 500
    assert len(watch[0]["changed"]) <= 32
    assert max(len(line) for line in lines) < 16_000


def test_a_refused_attribute_write_is_one_answer_and_no_traceback_in_the_log(
    tmp_path: Path,
) -> None:
    # An operator's bad value was answered in one line but logged as an error with a
    # traceback (alerts on error lines fired for a typo).
    agent = Agent(tmp_path).start()
    try:
        code, answer = ycommand_json(
            agent.url, "write-attr attr_name=cert_sync_interval_sec value=5"
        )
        assert code != 0 and answer["result"] == -1
        assert answer["comment"].endswith("must be at least 30 seconds, not 5")
        code, status = ycommand_json(agent.url, "cert-sync-status")
        assert code == 0 and status["data"]["interval_sec"] == 900  # the old value kept
    finally:
        agent.stop()
    log = agent.log.read_text()
    assert "Traceback" not in log and '"level":"error"' not in log
