"""The kernel's directory watcher (yuneta/watch.py) against real files and real inotify.

Each case makes a certificate change the way a real tool does (a rewrite in place,
`install -C`, an atomic rename, a Kubernetes `..data` swap, certbot's link moves) and
checks that the watcher reports it, once per burst, and only after the change is complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from clients import wait_for

from yuneta.watch import DirWatcher

DEBOUNCE = 0.2


class Reports:
    """Collects on_change calls with the time they came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, paths: list[str]) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), paths))

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.calls)

    def paths(self) -> set[str]:
        with self.lock:
            return {p for _, ps in self.calls for p in ps}

    def quiet(self, seconds: float = DEBOUNCE * 4) -> int:
        """Wait until no report came for `seconds`; the number of reports."""
        last = -1
        while last != self.count:
            last = self.count
            time.sleep(seconds)
        return last


@pytest.fixture
def watched(tmp_path):
    made: list[DirWatcher] = []

    def make(*dirs: Path, recursive: bool = False, debounce: float = DEBOUNCE) -> Reports:
        reports = Reports()
        w = DirWatcher([str(d) for d in dirs], reports, debounce=debounce, recursive=recursive)
        w.start()
        made.append(w)
        return reports

    yield make, made
    for w in made:
        w.stop()


def test_a_rewrite_in_place_is_reported_once_after_close_not_at_the_first_modify(tmp_path, watched):
    make, _ = watched
    cert = tmp_path / "one.crt"
    cert.write_bytes(b"old")
    reports = make(tmp_path)
    with open(cert, "wb") as f:  # O_TRUNC: MODIFY now, CLOSE_WRITE at the end
        f.write(b"new first half ")
        f.flush()
        time.sleep(DEBOUNCE * 4)  # longer than the debounce: a MODIFY-driven watcher fires
        assert reports.count == 0
        f.write(b"second half")
        closed = time.monotonic()
    wait_for(lambda: reports.count)
    assert reports.quiet() == 1
    assert reports.calls[0][0] >= closed + DEBOUNCE * 0.9
    assert str(cert) in reports.paths()


def test_install_dash_c_delete_and_create_is_one_report_and_an_unchanged_copy_none(
    tmp_path, watched
):
    make, _ = watched
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "new.crt").write_bytes(b"new certificate")
    reports = make(store)
    subprocess.run(
        ["install", "-C", "-m", "0644", tmp_path / "new.crt", store / "a.crt"], check=True
    )
    wait_for(lambda: reports.count)
    assert reports.quiet() == 1
    # install -C with identical content touches nothing, so nothing is reported
    subprocess.run(
        ["install", "-C", "-m", "0644", tmp_path / "new.crt", store / "a.crt"], check=True
    )
    assert reports.quiet() == 1


def test_an_atomic_rename_onto_the_name_is_reported(tmp_path, watched):
    make, _ = watched
    (tmp_path / "a.crt").write_bytes(b"old")
    tmp = tmp_path / ".a.crt.tmp"
    # Staged before the watch starts, so what is watched is the rename alone: a loaded
    # machine may let the debounce end between a write and its rename (one CI run saw 2).
    tmp.write_bytes(b"new")
    reports = make(tmp_path)
    os.replace(tmp, tmp_path / "a.crt")
    wait_for(lambda: str(tmp_path / "a.crt") in reports.paths())
    assert reports.quiet() == 1
    # a second rename: a watch on the file itself would have died with the first one
    tmp.write_bytes(b"newer")
    reports.quiet()  # the staging write may make a report of its own
    before = reports.count
    os.replace(tmp, tmp_path / "a.crt")
    wait_for(lambda: reports.count > before)
    with reports.lock:
        assert str(tmp_path / "a.crt") in reports.calls[-1][1]


def make_secret(mount: Path, generation: str, content: bytes) -> None:
    """A Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<generation>."""
    data_dir = mount / f"..{generation}"
    data_dir.mkdir(parents=True)
    (data_dir / "tls.crt").write_bytes(content)
    (data_dir / "tls.key").write_bytes(content)
    tmp_link = mount / "..data_tmp"
    os.symlink(data_dir.name, tmp_link)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.rename(tmp_link, mount / "..data")  # the swap: the certificate's name never appears
    for name in ("tls.crt", "tls.key"):
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old:
        shutil.rmtree(mount / old)


