"""Grafana dashboards for lvsguard, generated from plain Python data.

The JSON files next to this script are its output and are committed, so that
Grafana's file provisioning (provisioning/dashboards.yml) or "Import dashboard"
can use them as they are. Edit this file, not the JSON:

    python dashboards/generate.py            # rewrite the JSON files
    python dashboards/generate.py --check    # exit 1 when a JSON file is stale

Every panel queries the data source chosen in the ``datasource`` variable, never
a fixed uid, so the dashboards work in any Grafana with a Prometheus that
scrapes the exporters (and the actuators). Panels are laid out left to right in
Grafana's 24-column grid; rows start a new line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Panel = dict[str, Any]

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

METRICS = {
    # exporter (docs/metrics.md)
    "ipvs_up",
    "lvsguard_exporter_info",
    "lvsguard_scrape_duration_seconds",
    "ipvs_connections_total",
    "ipvs_incoming_packets_total",
    "ipvs_outgoing_packets_total",
    "ipvs_incoming_bytes_total",
    "ipvs_outgoing_bytes_total",
    "ipvs_service_info",
    "ipvs_service_connections_total",
    "ipvs_service_incoming_packets_total",
    "ipvs_service_outgoing_packets_total",
    "ipvs_service_incoming_bytes_total",
    "ipvs_service_outgoing_bytes_total",
    "ipvs_backend_connections_total",
    "ipvs_backend_incoming_packets_total",
    "ipvs_backend_outgoing_packets_total",
    "ipvs_backend_incoming_bytes_total",
    "ipvs_backend_outgoing_bytes_total",
    "ipvs_backend_connections_active",
    "ipvs_backend_connections_inactive",
    "ipvs_backend_connections_persistent",
    "ipvs_backend_weight",
    "ipvs_sync_daemon_up",
    "lvs_director_vip_owned",
    # exporter probes (docs/probes.md)
    "lvs_probe_success",
    "lvs_probe_duration_seconds_bucket",
    "lvs_backend_healthy",
    "lvs_backend_health_changes_total",
    # exporter passive detection (docs/probes.md#passive-detection)
    "lvs_backend_handshake_failures_total",
    "lvs_backend_passive_verdicts_total",
    "lvs_backend_passive_holddown_seconds",
    # actuator (docs/actuator.md)
    "lvsguard_actions_total",
    "lvsguard_refusals_total",
    "lvsguard_quarantined",
    "lvsguard_webhook_requests_total",
    "lvsguard_failover_requested_total",
    "lvsguard_table_drift",
    # actuator with cluster.store: etcd (docs/cluster.md)
    "lvsguard_cluster_store_up",
    "lvsguard_cluster_convergence_lag_seconds",
    "lvsguard_cluster_apply_seconds",
    "lvsguard_cluster_pending_holds",
    "lvsguard_cluster_queued",
    "lvsguard_cluster_last_sync_timestamp_seconds",
    # Prometheus itself
    "up",
}
"""Every metric a dashboard may query: the exporter's and actuator's contract."""

SVC = "local_address, local_port, proto, local_mark, service"
RS = "remote_address, remote_port, real_server"
D = 'instance=~"$director"'
S = 'instance=~"$director",${service:raw}'
SVC_LEGEND = "{{proto}} {{local_address}}:{{local_port}} {{local_mark}} {{service}}"
RS_LEGEND = "{{remote_address}}:{{remote_port}} {{real_server}}"


# --- panels -------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    """One PromQL query; refIds are given by the panel, in order."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    """Absolute threshold steps, the first one with value None (the base colour)."""
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


def value_map(*entries: tuple[int, str, str]) -> list[dict[str, Any]]:
    """Value mappings: (value, text, colour)."""
    options = {str(value): {"color": color, "index": i, "text": text} for i, (value, text, color) in enumerate(entries)}
    return [{"type": "value", "options": options}]


def _panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], w: int, h: int) -> Panel:
    for ref, t in zip("ABCDEFGH", targets):
        t["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": h, "w": w},
        "targets": targets,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    bars: bool = False,
    steps: bool = False,
    max_value: float | None = None,
    negative_y: str | None = None,
    threshold_lines: dict[str, Any] | None = None,
) -> Panel:
    """A time series; ``negative_y`` is a regex of series names drawn below zero (out vs in)."""
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else (25 if stack else 10),
        "lineInterpolation": "stepAfter" if steps else "linear",
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "line" if threshold_lines else "off"},
    }
    defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "unit": unit,
        "thresholds": threshold_lines or thresholds(("green", None)),
    }
    if negative_y is None:
        defaults["min"] = 0
    if max_value is not None:
        defaults["max"] = max_value
    overrides = []
    if negative_y is not None:
        overrides.append(
            {
                "matcher": {"id": "byRegexp", "options": negative_y},
                "properties": [{"id": "custom.transform", "value": "negative-Y"}],
            }
        )
    panel = _panel("timeseries", title, description, targets, w, h)
    panel["fieldConfig"] = {"defaults": defaults, "overrides": overrides}
    panel["options"] = {
        "legend": {
            "calcs": ["mean", "max", "lastNotNull"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "none",
    steps: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    legend: str = "",
    w: int = 4,
    h: int = 4,
) -> Panel:
    """One number (or one per series), coloured by thresholds or value mappings."""
    panel = _panel("stat", title, description, [target(expr, legend, instant=True)], w, h)
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "thresholds"},
            "mappings": mappings or [],
            "thresholds": steps or thresholds(("blue", None)),
            "unit": unit,
        },
        "overrides": [],
    }
    panel["options"] = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    return panel


def table(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    columns: dict[str, str],
    overrides: list[dict[str, Any]] | None = None,
    w: int = 12,
    h: int = 8,
) -> Panel:
    """Instant queries merged into one table; ``columns`` maps field names to headers (others are hidden)."""
    for t in targets:
        t.update(format="table", instant=True, range=False)
    panel = _panel("table", title, description, targets, w, h)
    panel["fieldConfig"] = {
        "defaults": {"custom": {"align": "auto"}, "thresholds": thresholds(("green", None))},
        "overrides": overrides or [],
    }
    panel["options"] = {
        "cellHeight": "sm",
        "showHeader": True,
        "sortBy": [{"desc": False, "displayName": next(iter(columns.values()))}],
    }
    panel["transformations"] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {
                    "Time": True,
                    "__name__": True,
                    "job": True,
                    **({} if "Value" in columns else {"Value": True}),
                },
                "includeByName": {name: True for name in columns},
                "indexByName": {name: i for i, name in enumerate(columns)},
                "renameByName": columns,
            },
        },
    ]
    return panel


def state_timeline(
    title: str, description: str, expr: str, legend: str, *, mappings: list[dict[str, Any]], w: int = 12, h: int = 8
) -> Panel:
    """States over time, one lane per series (up/down, active/standby)."""
    panel = _panel("state-timeline", title, description, [target(expr, legend)], w, h)
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "thresholds"},
            "custom": {"fillOpacity": 80, "lineWidth": 0},
            "mappings": mappings,
            "thresholds": thresholds(("text", None)),
        },
        "overrides": [],
    }
    panel["options"] = {
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "mergeValues": True,
        "rowHeight": 0.9,
        "showValue": "auto",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel


def heatmap(title: str, description: str, expr: str, *, unit: str, w: int = 12, h: int = 8) -> Panel:
    """A Prometheus histogram's buckets over time (``expr`` sums increase() by ``le``)."""
    panel = _panel("heatmap", title, description, [target(expr, "{{le}}", fmt="heatmap")], w, h)
    panel["fieldConfig"] = {
        "defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}},
        "overrides": [],
    }
    panel["options"] = {
        "calculate": False,
        "cellGap": 1,
        "color": {
            "exponent": 0.5,
            "fill": "dark-orange",
            "mode": "scheme",
            "scale": "exponential",
            "scheme": "Oranges",
            "steps": 64,
        },
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"show": True, "yHistogram": False},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
    }
    return panel


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": GRID_WIDTH}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Give every panel an id and an x/y: left to right, wrapping at 24 columns."""
    x = y = line_height = 0
    for number, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if panel["type"] == "row" or x + grid["w"] > GRID_WIDTH:
            y, x, line_height = y + line_height, 0, 0
        grid.update(x=x, y=y)
        panel["id"] = number
        x += grid["w"]
        line_height = max(line_height, grid["h"])
        if panel["type"] == "row":
            y, x, line_height = y + grid["h"], 0, 0
    return panels


