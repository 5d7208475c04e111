"""A real agent with its /metrics, real echo yunos, and a scraper for the metrics tests.

The agent is `yuneta run -f configs/agent.json` (tests/procs.py) with C_METRICS on a free
port and a short refresh; yunos are `configs/echo-tls.json` launched with `run-yuno`
through the real ycommand, serving certificates a `TestCA` issues. A scrape is a real
HTTP(S) request parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs import TestCA
from procs import (
    CONFIGS,
    Agent,
    free_port,
    kill_tree,
    wait_port,
    write_json,
    ycommand,
    ycommand_json,
)
from prometheus_client.parser import text_string_to_metric_families

REFRESH_MSEC = 300
YUNO_TIMEOUT = 1.0
ECHO_CONFIG = CONFIGS / "echo-tls.json"
ECHO_DTLS = CONFIGS / "echo-dtls.json"


@dataclass
class Scrape:
    """One parsed scrape: samples by name, each a list of (labels, value)."""

    seconds: float
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample `name` whose labels include `labels`, or None."""
        found = [v for ls, v in self.samples.get(name, []) if labels.items() <= ls.items()]
        assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
        return found[0] if found else None

    def labels(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [ls for ls, _v in self.samples.get(name, []) if labels.items() <= ls.items()]


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def http_get(
    url: str, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a GET; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


@dataclass
class MetricsAgent:
    agent: Agent
    url: str
    token: str | None = None
    context: ssl.SSLContext | None = None
    yunos: list[int] = field(default_factory=list)

    def scrape(self) -> Scrape:
        t0 = time.monotonic()
        status, headers, body = http_get(self.url, self.token, self.context)
        seconds = time.monotonic() - t0
        assert status == 200, (status, body)
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        return Scrape(seconds, parse(body))

    def wait_scrape(self, check: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
        """Scrape until `check` holds (refreshes come every REFRESH_MSEC)."""
        deadline = time.monotonic() + timeout
        while True:
            scrape = self.scrape()
            if check(scrape):
                return scrape
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s; last scrape: {scrape.samples}")
            time.sleep(0.1)

    def run_echo(self, tmp: Path, name: str, issued: Any) -> tuple[int, int]:
        """Launch an echo yuno serving `issued` through the agent; (pid, its TLS port)."""
        port = free_port()
        pid = self.run_yuno(tmp, name, issued, ECHO_CONFIG, f"tcps://127.0.0.1:{port}")
        wait_port(port, timeout=30)
        return pid, port

    def run_yuno(self, tmp: Path, name: str, issued: Any, config: Path, url: str) -> int:
        """Launch a yuno from `config` (echo-tls.json's variables) through the agent; its pid."""
        override = write_json(
            tmp / f"{name}-override.json",
            {
                "__json_config_variables__": {
                    "url": url,
                    "ssl_certificate": str(issued.cert_path),
                    "ssl_certificate_key": str(issued.key_path),
                    "work_dir": str(tmp / name),
                    "yuno_name": name,
                }
            },
        )
        rc, answer = ycommand_json(
            self.agent.url, f"run-yuno config={config},{override} wait=20", wait=40
        )
        assert rc == 0 and answer["result"] == 0, answer
        pid = answer["data"][0]["pid"]
        self.yunos.append(pid)
        return pid

    def stop(self) -> None:
        if self.yunos:
            for role in ("echo_tls", "echo_dtls"):
                ycommand(self.agent.url, "-c", f"kill-yuno yuno_role={role}", wait=30)
            kill_tree(self.yunos)
        self.agent.stop()


def metrics_url(agent: Agent, timeout: float = 20.0) -> str:
    """The URL C_METRICS logged when it started listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.log_lines():
            if line.get("msg") == "metrics listening":
                return line["url"].replace("0.0.0.0", "127.0.0.1")
        time.sleep(0.05)
    raise AssertionError(f"no 'metrics listening' in {agent.log}")


def start_agent(
    workdir: Path,
    variables: dict[str, Any] | None = None,
    metrics_kw: dict[str, Any] | None = None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    agent_kw: dict[str, Any] | None = None,
) -> MetricsAgent:
    """A real agent whose C_METRICS refreshes every REFRESH_MSEC; config `variables`, and
    kw of C_METRICS and C_AGENT, merged over the shipped configs/agent.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    kw = {"refresh_msec": REFRESH_MSEC, "yuno_timeout": YUNO_TIMEOUT, **(metrics_kw or {})}
    overrides = {f"C_METRICS.{k}": v for k, v in kw.items()}
    overrides.update({f"C_AGENT.{k}": v for k, v in (agent_kw or {}).items()})
    agent = Agent(
        workdir,
        extra={"__json_config_variables__": variables or {}, "global": overrides},
    )
    agent.start()
    try:
        return MetricsAgent(agent, metrics_url(agent), token, context)
    except BaseException:
        agent.stop()
        raise


def new_ca() -> TestCA:
    return TestCA("Yuneta Metrics Test CA")
