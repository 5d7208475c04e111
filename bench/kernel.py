"""Kernel benchmark: gobj event round trip and command dispatch, beside bare pykka.

    python -m bench.kernel [--n 5000]

Prints medians (microseconds) of: a bare pykka `ask` (the floor every gobj call stands
on), `GObj.ask_event` (FSM row lookup + transitions trigger + action), `GObj.command`
(line parsing + typing by the parameter table + handler + envelope), and a same-thread
`command` (no actor hop) to show what parsing alone costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_helpers import TLamp  # noqa: E402  (a small test gclass with an FSM and commands)

from yuneta.gobj import create_gobj  # noqa: E402


class _Bare(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: object) -> object:
        return message


def _median_us(fn, n: int) -> float:
    for _ in range(min(500, n)):  # warm up: thread wake-ups, caches
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def run(n: int) -> dict[str, float]:
    bare = _Bare.start()
    lamp = create_gobj("bench", TLamp, {"owner": "bench"})
    try:
        lamp.ask_event("EV_ON")
        results = {
            "pykka ask (bare actor)": _median_us(lambda: bare.ask("x"), n),
            "gobj ask_event (FSM row + action)": _median_us(lambda: lamp.ask_event("EV_NOOP"), n),
            "gobj command 'dim level=5 reason=x'": _median_us(
                lambda: lamp.command("dim level=5 reason=x"), n
            ),
            "command parse+dispatch, no actor hop": _median_us(
                lambda: lamp._command("dim level=5 reason=x", {}, None), n
            ),
        }
    finally:
        bare.stop()
        lamp.destroy()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000, help="calls per figure")
    args = ap.parse_args()
    print_table(run(args.n))


def print_table(results: dict[str, float]) -> None:
    base = results["pykka ask (bare actor)"]
    print(f"\n{'kernel call':42} {'median us':>10} {'vs bare ask':>12}")
    for label, value in results.items():
        print(f"{label:42} {value:10.1f} {value / base:11.2f}x")


if __name__ == "__main__":
    main()
