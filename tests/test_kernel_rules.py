"""Kernel rules: tables checked when declared, one routing function, TLS listeners found by
what they are, one client TLS context builder."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from certs import TestCA

from gclasses.tls_listener import TLS_ATTRS, TLS_COMMANDS, TlsListener
from yuneta.config import load_config
from yuneta.errors import GClassError
from yuneta.gclass import Attr, Flag, GClassDef, register_gclass
from yuneta.gobj import GObj
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
    import subprocess
    import sys

    code = (
        "import sys, yuneta.gobj, yuneta.runtime, yuneta.config, yuneta.wsio, yuneta.ycommand;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gclasses'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
