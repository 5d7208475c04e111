"""Metrics benchmark: a scrape of the agent's /metrics with every yuno up, beside the same
scrape while one yuno is stopped (SIGSTOP), in alternating rounds.

    python -m bench.metrics [--yunos 5] [--rounds 6] [--scrapes 40]

A real agent (configs/agent.json) launches `--yunos` echo yunos; each round scrapes
`--scrapes` times and reads the agent's own collection time (a refresh asks every yuno at
once, each bounded by yuno_timeout). Prints per state the median and the slowest scrape and
collection (milliseconds), and the exposition's size. Timings on a shared machine are noisy:
compare the two states within one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from metrics_env import YUNO_TIMEOUT, http_get, new_ca, start_agent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yunos", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--scrapes", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ca = new_ca()
        host = start_agent(tmp / "agent-run")
        try:
            pids = [
                host.run_echo(tmp, f"echo{i}", ca.issue(tmp / f"c{i}", "localhost"))[0]
                for i in range(args.yunos)
            ]
            results: dict[str, dict[str, list[float]]] = {}
            for r in range(args.rounds * 2):
                state = "one stopped" if r % 2 else "all up"
                if r % 2:
                    os.kill(pids[0], signal.SIGSTOP)
                time.sleep(YUNO_TIMEOUT * 2)  # let a refresh see the new state
                got = results.setdefault(state, {"scrape_ms": [], "collect_ms": [], "bytes": []})
                for _ in range(args.scrapes):
                    t0 = time.perf_counter()
                    status, _headers, body = http_get(host.url)
                    got["scrape_ms"].append((time.perf_counter() - t0) * 1000)
                    assert status == 200
                    got["bytes"].append(len(body))
                    scrape = host.scrape()
                    got["collect_ms"].append(
                        scrape.get("yuneta_metrics_refresh_duration_seconds") * 1000
                    )
                if r % 2:
                    os.kill(pids[0], signal.SIGCONT)
            print(f"{args.yunos} echo yunos, yuno_timeout {YUNO_TIMEOUT} s:")
            for state, got in results.items():
                print(
                    f"  {state:12s} scrape median {statistics.median(got['scrape_ms']):6.2f} ms"
                    f" max {max(got['scrape_ms']):7.2f} ms;"
                    f" collection median {statistics.median(got['collect_ms']):8.2f} ms"
                    f" max {max(got['collect_ms']):8.2f} ms;"
                    f" exposition {int(statistics.median(got['bytes']))} bytes"
                )
        finally:
            host.stop()


if __name__ == "__main__":
    main()
