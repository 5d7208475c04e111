"""Kernel rules: tables checked when declared, one routing function, TLS listeners found by
what they are, one client TLS context builder, and the thread rule checked."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from typing import Any

import pytest
from certs import TestCA
from clients import wait_for
from kernel_helpers import TLamp

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener
from yuneta import gobj as gobj_module
from yuneta.config import load_config
from yuneta.errors import GClassError, ThreadRuleError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj, create_gobj
from yuneta.runtime import YunoRuntime
from yuneta.tls_client import client_context

# A TLS listener gclass no list in C_YUNO names: it is found because it mixes TlsListener in.
T_TLS_PROBE = GClassDef(
    name="T_TLS_PROBE",
    description="A TLS listener that listens nowhere: only its certificate matters",
    attrs=(Attr("str", "url", Flag.RD, "tcps://127.0.0.1:0", "Never bound"), *TLS_ATTRS),
    commands=TLS_COMMANDS,
    states={"ST_IDLE": ()},
)


@register_gclass
class TTlsProbe(TlsListener, GObj):
    GCLASS = T_TLS_PROBE

    def mt_start(self) -> None:
        self.attrs["use_ssl"] = True
        self.build_ytls()


def _runtime(tmp_path: Any, services: list[dict]) -> YunoRuntime:
    config = load_config(
        [],
        extra=[
            {
                "environment": {"work_dir": str(tmp_path / "work")},
                "yuno": {"yuno_role": "rules", "yuno_name": "r1"},
                "services": services,
            }
        ],
    )
    rt = YunoRuntime(config)
    rt.build()
    rt.start()
    return rt


def test_fsm_row_with_an_undeclared_event_is_refused_when_declared():
    with pytest.raises(GClassError, match="EV_TYPO is not among its input_events"):
        GClassDef(
            name="T_BAD",
            attrs=(),
            input_events=("EV_GO",),
            states={"ST_IDLE": (("EV_GO", None, None), ("EV_TYPO", None, None))},
        )


def test_two_rows_for_one_event_in_a_state_are_refused():
    with pytest.raises(GClassError, match="two rows for event EV_GO"):
        GClassDef(
            name="T_BAD",
            attrs=(),
            input_events=("EV_GO",),
            states={"ST_IDLE": (("EV_GO", None, None), ("EV_GO", None, "ST_IDLE"))},
        )


def test_every_registered_gclass_rows_use_declared_events():
    from yuneta.gclass import _registry

    assert {"C_YUNO", "C_TIMER", "C_AGENT", "C_IEVENT_CLI", "T_LAMP"} <= set(_registry)
    for cls in _registry.values():
        gdef = cls.GCLASS
        events = {row[0] for rows in gdef.states.values() for row in rows}
        assert events <= set(gdef.input_events), gdef.name


def test_yuno_finds_a_tls_listener_by_what_it_is_not_by_its_name(tmp_path):
    ca = TestCA()
    issued = ca.issue(tmp_path / "c", "probe")
    rt = _runtime(
        tmp_path,
        [
            {"name": "probe", "gclass": "T_TLS_PROBE", "kw": {"crypto": issued.crypto()}},
            {"name": "lamp", "gclass": "T_LAMP", "kw": {"owner": "o"}},
        ],
    )
    try:
        assert rt.root is not None
        answer = rt.root.command("reload-certs")
        assert answer["result"] == 0, answer
        assert [d["gobj"] for d in answer["data"]["details"]] == ["probe"]
        certs = rt.root.command("view-cert")["data"]
        assert [(c["gobj"], c["serial"]) for c in certs] == [("probe", issued.serial)]
    finally:
        rt.shutdown()


def test_route_command_by_service_default_service_and_gobj_name(tmp_path):
    rt = _runtime(
        tmp_path,
        [
            {
                "name": "svc",
                "gclass": "T_LAMP",
                "as_service": True,
                "kw": {"owner": "o"},
                "children": [{"name": "inner", "gclass": "T_LAMP", "kw": {"owner": "i"}}],
            }
        ],
    )
    try:
        by_service = rt.route_command("dim level=3", service="SVC")
        assert by_service["result"] == 0 and by_service["data"]["level"] == 3
        assert rt.route_command("dim")["comment"] == "dimmed"  # default service
        by_gobj = rt.route_command("view-attrs", gobj="inner")
        assert by_gobj["data"]["owner"] == "i"
        assert rt.route_command("help", service="nope") == {
            "result": -1,
            "comment": "Service not found: 'nope'",
            "schema": None,
            "data": None,
        }
        assert rt.route_command("help", gobj="ghost")["comment"] == (
            "gobj 'ghost' not found in this yuno"
        )
    finally:
        rt.shutdown()


def test_client_context_verifies_wss_and_is_none_for_ws(tmp_path):
    assert client_context("ws://127.0.0.1:1991") is None
    ca = TestCA()
    ctx = client_context("WSS://127.0.0.1:1991", str(ca.write_ca(tmp_path / "ca.pem")))
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    subjects = [dict(rdn[0] for rdn in c["subject"]) for c in ctx.get_ca_certs()]
    assert [s["organizationName"] for s in subjects] == ["Yuneta Test CA"]
    insecure = client_context("wss://h:1", insecure=True)
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE


def test_the_kernel_imports_no_gclass_module():
    code = (
        "import sys, yuneta.gobj, yuneta.runtime, yuneta.config, yuneta.wsio, yuneta.ycommand;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gclasses'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# The thread rule and its debug check (on in the tests: conftest sets YUNETA_CHECK_THREADS)
# ---------------------------------------------------------------------------


def test_the_thread_check_is_on_in_the_tests():
    assert gobj_module.CHECK_THREADS


def test_a_write_to_attrs_off_the_actor_fails_loudly_and_changes_nothing():
    lamp = create_gobj("writer", TLamp, {"owner": "tests"})
    try:
        with pytest.raises(ThreadRuleError, match=r"T_LAMP\^writer: attribute 'label' written"):
            lamp.attrs["label"] = "from the test thread"
        with pytest.raises(ThreadRuleError):
            lamp.attrs.update(label="again")
        with pytest.raises(ThreadRuleError):
            lamp.attrs.pop("label")
        assert lamp.read_attr("label") == ""
        # The same write through the actor is the rule kept.
        lamp.write_attr("label", "by the actor")
        assert lamp.read_attr("label") == "by the actor"
        assert lamp.ask_event("EV_ON") == 0 and lamp.read_attr("switches") == 1
        assert len(gobj_module.THREAD_RULE_VIOLATIONS) == 3
    finally:
        gobj_module.THREAD_RULE_VIOLATIONS.clear()  # provoked on purpose
        lamp.destroy()


def test_writes_from_another_thread_pool_are_caught_too():
    lamp = create_gobj("pooled", TLamp, {"owner": "tests"})
    errors: list[BaseException] = []

    def write() -> None:
        try:
            lamp.attrs["switches"] += 1
        except ThreadRuleError as exc:
            errors.append(exc)

    try:
        workers = [threading.Thread(target=write) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert len(errors) == 4 and lamp.read_attr("switches") == 0
    finally:
        gobj_module.THREAD_RULE_VIOLATIONS.clear()  # provoked on purpose
        lamp.destroy()


def test_with_the_check_off_attrs_is_a_plain_dict(subprocess_env):
    env = {**subprocess_env, "YUNETA_CHECK_THREADS": "0"}
    code = (
        "import kernel_helpers; from yuneta.gobj import create_gobj;"
        "g = create_gobj('p', kernel_helpers.TLamp, {'owner': 'o'});"
        "print(type(g.attrs).__name__); g.destroy()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dict"


def test_mt_stats_returns_live_values_and_writes_nothing(tmp_path):
    rt = _runtime(
        tmp_path,
        [{"name": "echo", "gclass": "C_TCP_S", "kw": {"url": "tcp://127.0.0.1:0"}}],
    )
    try:
        listener = rt.find_gobj("echo")
        assert listener is not None
        stored = dict(listener.attrs)
        with socket.create_connection(("127.0.0.1", listener.read_attr("lPort")), timeout=10):
            wait_for(lambda: listener.mt_stats()["connxs"] == 1)
            # From this (foreign) thread: live values, and attrs untouched.
            assert listener.read_attr("connxs") == 1
            assert listener.public_attrs(["connxs", "tconnxs"]) == {"connxs": 1, "tconnxs": 1}
            tree = rt.root.command("view-gobj-tree attrs=connxs")["data"]
            assert _tree_attrs(tree, "echo") == {"connxs": 1}
            assert dict(listener.attrs) == stored
    finally:
        rt.shutdown()


def _tree_attrs(node: dict, name: str) -> dict | None:
    if node["name"] == name:
        return node.get("attrs")
    for child in node["children"]:
        found = _tree_attrs(child, name)
        if found is not None:
            return found
    return None
