"""The series of the host's `/metrics`, built from one collected snapshot.

C_METRICS (gclasses/c_metrics.py) collects, every refresh, the answers of commands that
already exist: per yuno `view-gobj-tree attrs=...` (every listener's counters) and
`cert-expiry-status` (every TLS listener's certificate and the yuno's thresholds), and the
agent's `cert-sync-status`. This module turns such a `Snapshot` into Prometheus metric
families (prometheus_client). It is tables: a listener counter is one row of
`LISTENER_SERIES` naming the attribute it reads (a new gclass's counter plugs in by
adding a row), a cert-sync field one row of `SYNC_SERIES`. Names follow Prometheus
conventions: base units, Unix times as `_timestamp_seconds`, counters end in `_total`.
A yuno that did not answer the last refresh exports only `yuneta_yuno_up 0` and when it
was last seen: its other series go stale rather than repeat old values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

DAY = 86400
YUNO_LABELS = ("yuno_role", "yuno_name")
LISTENER_LABELS = ("yuno_role", "yuno_name", "listener")


@dataclass(frozen=True)
class Series:
    """One listener counter: the attribute `view-gobj-tree` gives, the family it feeds,
    and, when the attribute means something else elsewhere, the one gclass it is read from."""

    attr: str
    family: str
    kind: str  # "gauge" or "counter"
    help: str
    gclass: str = ""


#: Listener attributes read from `view-gobj-tree`. A gobj is a listener when it has
#: `use_ssl` (every listener gclass mixes in the TLS attributes). Two attributes may feed
#: one family (C_IEVENT_SRV calls its open connections `clients`).
LISTENER_SERIES: tuple[Series, ...] = (
    Series("connxs", "yuneta_listener_connections", "gauge", "Connections open now"),
    Series("clients", "yuneta_listener_connections", "gauge", "Connections open now"),
    Series(
        "tconnxs",
        "yuneta_listener_connections_accepted",
        "counter",
        "Connections accepted (handshake done) since the yuno started",
    ),
    Series(
        "rejected",
        "yuneta_listener_connections_rejected",
        "counter",
        "Connections refused by only_allowed_ips",
        "C_TCP_S",
    ),
    Series(
        "handshake_failures",
        "yuneta_tls_handshake_failures",
        "counter",
        "TLS or DTLS handshakes that failed",
    ),
    Series("sessions", "yuneta_dtls_sessions", "gauge", "DTLS sessions (peers) live now"),
    Series(
        "tsessions",
        "yuneta_dtls_sessions_accepted",
        "counter",
        "DTLS sessions (peers) admitted since the yuno started",
    ),
    Series(
        "cookie_rejections",
        "yuneta_dtls_cookie_rejections",
        "counter",
        "ClientHellos answered statelessly for want of a valid cookie (a flood shows here)",
    ),
    Series(
        "rejected",
        "yuneta_udp_datagrams_rejected",
        "counter",
        "Datagrams refused by only_allowed_ips",
        "C_UDP_S",
    ),
    Series(
        "dropped",
        "yuneta_udp_datagrams_dropped",
        "counter",
        "Datagrams from unknown peers that opened nothing",
        "C_UDP_S",
    ),
    Series(
        "refused",
        "yuneta_udp_datagrams_refused",
        "counter",
        "Datagrams of new peers refused at max_sessions",
        "C_UDP_S",
    ),
)

#: Every attribute `view-gobj-tree` is asked for.
TREE_ATTRS = ",".join(
    dict.fromkeys(
        ("use_ssl", "reloads", "reload_failures", "last_reload_error")
        + tuple(row.attr for row in LISTENER_SERIES)
    )
)

#: `cert-sync-status` fields exported as they are (`attr` is the key in its data).
SYNC_SERIES: tuple[Series, ...] = (
    Series("enabled", "yuneta_cert_sync_enabled", "gauge", "1 when the agent's cert-sync runs"),
    Series(
        "interval_sec",
        "yuneta_cert_sync_interval_seconds",
        "gauge",
        "Seconds between certificate sync ticks",
    ),
    Series(
        "last_check",
        "yuneta_cert_sync_last_check_timestamp_seconds",
        "gauge",
        "Unix time of the last sync tick (0: never)",
    ),
    Series(
        "last_action",
        "yuneta_cert_sync_last_action_timestamp_seconds",
        "gauge",
        "Unix time the last sync tick found a change and reloaded (0: never)",
    ),
    Series(
        "failures",
        "yuneta_cert_sync_failures",
        "counter",
        "Sync ticks whose copy failed with nothing changed",
    ),
    Series(
        "deploy_hook_last_run",
        "yuneta_deploy_hook_last_run_timestamp_seconds",
        "gauge",
        "Unix time the certbot deploy hook last ran (0: never)",
    ),
)

#: The values `cert_sync_last_result` takes (SPEC 5); each is exported, 1 for the current.
SYNC_RESULTS = (
    "",
    "reloaded",
    "reloaded (copy script reported error)",
    "copy-script-failed",
    "no-change",
)


@dataclass(frozen=True)
class YunoSample:
    """One yuno as the last refresh saw it. `tree` and `expiry` are the data of
    `view-gobj-tree` and `cert-expiry-status` when it answered (`up`), else None."""

    role: str
    name: str
    up: bool
    last_seen: float = 0.0
    collect_seconds: float = 0.0
    tree: dict | None = None
    expiry: dict | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape exports. Built by C_METRICS's actor, then only read."""

    taken: float = 0.0
    duration: float = 0.0
    yunos: tuple[YunoSample, ...] = ()
    sync: dict | None = None
    renewal_period: float = 0.0


