"""The gobj/gclass kernel: FSM, attributes, commands, tree, services, timers."""

from __future__ import annotations

import time

import pytest
from clients import wait_for
from kernel_helpers import TLamp

from yuneta.config import load_config
from yuneta.errors import AttrError, ConfigError
from yuneta.gobj import create_gobj
from yuneta.runtime import YunoRuntime


@pytest.fixture
def lamp():
    g = create_gobj("lamp1", TLamp, {"owner": "tests"})
    yield g
    g.destroy()


def test_fsm_rows_drive_transitions_and_state_changes_before_the_action(lamp):
    assert lamp.state == "ST_OFF"
    assert lamp.ask_event("EV_ON") == 0
    assert lamp.state == "ST_ON"
    assert lamp.ask_event("EV_OFF") == 0
    assert lamp.state == "ST_OFF"
    # Like the original, the next state is set before the action runs.
    assert lamp.attrs["trace"] == [("on", "ST_ON"), ("off", "ST_OFF")]
    assert lamp.attrs["switches"] == 1


def test_row_without_next_state_keeps_the_state(lamp):
    lamp.ask_event("EV_ON")
    assert lamp.ask_event("EV_NOOP") == 0
    assert lamp.state == "ST_ON"


def test_unknown_event_is_logged_and_ignored(lamp, yuneta_logs):
    assert lamp.ask_event("EV_OFF") == -1  # no row in ST_OFF
    assert lamp.ask_event("EV_NEVER_DECLARED") == -1
    assert lamp.state == "ST_OFF"
    lines = yuneta_logs.find(gobj="T_LAMP^lamp1", level="warning")
    assert {r["event"] for r in lines} == {"EV_OFF", "EV_NEVER_DECLARED"}
    assert all(r["state"] == "ST_OFF" for r in lines)


def test_action_that_raises_is_logged_and_the_actor_keeps_running(lamp, yuneta_logs):
    lamp.ask_event("EV_ON")
    assert lamp.ask_event("EV_BOOM") == -1
    err = yuneta_logs.find(gobj="T_LAMP^lamp1", level="error")
    assert err and "boom inside an action" in err[0]["error"] and "traceback" in err[0]
    assert lamp.ask_event("EV_OFF") == 0
    assert lamp.state == "ST_OFF"


def test_events_from_other_threads_are_queued_in_order(lamp):
    for _ in range(50):
        lamp.send_event("EV_ON")
        lamp.send_event("EV_OFF")
    wait_for(lambda: lamp.attrs["switches"] == 50)
    assert lamp.state == "ST_OFF"
    assert [t[0] for t in lamp.attrs["trace"]] == ["on", "off"] * 50


def test_unknown_attribute_names_attribute_and_gclass():
    with pytest.raises(AttrError) as err:
        create_gobj("x", TLamp, {"owner": "t", "colour": "red"})
    assert "T_LAMP" in str(err.value) and "colour" in str(err.value)


def test_wrong_type_names_attribute_gclass_and_type():
    with pytest.raises(AttrError) as err:
        create_gobj("x", TLamp, {"owner": "t", "brightness": "very"})
    assert "T_LAMP" in str(err.value) and "brightness" in str(err.value) and "int" in str(err.value)


def test_required_attribute_must_be_given():
    with pytest.raises(AttrError) as err:
        create_gobj("x", TLamp, {"owner": ""})
    assert "owner" in str(err.value) and "required" in str(err.value)


def test_write_attr_coerces_and_mt_writing_can_refuse(lamp):
    lamp.write_attr("brightness", "70")
    assert lamp.read_attr("brightness") == 70
    refusing = create_gobj("lamp2", TLamp, {"owner": "t", "refuse_writes": True})
    try:
        with pytest.raises(ValueError):
            refusing.write_attr("brightness", 150)
        assert refusing.read_attr("brightness") == 50  # the old value is back
    finally:
        refusing.destroy()


def test_commands_typed_by_schema_with_defaults(lamp):
    answer = lamp.command('dim level=5 reason="too bright here"')
    assert answer == {
        "result": 0,
        "comment": "dimmed",
        "schema": None,
        "data": {"level": 5, "reason": "too bright here"},
    }
    assert lamp.command("dim")["data"] == {"level": 10, "reason": ""}
    assert lamp.command("dim 7 'single quoted'")["data"] == {"level": 7, "reason": "single quoted"}