# --- variables and dashboards -------------------------------------------------


def datasource_variable() -> dict[str, Any]:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str, *, multi: bool, regex: str = "") -> dict[str, Any]:
    return {
        "current": {},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": regex,
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


DIRECTOR = query_variable("director", "Director", "label_values(ipvs_up, instance)", multi=True)

# The value is the service's own label matchers, e.g.
# local_address="192.0.2.10",local_port="80",proto="TCP",service="web",
# used as ${service:raw} inside a selector.
SERVICE = query_variable(
    "service",
    "Virtual service",
    f"query_result(max by ({SVC}) (ipvs_service_info{{{D}}}))",
    multi=False,
    regex="/\\{(?<value>[^}]+)\\}/",
)


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]
) -> dict[str, Any]:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "tags": ["lvsguard"],
                "title": "lvsguard",
                "type": "dashboards",
            }
        ],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["lvsguard", "lvs", "ipvs"],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


UP_DOWN = value_map((0, "down", "red"), (1, "up", "green"))
PER_SERVICE = f"by ({SVC})"


def overview() -> dict[str, Any]:
    """Directors, VIP owners, traffic, healthy/total real servers, actuator activity, exporter health."""
    panels = [
        row("Cluster"),
        stat("Directors", "Exporters reporting an IPVS table.", f"count(ipvs_up{{{D}}})"),
        stat(
            "IPVS readable",
            "0 when an exporter cannot read its kernel's IPVS table (ipvs_up).",
            f"min(ipvs_up{{{D}}})",
            mappings=value_map((0, "unreadable", "red"), (1, "yes", "green")),
        ),
        stat(
            "Virtual services",
            "Distinct virtual services over the directors.",
            f"count(count {PER_SERVICE} (ipvs_service_info{{{D}}}))",
        ),
        stat(
            "Real servers",
            "Distinct real servers over all virtual services.",
            f"count(count by ({SVC}, {RS}) (ipvs_backend_weight{{{D}}}))",
        ),
        stat(
            "Unhealthy real servers",
            "Real servers that fail their health checks on at least one director (after rise/fall).",
            f"count(min by ({SVC}, {RS}) (lvs_backend_healthy{{{D}}}) == 0) or vector(0)",
            steps=thresholds(("green", None), ("red", 1)),
        ),
        stat(
            "Quarantined",
            "Real servers an actuator holds at weight 0.",
            f"count(max by ({SVC}, {RS}) (lvsguard_quarantined) > 0) or vector(0)",
            steps=thresholds(("green", None), ("orange", 1)),
        ),
        table(
            "Who holds each VIP",
            "The director that has each virtual IP on an interface (lvs_director_vip_owned).",
            [target(f"max by (vip, instance, interface) (lvs_director_vip_owned{{{D}}}) == 1")],
            columns={"vip": "VIP", "instance": "Director", "interface": "Interface"},
            h=6,
        ),
        stat(
            "Directors holding each VIP",
            "1 is right; 0 means nobody answers on the VIP, 2 or more is a VRRP split brain.",
            "sum by (vip) (max by (vip, instance) (lvs_director_vip_owned))",
            legend="{{vip}}",
            steps=thresholds(("red", None), ("green", 1), ("red", 2)),
            w=12,
            h=6,
        ),
        row("Traffic"),
        timeseries(
            "New connections",
            "Connections scheduled per second, per director (host totals).",
            [target(f"sum by (instance) (rate(ipvs_connections_total{{{D}}}[$__rate_interval]))", "{{instance}}")],
            unit="cps",
            w=8,
        ),
        timeseries(
            "Packets",
            "Packets per second through IPVS, in (up) and out (down), per director.",
            [
                target(
                    f"sum by (instance) (rate(ipvs_incoming_packets_total{{{D}}}[$__rate_interval]))", "{{instance}} in"
                ),
                target(
                    f"sum by (instance) (rate(ipvs_outgoing_packets_total{{{D}}}[$__rate_interval]))",
                    "{{instance}} out",
                ),
            ],
            unit="pps",
            negative_y=".* out$",
            w=8,
        ),
        timeseries(
            "Throughput",
            "Bits per second through IPVS, in (up) and out (down), per director. Out is 0 for DR and TUN services: replies bypass the director.",
            [
                target(
                    f"sum by (instance) (rate(ipvs_incoming_bytes_total{{{D}}}[$__rate_interval])) * 8",
                    "{{instance}} in",
                ),
                target(
                    f"sum by (instance) (rate(ipvs_outgoing_bytes_total{{{D}}}[$__rate_interval])) * 8",
                    "{{instance}} out",
                ),
            ],
            unit="bps",
            negative_y=".* out$",
            w=8,
        ),
        timeseries(
            "New connections per virtual service",
            "Connections scheduled per second by each virtual service, over the selected directors.",
            [target(f"sum {PER_SERVICE} (rate(ipvs_service_connections_total{{{D}}}[$__rate_interval]))", SVC_LEGEND)],
            unit="cps",
        ),
        timeseries(
            "Active connections per director",
            "Established connections in each director's table (a standby with connection sync shows the synced ones).",
            [target(f"sum by (instance) (ipvs_backend_connections_active{{{D}}})", "{{instance}}")],
            unit="short",
        ),
        row("Real servers and actuator"),
        table(
            "Healthy / total real servers per virtual service",
            "Healthy: passes its health checks on every selected director. In rotation: weight above 0.",
            [
                target(
                    f"count {PER_SERVICE} (min by ({SVC}, {RS}) (lvs_backend_healthy{{{D}}}) == 1)"
                    f" or max {PER_SERVICE} (ipvs_service_info{{{D}}}) * 0"
                ),
                target(f"count {PER_SERVICE} (max by ({SVC}, {RS}) (ipvs_backend_weight{{{D}}}))"),
                target(
                    f"count {PER_SERVICE} (max by ({SVC}, {RS}) (ipvs_backend_weight{{{D}}}) > 0)"
                    f" or max {PER_SERVICE} (ipvs_service_info{{{D}}}) * 0"
                ),
            ],
            columns={
                "proto": "Protocol",
                "local_address": "Address",
                "local_port": "Port",
                "local_mark": "Mark",
                "service": "Name",
                "Value #A": "Healthy",
                "Value #B": "Total",
                "Value #C": "In rotation",
            },
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Healthy"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {"id": "thresholds", "value": thresholds(("red", None), ("green", 1))},
                    ],
                }
            ],
            w=24,
        ),
        timeseries(
            "Quarantined real servers",
            "Real servers each actuator holds at weight 0 (lvsguard_quarantined).",
            [target("sum by (instance) (lvsguard_quarantined)", "{{instance}}")],
            unit="short",
            steps=True,
            w=8,
        ),
        timeseries(
            "Actuator actions",
            "Actions decided by the actuators, by action and result.",
            [
                target(
                    "sum by (action, result) (increase(lvsguard_actions_total[$__rate_interval]))",
                    "{{action}} {{result}}",
                )
            ],
            unit="short",
            bars=True,
            w=8,
        ),
        timeseries(
            "Refusals and webhook errors",
            "Actions the safety rules refused, by reason; webhook calls answered with an error, by status.",
            [
                target("sum by (reason) (increase(lvsguard_refusals_total[$__rate_interval]))", "refused: {{reason}}"),
                target(
                    'sum by (status) (increase(lvsguard_webhook_requests_total{status!~"2.."}[$__rate_interval]))',
                    "webhook HTTP {{status}}",
                ),
            ],
            unit="short",
            bars=True,
            w=8,
        ),
        row("Exporters"),
        state_timeline(
            "Scrapes",
            "Whether Prometheus could scrape each director's exporter (up).",
            f"up{{{D}}}",
            "{{instance}}",
            mappings=UP_DOWN,
            w=8,
        ),
        timeseries(
            "Scrape duration",
            "Time the exporter spent reading the IPVS table and rendering its metrics.",
            [target(f"lvsguard_scrape_duration_seconds{{{D}}}", "{{instance}}")],
            unit="s",
            w=8,
        ),
        table(
            "Exporter versions",
            "lvsguard version and the source of the IPVS table (netlink; procfs has no traffic counters).",
            [target(f"lvsguard_exporter_info{{{D}}}")],
            columns={"instance": "Director", "version": "Version", "ipvs_source": "IPVS source"},
            w=8,
        ),
    ]
    return dashboard(
        "lvsguard-overview",
        "LVS cluster overview",
        "Directors, VIP owners, traffic, real-server health and the actuators' actions of an LVS/IPVS cluster (lvsguard).",
        [DIRECTOR],
        panels,
    )