def listeners_of(tree: dict) -> Iterator[dict]:
    """Every node of a `view-gobj-tree` answer that is a listener (has `use_ssl`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        attrs = node.get("attrs")
        if isinstance(attrs, dict) and "use_ssl" in attrs:
            yield node
        children = node.get("children")
        if isinstance(children, list):
            stack.extend(reversed(children))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _epoch(cert: dict, key: str) -> float | None:
    """`not_after`/`not_before` as Unix seconds: the original's integer key, or our
    `<key>_epoch` while `view-cert` gives that key as ISO text."""
    value = _number(cert.get(key))
    return value if value is not None else _number(cert.get(f"{key}_epoch"))


class _Families:
    """Families by name, created on first use; a repeated label set is dropped (two gobjs
    of one name in a yuno) so that a scrape never carries a duplicate sample."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(
        self, kind: str, name: str, help_: str, labels: tuple[str, ...], values: tuple, value: float
    ) -> None:
        key = (name, tuple(str(v) for v in values))
        if key in self._seen:
            return
        self._seen.add(key)
        family = self._families.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, help_, labels=list(labels))
            self._families[name] = family
        # Families under `add`'s names are only ever made here: counters or gauges.
        cast(CounterMetricFamily | GaugeMetricFamily, family).add_metric(
            [str(v) for v in values], value
        )

    def add_info(
        self, name: str, help_: str, labels: tuple[str, ...], values: tuple, info: dict[str, str]
    ) -> None:
        key = (name, tuple(str(v) for v in values))
        if key in self._seen:
            return
        self._seen.add(key)
        family = self._families.get(name)
        if not isinstance(family, InfoMetricFamily):  # names under add_info are only made here
            family = InfoMetricFamily(name, help_, labels=list(labels))
            self._families[name] = family
        family.add_metric([str(v) for v in values], info)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def families(snap: Snapshot) -> list[Metric]:
    """The metric families of one snapshot."""
    out = _Families()
    for y in snap.yunos:
        who = (y.role, y.name)
        out.add(
            "gauge",
            "yuneta_yuno_up",
            "1 when the yuno answered the last refresh",
            YUNO_LABELS,
            who,
            1.0 if y.up else 0.0,
        )
        out.add(
            "gauge",
            "yuneta_yuno_last_seen_timestamp_seconds",
            "Unix time the yuno last answered a refresh (0: never)",
            YUNO_LABELS,
            who,
            y.last_seen,
        )
        if not y.up:
            continue
        out.add(
            "gauge",
            "yuneta_yuno_collect_duration_seconds",
            "Seconds the yuno took to answer the last refresh",
            YUNO_LABELS,
            who,
            y.collect_seconds,
        )
        _yuno_listeners(out, y)
    if snap.sync is not None:
        _sync(out, snap)
    out.add(
        "gauge",
        "yuneta_cert_renewal_period_seconds",
        "Expected seconds between certificate renewals (the deploy hook runs at each)",
        (),
        (),
        snap.renewal_period,
    )
    out.add(
        "gauge",
        "yuneta_metrics_refresh_timestamp_seconds",
        "Unix time the exported values were collected",
        (),
        (),
        snap.taken,
    )
    out.add(
        "gauge",
        "yuneta_metrics_refresh_duration_seconds",
        "Seconds the last collection from every yuno took",
        (),
        (),
        snap.duration,
    )
    return list(out)