def test_a_kubernetes_data_swap_is_reported_though_the_file_name_never_appears(tmp_path, watched):
    make, _ = watched
    mount = tmp_path / "secret"
    make_secret(mount, "2026_11_30_01", b"old")
    # A swap is eight steps (the old generation's removal last): on a loaded machine they
    # came more than 0.2 s apart, and so as two bursts. The agent's own default is 0.5 s.
    reports = make(mount, debounce=1.0)
    make_secret(mount, "2026_11_30_02", b"new")
    wait_for(lambda: reports.count)
    assert reports.quiet(seconds=3.0) == 1
    assert (mount / "tls.crt").read_bytes() == b"new"
    assert not any(p.endswith("tls.crt") for p in reports.paths())


def test_certbot_links_moved_one_at_a_time_are_reported(tmp_path, watched):
    make, _ = watched
    live, archive = tmp_path / "live" / "example", tmp_path / "archive" / "example"
    live.mkdir(parents=True)
    archive.mkdir(parents=True)
    for n in (1, 2):
        for name in ("fullchain", "privkey"):
            (archive / f"{name}{n}.pem").write_bytes(f"{name} {n}".encode())
    for name in ("fullchain", "privkey"):
        os.symlink(f"../../archive/example/{name}1.pem", live / f"{name}.pem")
    reports = make(live)
    for name in ("fullchain", "privkey"):  # as certbot: a new link, renamed over the old one
        os.symlink(f"../../archive/example/{name}2.pem", live / f"{name}.pem.tmp")
        os.rename(live / f"{name}.pem.tmp", live / f"{name}.pem")
        time.sleep(DEBOUNCE * 2)
    wait_for(lambda: reports.count >= 2)
    assert {str(live / "fullchain.pem"), str(live / "privkey.pem")} <= reports.paths()


def test_a_directory_created_later_is_watched_once_it_exists(tmp_path, watched):
    make, made = watched
    store = tmp_path / "later" / "store" / "certs"
    reports = make(store, recursive=True)
    status = made[0].status()
    assert status["watching"] == []
    assert status["waiting"] == [{"dir": str(store), "watching": str(tmp_path)}]
    store.mkdir(parents=True)
    wait_for(lambda: made[0].status()["watching"] == [str(store)])
    assert made[0].status()["waiting"] == []
    wait_for(lambda: reports.count)  # files may have come before the watch: say so
    before = reports.quiet()
    (store / "private").mkdir()
    (store / "private" / "a.key").write_bytes(b"key")
    wait_for(lambda: str(store / "private" / "a.key") in reports.paths())
    assert reports.quiet() > before


def test_a_watched_directory_deleted_and_recreated_is_watched_again(tmp_path, watched):
    make, made = watched
    store = tmp_path / "store"
    store.mkdir()
    reports = make(store)
    shutil.rmtree(store)
    wait_for(lambda: made[0].status()["waiting"])
    store.mkdir()
    wait_for(lambda: made[0].status()["watching"] == [str(store)])
    count = reports.quiet()
    (store / "a.crt").write_bytes(b"after")
    wait_for(lambda: reports.count > count)
    assert str(store / "a.crt") in reports.paths()


def test_reading_the_files_wakes_nobody(tmp_path, watched):
    make, _ = watched
    cert = tmp_path / "a.crt"
    cert.write_bytes(b"certificate")
    reports = make(tmp_path)
    for _ in range(50):  # what every reload does
        cert.read_bytes()
    os.utime(cert)  # an attribute change is not a new certificate either
    assert reports.quiet() == 0


def test_a_stopped_watcher_reports_nothing(tmp_path, watched):
    make, made = watched
    reports = make(tmp_path)
    made[0].stop()
    (tmp_path / "a.crt").write_bytes(b"x")
    assert reports.quiet() == 0
    assert not made[0].running
