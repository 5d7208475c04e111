"""The shipped alert rules (configs/alerts/): checked and unit-tested by Debian's promtool,
then evaluated by a real Prometheus scraping a real agent whose yuno serves a certificate
one day from expiry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from metrics_env import new_ca, start_agent
from procs import ROOT, free_port, wait_port

RULES = ROOT / "configs" / "alerts" / "yuneta-rules.yml"
RULE_TESTS = ROOT / "configs" / "alerts" / "yuneta-rules.test.yml"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
need_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus) missing")


@need_promtool
def test_rules_pass_promtool_check():
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@need_promtool
def test_rules_unit_tests_pass():
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@need_promtool
def test_rules_unit_tests_can_fail(tmp_path):
    # The same tests against rules whose critical threshold is ignored must fail: the unit
    # tests really pin the thresholds down.
    broken = RULES.read_text().replace("yuneta_cert_expiry_critical_threshold_seconds / 86400", "0")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / RULE_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "YunetaCertExpiryCritical" in proc.stdout + proc.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian: prometheus) missing")
def test_real_prometheus_fires_critical_for_a_certificate_one_day_from_expiry(tmp_path):
    ca = new_ca()
    host = start_agent(tmp_path / "agent-run")
    prometheus = None
    try:
        host.run_echo(tmp_path, "echo1", ca.issue(tmp_path / "certs", "localhost", days=1))
        target = host.url.split("//", 1)[1].split("/", 1)[0]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "yuneta", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            prometheus = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
                cwd=tmp_path,
            )
        wait_port(port, timeout=60, proc=prometheus)
        _wait_ready(port, prometheus, timeout=60)
        alerts = _wait_firing(port, "YunetaCertExpiryCritical", timeout=60)
        (alert,) = [a for a in alerts if a["labels"].get("yuno_name") == "echo1"]
        assert alert["labels"]["listener"] == "echo_tls"
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == "yuneta"
        assert "echo_tls^echo1 echo_tls: certificate expires in 0 day(s)" in str(
            alert["annotations"]
        )
        names = {a["labels"]["alertname"] for a in _alerts(port) if a["state"] == "firing"}
        assert "YunetaCertExpiryWarning" not in names  # critical only, as the yuno's log
        assert "YunetaYunoDown" not in names
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(5)
        host.stop()


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Until Prometheus answers /-/ready with 200 (503 while its storage opens)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=10):
                return
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _alerts(port: int) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/alerts"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)["data"]["alerts"]


def _wait_firing(port: int, name: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        alerts = _alerts(port)
        firing = [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]
        if firing:
            return firing
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not firing after {timeout} s: {alerts}")
        time.sleep(0.5)
