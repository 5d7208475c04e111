"""The shipped alert rules (configs/alerts/): checked and unit-tested by Debian's promtool,
then evaluated by a real Prometheus scraping a real agent whose yuno serves a certificate
one day from expiry.
"""

from __future__ import annotations

import json
import re
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


DASHBOARD = ROOT / "configs" / "grafana" / "yuneta-dashboard.json"


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def _exported_names() -> set[str]:
    """Every sample name the exporter can emit: a snapshot with every listener attribute,
    certificate and cert-sync field filled in."""
    from gclasses.metrics_series import LISTENER_SERIES, Snapshot, YunoSample, families

    listeners = [
        {
            "name": f"l{i}",
            "gclass": row.gclass,
            "attrs": {
                "use_ssl": True,
                "reloads": 1,
                "reload_failures": 0,
                "last_reload_error": "",
                row.attr: 1,
            },
        }
        for i, row in enumerate(LISTENER_SERIES)
    ]
    cert = {
        "gobj": "l0",
        "not_after": 2,
        "not_before": 1,
        "subject": "s",
        "issuer": "i",
        "serial": "1",
    }
    expiry = {"warn_threshold": 7, "critical_threshold": 2, "details": [cert]}
    sync = {
        "enabled": True,
        "interval_sec": 1,
        "last_check": 1,
        "last_action": 1,
        "last_result": "",
        "failures": 0,
        "deploy_hook_last_run": 1,
        "lagging": [{"yuno": "r^n", "gobj": "l0", "since": 1}],
    }
    tree = {"name": "y", "children": listeners}
    snap = Snapshot(yunos=(YunoSample("r", "n", True, 1.0, 0.0, tree, expiry),), sync=sync)
    return {s.name for m in families(snap) for s in m.samples}


def test_rules_and_dashboard_only_use_series_the_agent_exports():
    exported = _exported_names()
    used = set(re.findall(r"\byuneta_[a-z_]+", RULES.read_text()))
    for expr in _dashboard_exprs():
        used |= set(re.findall(r"\byuneta_[a-z_]+", expr))
    assert used and used <= exported, sorted(used - exported)


@need_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool has no expression checker of its own: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:query_{i}",
                        "expr": expr.replace("$instance", ".*").replace("$__rate_interval", "5m"),
                    }
                    for i, expr in enumerate(_dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