def share(metric_expr: str) -> str:
    """Each real server's part (0..1) of the sum over the service's real servers."""
    return f"sum by ({RS}) ({metric_expr}) / ignoring({RS}) group_left sum({metric_expr})"


def virtual_service() -> dict[str, Any]:
    """One virtual service: per-real-server shares, connections, weights, probes, imbalance."""
    conns = f"rate(ipvs_backend_connections_total{{{S}}}[$__rate_interval])"
    weight = f"ipvs_backend_weight{{{S}}}"
    bytes_ = (
        f"rate(ipvs_backend_incoming_bytes_total{{{S}}}[$__rate_interval])"
        f" + rate(ipvs_backend_outgoing_bytes_total{{{S}}}[$__rate_interval])"
    )
    probe_buckets = f"rate(lvs_probe_duration_seconds_bucket{{{S}}}[$__rate_interval])"
    panels = [
        row("Virtual service"),
        stat(
            "Healthy real servers",
            "Real servers that pass their health checks on every selected director.",
            f"count(min by ({RS}) (lvs_backend_healthy{{{S}}}) == 1) or vector(0)",
            steps=thresholds(("red", None), ("green", 1)),
        ),
        stat("Real servers", "Real servers of the service.", f"count(count by ({RS}) ({weight}))"),
        stat(
            "In rotation",
            "Real servers with a weight above 0 (new connections go only to them).",
            f"count(max by ({RS}) ({weight}) > 0) or vector(0)",
            steps=thresholds(("red", None), ("green", 1)),
        ),
        stat(
            "Quarantined",
            "Real servers of the service an actuator holds at weight 0.",
            "count(max by (remote_address, remote_port) (lvsguard_quarantined{${service:raw}}) > 0) or vector(0)",
            steps=thresholds(("green", None), ("orange", 1)),
        ),
        stat(
            "New connections",
            "Connections scheduled per second by the service.",
            f"sum(rate(ipvs_service_connections_total{{{S}}}[$__rate_interval]))",
            unit="cps",
        ),
        stat(
            "Active connections",
            "Established connections of the service.",
            f"sum(ipvs_backend_connections_active{{{S}}})",
        ),
        row("Real servers"),
        timeseries(
            "Share of new connections",
            "Each real server's part of the service's new connections.",
            [target(share(conns), RS_LEGEND)],
            unit="percentunit",
            stack=True,
            max_value=1,
            w=8,
        ),
        timeseries(
            "Share of the weight",
            "Each real server's part of the sum of weights: what the scheduler aims at.",
            [target(share(weight), RS_LEGEND)],
            unit="percentunit",
            stack=True,
            max_value=1,
            steps=True,
            w=8,
        ),
        timeseries(
            "Connection share / weight share",
            "1 is as weighted. Below 0.5 or above 2 for 15 minutes raises LvsConnectionImbalance"
            " (a server that accepts and drops connections attracts more of them under lc/wlc).",
            [target(f"({share(conns)}) / ({share(weight)} > 0)", RS_LEGEND)],
            unit="none",
            threshold_lines=thresholds(("transparent", None), ("red", 0.5), ("red", 2)),
            w=8,
        ),
        timeseries(
            "Share of bytes",
            "Each real server's part of the service's bytes (in + out; out is 0 for DR and TUN).",
            [target(share(bytes_), RS_LEGEND)],
            unit="percentunit",
            stack=True,
            max_value=1,
            w=8,
        ),
        timeseries(
            "Active connections",
            "Established connections per real server.",
            [target(f"sum by ({RS}) (ipvs_backend_connections_active{{{S}}})", RS_LEGEND)],
            unit="short",
            w=8,
        ),
        timeseries(
            "Inactive connections",
            "Connections in other states (FIN_WAIT, TIME_WAIT, UDP) per real server.",
            [target(f"sum by ({RS}) (ipvs_backend_connections_inactive{{{S}}})", RS_LEGEND)],
            unit="short",
            w=8,
        ),
        timeseries(
            "Weights",
            "Scheduling weight of each real server on each director (0: quarantined or drained).",
            [target(weight, RS_LEGEND + " on {{instance}}")],
            unit="short",
            steps=True,
        ),
        timeseries(
            "Traffic per real server",
            "Bits per second per real server, in (up) and out (down).",
            [
                target(
                    f"sum by ({RS}) (rate(ipvs_backend_incoming_bytes_total{{{S}}}[$__rate_interval])) * 8",
                    RS_LEGEND + " in",
                ),
                target(
                    f"sum by ({RS}) (rate(ipvs_backend_outgoing_bytes_total{{{S}}}[$__rate_interval])) * 8",
                    RS_LEGEND + " out",
                ),
            ],
            unit="bps",
            negative_y=".* out$",
        ),
        row("Health checks"),
        state_timeline(
            "Health",
            "Health of each real server as each director's probes see it, after rise/fall.",
            f"lvs_backend_healthy{{{S}}}",
            RS_LEGEND + " on {{instance}}",
            mappings=UP_DOWN,
        ),
        timeseries(
            "Probe success",
            "Fraction of successful probes per real server and check.",
            [
                target(
                    f"avg by ({RS}, check) (avg_over_time(lvs_probe_success{{{S}}}[$__rate_interval]))",
                    RS_LEGEND + " {{check}}",
                )
            ],
            unit="percentunit",
            max_value=1,
        ),
        timeseries(
            "Probe latency",
            "Quantiles of probe duration over the service's real servers.",
            [
                target(f"histogram_quantile(0.5, sum by (le) ({probe_buckets}))", "p50"),
                target(f"histogram_quantile(0.9, sum by (le) ({probe_buckets}))", "p90"),
                target(f"histogram_quantile(0.99, sum by (le) ({probe_buckets}))", "p99"),
            ],
            unit="s",
            w=8,
        ),
        timeseries(
            "Probe latency p99 per real server",
            "99th percentile of probe duration per real server.",
            [target(f"histogram_quantile(0.99, sum by (le, {RS}) ({probe_buckets}))", RS_LEGEND)],
            unit="s",
            w=8,
        ),
        heatmap(
            "Probe latency distribution",
            "Probe durations of all the service's real servers, per histogram bucket.",
            f"sum by (le) (increase(lvs_probe_duration_seconds_bucket{{{S}}}[$__rate_interval]))",
            unit="s",
            w=8,
        ),
        timeseries(
            "Health changes",
            "Health transitions per real server (a flapping server changes often).",
            [target(f"sum by ({RS}) (increase(lvs_backend_health_changes_total{{{S}}}[$__rate_interval]))", RS_LEGEND)],
            unit="short",
            bars=True,
        ),
        timeseries(
            "Failed handshakes (passive)",
            "Client handshakes to each real server that failed, per second, as the passive detector saw them: "
            "refused (reset before established) or timeout (no answer within passive.handshake_timeout).",
            [
                target(
                    f"sum by ({RS}, reason) (rate(lvs_backend_handshake_failures_total{{{S}}}[$__rate_interval]))",
                    RS_LEGEND + " {{reason}}",
                )
            ],
            unit="short",
            w=8,
        ),
        timeseries(
            "Passive verdicts",
            "Verdicts of the passive detector per real server: its handshakes failed far more than its peers'.",
            [
                target(
                    f"sum by ({RS}) (increase(lvs_backend_passive_verdicts_total{{{S}}}[$__rate_interval]))",
                    RS_LEGEND,
                )
            ],
            unit="short",
            bars=True,
            w=8,
        ),
        timeseries(
            "Passive hold-downs",
            "Seconds left of each real server's passive hold-down (0: none); it doubles on repeated verdicts.",
            [target(f"max by ({RS}) (lvs_backend_passive_holddown_seconds{{{S}}})", RS_LEGEND)],
            unit="s",
            steps=True,
            w=8,
        ),
        timeseries(
            "Quarantined by the actuators",
            "1 while an actuator holds the real server at weight 0.",
            [target("lvsguard_quarantined{${service:raw}}", RS_LEGEND + " by {{instance}}")],
            unit="short",
            steps=True,
        ),
    ]
    return dashboard(
        "lvsguard-service",
        "LVS virtual service",
        "One virtual service: how its real servers share connections and bytes against their weights, their health checks and quarantines (lvsguard).",
        [DIRECTOR, SERVICE],
        panels,
    )