def _yuno_listeners(out: _Families, y: YunoSample) -> None:
    who = (y.role, y.name)
    expiry = y.expiry or {}
    for key, name in (
        ("warn_threshold", "warning"),
        ("critical_threshold", "critical"),
    ):
        days = _number(expiry.get(key))
        if days is not None:
            out.add(
                "gauge",
                f"yuneta_cert_expiry_{name}_threshold_seconds",
                f"The yuno's {name} threshold (cert_{'warn' if name == 'warning' else name}_days)"
                " in seconds: days_remaining at or below it logs and alerts",
                YUNO_LABELS,
                who,
                days * DAY,
            )
    for node in listeners_of(y.tree or {}):
        attrs, listener = node["attrs"], str(node.get("name", ""))
        labels = (*who, listener)
        gclass = node.get("gclass", "")
        for row in LISTENER_SERIES:
            value = _number(attrs.get(row.attr))
            if value is not None and row.gclass in ("", gclass):
                out.add(row.kind, row.family, row.help, LISTENER_LABELS, labels, value)
        if not attrs.get("use_ssl"):
            continue
        for result, attr in (("success", "reloads"), ("failure", "reload_failures")):
            value = _number(attrs.get(attr))
            if value is not None:
                out.add(
                    "counter",
                    "yuneta_tls_reloads",
                    "Certificate reloads by result (a failure keeps the old certificate)",
                    (*LISTENER_LABELS, "result"),
                    (*labels, result),
                    value,
                )
        if "last_reload_error" in attrs:
            out.add(
                "gauge",
                "yuneta_tls_last_reload_failed",
                "1 when the listener's last reload was refused (it serves the old certificate)",
                LISTENER_LABELS,
                labels,
                1.0 if attrs["last_reload_error"] else 0.0,
            )
    for cert in expiry.get("details") or []:
        if not isinstance(cert, dict):
            continue
        labels = (*who, str(cert.get("gobj", "")))
        for key in ("not_before", "not_after"):
            value = _epoch(cert, key)
            if value is not None:
                out.add(
                    "gauge",
                    f"yuneta_tls_cert_{key}_timestamp_seconds",
                    f"Unix time of the served certificate's {key.replace('_', ' ')}",
                    LISTENER_LABELS,
                    labels,
                    value,
                )
        out.add_info(
            "yuneta_tls_cert",
            "Certificate a TLS listener serves now",
            LISTENER_LABELS,
            labels,
            {key: str(cert.get(key, "")) for key in ("subject", "issuer", "serial")},
        )


def _sync(out: _Families, snap: Snapshot) -> None:
    sync = snap.sync or {}
    for row in SYNC_SERIES:
        value = _number(sync.get(row.attr))
        if value is not None:
            out.add(row.kind, row.family, row.help, (), (), value)
    current = sync.get("last_result")
    if isinstance(current, str):
        for result in dict.fromkeys((*SYNC_RESULTS, current)):
            out.add(
                "gauge",
                "yuneta_cert_sync_last_result",
                'Result of the last sync tick: 1 for the current one ("" before the first)',
                ("result",),
                (result,),
                1.0 if result == current else 0.0,
            )
    lagging = [e for e in sync.get("lagging") or [] if isinstance(e, dict)]
    out.add(
        "gauge",
        "yuneta_cert_sync_listeners_lagging",
        "TLS listeners serving another certificate than the store's after a sync tick",
        (),
        (),
        float(len(lagging)),
    )
    for entry in lagging:
        # cert-sync names the yuno `role^name` and the listener by gobj ("*": the yuno
        # did not answer at all); `since` is when the tick first found it lagging.
        role, _, name = str(entry.get("yuno", "")).partition("^")
        since = _number(entry.get("since"))
        out.add(
            "gauge",
            "yuneta_cert_sync_listener_lagging_seconds",
            "Seconds a listener has been serving another certificate than the store's",
            LISTENER_LABELS,
            (role, name, str(entry.get("gobj", ""))),
            max(0.0, snap.taken - since) if since is not None else 0.0,
        )


class SnapshotCollector(Collector):
    """A prometheus_client collector exporting whatever snapshot `get` returns now: a
    scrape reads state already collected and never waits for a yuno."""

    def __init__(self, get: Any) -> None:
        self._get = get

    def collect(self) -> Iterator[Metric]:
        yield from families(self._get())
