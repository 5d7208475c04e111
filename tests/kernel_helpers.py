"""Test gclasses and helpers shared by the kernel tests (real actors, no mocks)."""

from __future__ import annotations

import time
from typing import Any

from yuneta.command import envelope
from yuneta.gclass import Attr, Command, Flag, GClassDef, Param, register_gclass
from yuneta.gobj import GObj

T_LAMP = GClassDef(
    name="T_LAMP",
    description="A lamp: a tiny FSM to test the kernel",
    attrs=(
        Attr("int", "brightness", Flag.RD | Flag.WR | Flag.PERSIST, 50, "0-100"),
        Attr("str", "label", Flag.RD | Flag.WR, "", "Free text"),
        Attr("bool", "refuse_writes", Flag.RD, False, "mt_writing refuses brightness > 100"),
        Attr("list", "trace", Flag.RD, [], "Actions run, in order"),
        Attr("str", "owner", Flag.RD | Flag.REQUIRED, "nobody", "Required attribute"),
        Attr("int", "switches", Flag.RSTATS, 0, "How many times switched on"),
    ),
    commands=(
        Command(
            "dim",
            "cmd_dim",
            (Param("int", "level", 10, "New level"), Param("str", "reason", "", "Why")),
            "Dim the lamp",
        ),
        Command(
            "anything", "cmd_anything", (Param("str", "a", "", "a"),), "Wild command", wild=True
        ),
        Command("explode", "cmd_explode", (), "Raises an unexpected error"),
    ),
    input_events=("EV_ON", "EV_OFF", "EV_BOOM", "EV_NOOP"),
    states={
        "ST_OFF": (("EV_ON", "ac_on", "ST_ON"),),
        "ST_ON": (
            ("EV_OFF", "ac_off", "ST_OFF"),
            ("EV_BOOM", "ac_boom", None),
            ("EV_NOOP", None, None),
        ),
    },
)


@register_gclass
class TLamp(GObj):
    GCLASS = T_LAMP

    def ac_on(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["trace"].append(("on", self.state))
        self.attrs["switches"] += 1
        return 0

    def ac_off(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["trace"].append(("off", self.state))
        return 0

    def ac_boom(self, event: str, kw: dict, src: Any) -> int:
        raise RuntimeError("boom inside an action")

    def mt_writing(self, name: str) -> None:
        if name == "brightness" and self.attrs["refuse_writes"] and self.attrs["brightness"] > 100:
            raise ValueError("brightness above 100 refused")

    def cmd_dim(self, cmd: str, kw: dict, src: Any) -> dict:
        return envelope(0, "dimmed", None, dict(kw))

    def cmd_anything(self, cmd: str, kw: dict, src: Any) -> dict:
        return envelope(0, "", None, dict(kw))

    def cmd_explode(self, cmd: str, kw: dict, src: Any) -> dict:
        raise KeyError("unexpected")


T_COLLECTOR = GClassDef(
    name="T_COLLECTOR",
    description="Records every event it receives, with a monotonic timestamp",
    attrs=(Attr("list", "received", Flag.RD, [], "(event, kw, monotonic time)"),),
    input_events=("EV_TIMEOUT", "EV_TIMEOUT_PERIODIC", "EV_PING"),
    states={
        "ST_IDLE": (
            ("EV_TIMEOUT", "ac_record", None),
            ("EV_TIMEOUT_PERIODIC", "ac_record", None),
            ("EV_PING", "ac_record", None),
        )
    },
)


@register_gclass
class TCollector(GObj):
    GCLASS = T_COLLECTOR

    def ac_record(self, event: str, kw: dict, src: Any) -> int:
        self.attrs["received"].append((event, kw, time.monotonic()))
        return 0
