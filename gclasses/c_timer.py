"""C_TIMER: one-shot and periodic timers that publish EV_TIMEOUT / EV_TIMEOUT_PERIODIC.

Deadlines live in the kernel's scheduler thread; when one falls due it only posts
EV_TIMER_TICK to this gobj's actor, which publishes to its subscribers (its parent by
default). Periodic deadlines are re-armed from the previous deadline, so a timer does
not drift. Each start bumps a generation number, so a tick from a stopped or restarted
timer is dropped.
"""

from __future__ import annotations

import time
from typing import Any

from yuneta.gclass import Attr, Command, Flag, GClassDef, Param, register_gclass
from yuneta.gobj import GObj
from yuneta.scheduler import TimerHandle, scheduler

GCLASS = GClassDef(
    name="C_TIMER",
    description="One-shot or periodic timer",
    attrs=(
        Attr("int", "msec", Flag.RD | Flag.WR, 0, "Period or timeout in milliseconds"),
        Attr(
            "bool", "periodic", Flag.RD | Flag.WR, False, "Publish EV_TIMEOUT_PERIODIC every msec"
        ),
        Attr("bool", "subscribe_parent", Flag.RD, True, "The parent receives the timeouts"),
        Attr("int", "ticks", Flag.RSTATS, 0, "Timeouts published since creation"),
    ),
    commands=(
        Command(
            "start-timer",
            "cmd_start_timer",
            (
                Param("int", "msec", None, "Milliseconds (default: the msec attribute)"),
                Param("bool", "periodic", None, "Periodic (default: the periodic attribute)"),
            ),
            "Start (or restart) the timer",
        ),
        Command("stop-timer", "cmd_stop_timer", (), "Stop the timer"),
    ),
    input_events=("EV_START_TIMER", "EV_STOP_TIMER", "EV_TIMER_TICK"),
    output_events=("EV_TIMEOUT", "EV_TIMEOUT_PERIODIC"),
    states={
        "ST_STOPPED": (
            ("EV_START_TIMER", "ac_start_timer", "ST_RUNNING"),
            ("EV_STOP_TIMER", None, None),
            ("EV_TIMER_TICK", None, None),  # a tick that raced a stop: dropped
        ),
        "ST_RUNNING": (
            ("EV_TIMER_TICK", "ac_timer_tick", None),
            ("EV_START_TIMER", "ac_start_timer", None),
            ("EV_STOP_TIMER", "ac_stop_timer", "ST_STOPPED"),
        ),
    },
)


@register_gclass
class CTimer(GObj):
    GCLASS = GCLASS

    def mt_create(self) -> None:
        self._generation = 0
        self._handle: TimerHandle | None = None
        self._deadline = 0.0
        if self.attrs["subscribe_parent"] and self.parent is not None:
            self.subscribe_event(None, self.parent)

    def mt_stop(self) -> None:
        self._cancel()
        if self.state != "ST_STOPPED":
            self.change_state("ST_STOPPED")

    def mt_destroy(self) -> None:
        self._cancel()

    # ----- API for other gobjs (thread-safe) ----------------------------------------

    def set_timeout(self, msec: int) -> None:
        """Publish EV_TIMEOUT once, `msec` from now (restarts a running timer)."""
        self.send_event("EV_START_TIMER", {"msec": msec, "periodic": False})

    def set_timeout_periodic(self, msec: int) -> None:
        """Publish EV_TIMEOUT_PERIODIC every `msec` (restarts a running timer)."""
        self.send_event("EV_START_TIMER", {"msec": msec, "periodic": True})

    def clear_timeout(self) -> None:
        self.send_event("EV_STOP_TIMER")

    # ----- actions ------------------------------------------------------------------

    def ac_start_timer(self, event: str, kw: dict, src: Any) -> int:
        self._cancel()
        self.attrs["msec"] = int(kw.get("msec", self.attrs["msec"]))
        self.attrs["periodic"] = bool(kw.get("periodic", self.attrs["periodic"]))
        if self.attrs["msec"] <= 0:
            self.change_state("ST_STOPPED")
            return -1
        self._generation += 1
        self._deadline = time.monotonic() + self.attrs["msec"] / 1000.0
        self._arm(self._generation)
        return 0

    def ac_timer_tick(self, event: str, kw: dict, src: Any) -> int:
        if kw.get("generation") != self._generation:
            return 0
        self.attrs["ticks"] += 1
        if self.attrs["periodic"]:
            self._deadline += self.attrs["msec"] / 1000.0
            now = time.monotonic()
            if self._deadline < now:  # fell behind (a long pause): skip, do not burst
                periods = int((now - self._deadline) * 1000 // self.attrs["msec"]) + 1
                self._deadline += periods * self.attrs["msec"] / 1000.0
            self._arm(self._generation)
            self.publish_event("EV_TIMEOUT_PERIODIC", {"ticks": self.attrs["ticks"]})
        else:
            self.change_state("ST_STOPPED")
            self.publish_event("EV_TIMEOUT", {"ticks": self.attrs["ticks"]})
        return 0

    def ac_stop_timer(self, event: str, kw: dict, src: Any) -> int:
        self._cancel()
        return 0

    # ----- commands -----------------------------------------------------------------

    def cmd_start_timer(self, cmd: str, kw: dict, src: Any) -> dict:
        ev = {k: kw[k] for k in ("msec", "periodic") if kw.get(k) is not None}
        result = self.send_event("EV_START_TIMER", ev)
        return {"result": result or 0, "comment": f"timer {self.state}"}

    def cmd_stop_timer(self, cmd: str, kw: dict, src: Any) -> dict:
        self.send_event("EV_STOP_TIMER")
        return {"result": 0, "comment": "timer stopped"}

    # ----- internals ----------------------------------------------------------------

    def _arm(self, generation: int) -> None:
        def tick() -> None:  # on the scheduler's thread: only post
            self.send_event("EV_TIMER_TICK", {"generation": generation})

        self._handle = scheduler().call_at(self._deadline, tick)

    def _cancel(self) -> None:
        self._generation += 1
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