def test_command_errors_are_envelopes(lamp):
    unknown_key = lamp.command("dim colour=red")
    assert unknown_key["result"] == -1 and "unknown parameter 'colour'" in unknown_key["comment"]
    bad_type = lamp.command("dim level=high")
    assert (
        bad_type["result"] == -1 and "level" in bad_type["comment"] and "int" in bad_type["comment"]
    )
    unknown_cmd = lamp.command("fly")
    assert unknown_cmd["result"] == -1 and "fly" in unknown_cmd["comment"]
    boom = lamp.command("explode")
    assert boom["result"] == -1 and boom["comment"]
    assert lamp.command("dim level=1")["result"] == 0  # still answering


def test_wild_command_keeps_undeclared_keys(lamp):
    assert lamp.command("anything a=1 extra=two")["data"] == {"a": "1", "extra": "two"}


def test_builtin_help_view_attrs_write_attr(lamp):
    helped = lamp.command("help")
    names = [r["command"] for r in helped["data"]]
    assert {"dim", "anything", "help", "view-attrs", "write-attr", "view-gobj-tree"} <= set(names)
    dim = next(r for r in helped["data"] if r["command"] == "dim")
    assert "level=<int>" in dim["parameters"]
    assert lamp.command("view-attrs")["data"]["brightness"] == 50
    assert lamp.command("write-attr attr_name=brightness value=80")["result"] == 0
    assert lamp.read_attr("brightness") == 80
    refused = lamp.command("write-attr attr_name=switches value=3")
    assert refused["result"] == -1 and "not writable" in refused["comment"]


def _runtime(services: list, tmp_path, yuno: dict | None = None) -> YunoRuntime:
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path)},
                "yuno": {"yuno_role": "test", "yuno_name": "t1", **(yuno or {})},
                "services": services,
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    return rt


THREE_LEVELS = [
    {
        "name": "Alpha",
        "gclass": "T_LAMP",
        "as_service": True,
        "kw": {"owner": "a"},
        "children": [
            {
                "name": "beta",
                "gclass": "T_LAMP",
                "kw": {"owner": "b"},
                "children": [{"name": "gamma", "gclass": "T_COLLECTOR"}],
            },
            {"name": "delta", "gclass": "T_COLLECTOR", "as_service": True},
        ],
    }
]


def test_walk_orders_and_case_insensitive_services(tmp_path):
    rt = _runtime(THREE_LEVELS, tmp_path)
    try:
        alpha = rt.find_service("ALPHA")
        assert alpha is not None and alpha is rt.find_service("alpha")
        assert rt.find_service("__yuno__") is rt.root is rt.find_service("__ROOT__")
        assert rt.find_service("__default_service__") is alpha
        assert [g.name for g in alpha.walk("top_to_bottom")] == ["beta", "gamma", "delta"]
        assert [g.name for g in alpha.walk("bottom_to_top")] == ["gamma", "beta", "delta"]
        assert [g.name for g in rt.root.find(gclass="t_collector")] == ["gamma", "delta"]
        assert rt.find_gobj("GAMMA").gclass.name == "T_COLLECTOR"
    finally:
        rt.shutdown()


def test_view_gobj_tree_of_three_levels_has_every_gobj_with_state(tmp_path):
    rt = _runtime(THREE_LEVELS, tmp_path)
    try:
        rt.start()
        rt.find_gobj("beta").ask_event("EV_ON")
        tree = rt.root.command("view-gobj-tree attrs=brightness")["data"]

        def flatten(node, depth=0):
            yield depth, node
            for c in node["children"]:
                yield from flatten(c, depth + 1)

        nodes = {n["name"]: (d, n) for d, n in flatten(tree)}
        assert {"t1", "__periodic_timer__", "Alpha", "beta", "gamma", "delta"} <= set(nodes)
        assert nodes["gamma"][0] == 3
        assert nodes["beta"][1]["state"] == "ST_ON" and nodes["Alpha"][1]["state"] == "ST_OFF"
        assert nodes["beta"][1]["attrs"] == {"brightness": 50}
        assert all(n["running"] for _, n in nodes.values())
        assert nodes["gamma"][1]["gclass"] == "T_COLLECTOR"
        services = rt.root.command("view-services")["data"]
        assert {s["service"] for s in services} == {"Alpha", "delta"}
    finally:
        rt.shutdown()