def high_availability() -> dict[str, Any]:
    """Role history, VIP moves, failovers and the connection-sync daemons."""
    owned = f"lvs_director_vip_owned{{{D}}}"
    panels = [
        row("Roles"),
        state_timeline(
            "Director role",
            "Active: holds at least one virtual IP. Standby: holds none.",
            f"max by (instance) ({owned})",
            "{{instance}}",
            mappings=value_map((0, "standby", "blue"), (1, "active", "green")),
        ),
        state_timeline(
            "VIP ownership",
            "Which director has each virtual IP on an interface.",
            f"max by (vip, instance) ({owned})",
            "{{vip}} on {{instance}}",
            mappings=value_map((0, "not held", "text"), (1, "held", "green")),
        ),
        stat(
            "Directors holding each VIP",
            "1 is right; 0 means nobody answers on the VIP, 2 or more is a VRRP split brain.",
            "sum by (vip) (max by (vip, instance) (lvs_director_vip_owned))",
            legend="{{vip}}",
            steps=thresholds(("red", None), ("green", 1), ("red", 2)),
            w=24,
        ),
        row("Failovers"),
        timeseries(
            "VIP moves",
            "Changes of VIP ownership per director (a failover shows on both). The series of a VIP changes"
            " its interface label when the VIP moves, so the changes are counted on max by (vip, instance).",
            [
                target(
                    f"sum by (instance) (changes(max by (vip, instance) ({owned})[$__rate_interval:]))", "{{instance}}"
                )
            ],
            unit="short",
            bars=True,
        ),
        timeseries(
            "Failovers requested",
            "Failovers requested through an actuator (API, CLI or an alert).",
            [
                target(
                    "sum by (instance) (increase(lvsguard_failover_requested_total[$__rate_interval]))", "{{instance}}"
                )
            ],
            unit="short",
            bars=True,
        ),
        row("Connection sync"),
        state_timeline(
            "Sync daemons",
            "IPVS connection-sync daemons per director and role. The active director should run the master, the standby the backup.",
            f"max by (instance, role) (ipvs_sync_daemon_up{{{D}}})",
            "{{instance}} {{role}}",
            mappings=value_map((0, "not running", "text"), (1, "running", "green")),
        ),
        timeseries(
            "Connections in each director's table",
            "Active and inactive connections per director. With sync working, the standby follows the active director.",
            [
                target(f"sum by (instance) (ipvs_backend_connections_active{{{D}}})", "{{instance}} active"),
                target(f"sum by (instance) (ipvs_backend_connections_inactive{{{D}}})", "{{instance}} inactive"),
            ],
            unit="short",
        ),
        table(
            "Running sync daemons",
            "Role, multicast interface and sync id of every running sync daemon.",
            [target(f"ipvs_sync_daemon_up{{{D}}} == 1")],
            columns={"instance": "Director", "role": "Role", "mcast_interface": "Interface", "sync_id": "Sync id"},
            w=24,
            h=6,
        ),
    ]
    return dashboard(
        "lvsguard-ha",
        "LVS high availability",
        "Which director holds each VIP, role history, failovers and IPVS connection sync (lvsguard).",
        [DIRECTOR],
        panels,
    )


DASHBOARDS = {
    "lvsguard-overview.json": overview,
    "lvsguard-service.json": virtual_service,
    "lvsguard-ha.json": high_availability,
}


def render(build: Any) -> str:
    """The committed form: sorted keys, two-space indent, a final newline."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a committed JSON file differs from the generated one"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="directory for the JSON files (default: next to this script)"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"generate.py: stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