def test_stop_tree_is_bottom_up_and_destroy_ends_actors(tmp_path):
    rt = _runtime(THREE_LEVELS, tmp_path)
    rt.start()
    gobjs = [rt.root, *rt.root.walk()]
    assert all(g.running for g in gobjs)
    rt.shutdown()
    assert not any(g.running for g in gobjs)
    assert all(not g._actor.is_alive() for g in gobjs)


def test_persistent_attrs_survive_a_new_runtime(tmp_path):
    rt = _runtime(THREE_LEVELS, tmp_path)
    rt.start()
    rt.find_gobj("beta").write_attr("brightness", 77)
    rt.find_gobj("beta").write_attr("label", "not persistent")
    rt.shutdown()
    store = list((tmp_path / "store").rglob("persistent-attrs.json"))
    assert len(store) == 1 and not list((tmp_path / "store").rglob("*.tmp"))
    rt2 = _runtime(THREE_LEVELS, tmp_path)
    try:
        assert rt2.find_gobj("beta").read_attr("brightness") == 77
        assert rt2.find_gobj("beta").read_attr("label") == ""
        assert rt2.find_gobj("Alpha").read_attr("brightness") == 50
    finally:
        rt2.shutdown()


def test_corrupt_persistent_store_stops_the_start_naming_the_file(tmp_path):
    rt = _runtime(THREE_LEVELS, tmp_path)
    rt.start()
    rt.find_gobj("beta").write_attr("brightness", 61)
    store = rt.persist_file
    rt.shutdown()
    store.write_text(store.read_text()[:-10])  # a torn file (never by us: writes are atomic)
    with pytest.raises(ConfigError) as err:
        _runtime(THREE_LEVELS, tmp_path)
    assert err.value.file == str(store) and "unreadable" in err.value.problem


TIMER_TREE = [
    {
        "name": "collector",
        "gclass": "T_COLLECTOR",
        "as_service": True,
        "children": [{"name": "tick", "gclass": "C_TIMER"}],
    }
]


def test_periodic_timer_never_fires_early_and_does_not_drift_over_100_periods(tmp_path):
    rt = _runtime(TIMER_TREE, tmp_path)
    try:
        rt.start()
        collector = rt.find_gobj("collector")
        timer = rt.find_gobj("tick")
        period = 0.020
        t0 = time.monotonic()
        timer.set_timeout_periodic(int(period * 1000))
        received = collector.attrs["received"]
        wait_for(lambda: len(received) >= 100, timeout=30)
        timer.clear_timeout()
        ticks = [t for ev, _kw, t in received[:100] if ev == "EV_TIMEOUT_PERIODIC"]
        assert len(ticks) == 100
        # Lateness of tick k against its deadline t0 + k*period. A timer re-armed from the
        # moment it fired would add every tick's latency to the next one (drift); ours re-arms
        # from the previous deadline, so the mean interval stays the period whatever the load
        # (a busy machine only delays single ticks), and no tick ever comes early.
        lateness = [t - (t0 + (k + 1) * period) for k, t in enumerate(ticks)]
        assert min(lateness) > -0.002, f"a tick came {-min(lateness) * 1000:.1f} ms early"
        mean_interval = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
        assert abs(mean_interval - period) < 0.002, f"mean interval {mean_interval * 1000:.2f} ms"
    finally:
        rt.shutdown()


def test_one_shot_timer_restart_and_stop(tmp_path):
    rt = _runtime(TIMER_TREE, tmp_path)
    try:
        rt.start()
        collector = rt.find_gobj("collector")
        timer = rt.find_gobj("tick")
        received = collector.attrs["received"]
        timer.set_timeout(30)
        wait_for(lambda: received)
        assert received[0][0] == "EV_TIMEOUT" and timer.state == "ST_STOPPED"
        timer.set_timeout(300)
        timer.set_timeout(20)  # restart: only the new deadline counts
        wait_for(lambda: len(received) == 2)
        timer.set_timeout(50)
        timer.clear_timeout()
        time.sleep(0.6)  # past both abandoned deadlines (300 ms and 50 ms)
        assert len(received) == 2 and timer.state == "ST_STOPPED"
    finally:
        rt.shutdown()
