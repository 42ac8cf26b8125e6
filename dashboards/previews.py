"""PNG previews of the dashboards, drawn from the panels' own queries on real lab data.

A Grafana server is not part of the lab, so this draws each dashboard the way
Grafana lays it out (same grid, units, legends, thresholds, value mappings) with
matplotlib, from what the panels' queries return. Two steps:

    # inside the lab VM: lab cluster + lvsguard exporter + Prometheus + a traffic scenario
    lab/vm.sh .venv/bin/python dashboards/previews.py collect --out /tmp/previews.json
    # anywhere: draw docs/previews/<dashboard uid>.png
    .venv/bin/python dashboards/previews.py render /tmp/previews.json

The scenario (about 4 minutes): HTTP and UDP clients with a varying rate, a
connection-sync daemon, long-lived connections, the real actuator quarantining
a real server through its API (and refusing a quarantine against a quorum, and
rejecting a malformed webhook), one real server taken out (weight 0) and put
back, the same real server refusing connections for a while (its listener
gone: tcp checks fail and the passive detector gives a verdict), and a VIP that
disappears from the director for a while. Panels whose metrics no running
component serves say so.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RULES = ROOT / "alerts" / "lvsguard.rules.yml"
STEP = 2  # seconds between points of a range query
RATE_WINDOW = "15s"  # $__rate_interval at the 1 s scrape interval of the collection (lab.panels.RATE_WINDOW)
ACTUATOR_TOKEN = "previews-token-0123456789abcdef"
# The exporter's probes (default tcp checks) and passive detection, whose panels need them; a hold-down
# long enough to be seen at the previews' 2 s step. Nothing publishes: the verdict is reported, not acted on.
EXPORTER_EXTRA = (
    "probes:\n  default_tcp: true\npassive: {enabled: true, interval: 0.2s, handshake_timeout: 2s, holddown_min: 20s}\n"
)


# --- collect (inside the lab VM) ---------------------------------------------


def _query(prometheus: str, path: str, **params: str) -> list[dict[str, Any]]:
    from lab.monitoring import get_json

    body = get_json(f"{prometheus}/api/v1/{path}?" + urllib.parse.urlencode(params), timeout=60)
    if body["status"] != "success":
        raise SystemExit(f"previews: {params.get('query')}: {body}")
    return body["data"]["result"]


def _scenario(lab: Any, actuator: str, prometheus: str, seconds: float, log: Callable[[str], None]) -> None:
    """Real traffic and real state changes in the lab's kernel, on a timeline."""
    from lab import traffic
    from lab.panels import actuator_has_acted
    from lvsguard.ipvs.addresses import local_addresses

    netns = lab.director.netns
    stop = threading.Event()
    failures = [0]

    def clients() -> None:
        started = time.monotonic()
        while not stop.is_set():
            wave = 1 + math.sin((time.monotonic() - started) / 25)
            for send in (
                lambda: traffic.http_get(lab, lab.nat.address, lab.nat.port, 2 + round(4 * wave)),
                lambda: traffic.http_get(lab, lab.dr.address, lab.dr.port, 1 + round(2 * wave), timeout=1.0),
                lambda: traffic.udp_exchange(lab, lab.udp.address, lab.udp.port, 2),
            ):
                try:
                    send()
                except traffic.TrafficError:
                    failures[0] += 1  # clients of a VIP that no director holds fail, as they would
            time.sleep(0.3)

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    interface = local_addresses(netns)[lab.director.server_ipv4]
    vip = lab.dr.address
    listing = json.loads(
        subprocess.run(["ip", "-n", netns, "-json", "addr"], capture_output=True, text=True, check=True).stdout
    )
    vip_cidr, vip_dev = next(
        (f"{a['local']}/{a['prefixlen']}", link["ifname"])
        for link in listing
        for a in link.get("addr_info", [])
        if a["local"] == vip
    )
    t0 = time.monotonic()

    def at(second: float) -> None:
        time.sleep(max(0.0, t0 + second * seconds / 240 - time.monotonic()))

    def acted(begin: float, until: float) -> None:
        """The actuator acts (twice in the scenario: a counter's first event creates its series, the second shows in increase())."""
        at(begin)
        log("the actuator quarantines rs3 of nat, refuses a quarantine (quorum) and rejects a webhook")
        with actuator_has_acted(lab, actuator, prometheus, ACTUATOR_TOKEN, "previews"):
            at(until)
        log("the actuator restores rs3 of nat")

    at(20)
    log("sync daemon master starts")
    lab.ipvsadm("--start-daemon", "master", "--mcast-interface", interface, "--syncid", "9")
    acted(25, 35)
    at(40)
    log("6 long-lived connections open")
    with traffic.hold_connections(lab, lab.nat.address, lab.nat.port, 6, seconds=300):
        at(80)
        log("rs1 of nat taken out (weight 0)")
        lab.set_weight(lab.nat, "rs1", 0)
        at(120)
    at(150)
    log("rs1 of nat back")
    lab.set_weight(lab.nat, "rs1", lab.nat.weights["rs1"])
    at(155)
    rs1, port = lab.node("rs1"), str(lab.nat.real_server("rs1").port)
    reject = ["INPUT", "-p", "tcp", "--dport", port, "-j", "REJECT", "--reject-with", "tcp-reset"]
    log("rs1 of nat refuses connections (its listener gone)")
    subprocess.run(["ip", "netns", "exec", rs1.netns, "iptables-legacy", "-I", *reject], check=True)
    at(165)
    log("rs1 of nat accepts connections again")
    subprocess.run(["ip", "netns", "exec", rs1.netns, "iptables-legacy", "-D", *reject], check=True)
    at(170)
    log(f"VIP {vip} removed from the director")
    subprocess.run(["ip", "-n", netns, "addr", "del", vip_cidr, "dev", vip_dev], check=True)
    at(200)
    log(f"VIP {vip} back")
    subprocess.run(["ip", "-n", netns, "addr", "add", vip_cidr, "dev", vip_dev], check=True)
    acted(205, 225)
    at(240)
    stop.set()
    thread.join(30)
    lab.ipvsadm("--stop-daemon", "master")
    log(f"{failures[0]} client calls failed (the DR VIP was gone, rs1 of nat refused)")


def collect(out: Path, seconds: float) -> None:
    sys.path.insert(0, str(ROOT))  # the lab is the project's code, not an installed package
    from lab.monitoring import get_json, prometheus_config, running_exporter, running_prometheus
    from lab.panels import load_generator, metrics_of, running_lab_actuator, service_variable_value
    from lab.topology import Lab

    generator = load_generator()
    log = lambda message: print(f"previews: {message}", file=sys.stderr, flush=True)
    with Lab(real_servers=3) as lab, tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        exporter = stack.enter_context(
            running_exporter(tmp / "exporter", lambda listen: lab.config_yaml(listen=listen) + EXPORTER_EXTRA)
        )
        actuator = stack.enter_context(running_lab_actuator(lab, str(tmp / "ledger.db"), ACTUATOR_TOKEN))
        jobs = {"lvsguard-exporter": [exporter], "lvsguard-actuator": [actuator.removeprefix("http://")]}
        prometheus = stack.enter_context(
            running_prometheus(tmp / "prometheus", prometheus_config(jobs, rule_files=[RULES]))
        )
        start = time.time()
        _scenario(lab, actuator, prometheus, seconds, log)
        end = time.time()
        variables = {
            "${service:raw}": service_variable_value(generator, prometheus, exporter, lab.nat.name),
            "$director": exporter,
            "$__rate_interval": RATE_WINDOW,
        }
        served = set(get_json(f"{prometheus}/api/v1/label/__name__/values", timeout=60)["data"])
        result = {"start": start, "end": end, "service": variables["${service:raw}"], "dashboards": {}}
        for name, build in generator.DASHBOARDS.items():
            board = build()
            for panel in board["panels"]:
                for t in panel.get("targets", []):
                    expr = t["expr"]
                    t["missing"] = sorted(metrics_of(expr) - served)
                    for variable, value in variables.items():
                        expr = expr.replace(variable, value)
                    if t["instant"]:
                        t["result"] = _query(prometheus, "query", query=expr, time=str(end))
                    else:
                        t["result"] = _query(
                            prometheus, "query_range", query=expr, start=str(start), end=str(end), step=str(STEP)
                        )
            result["dashboards"][name] = board
        out.write_text(json.dumps(result))
        log(f"wrote {out}")


# --- render (anywhere) --------------------------------------------------------

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a"]
COLORS = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "blue": "#5794f2",
    "text": "#464c54",
    "transparent": PANEL,
}
PX_PER_ROW = 30  # Grafana's grid row height


def _color(name: str) -> str:
    return COLORS.get(name, name)


def _human(value: float, unit: str) -> str:
    """A value the way Grafana prints it for ``unit``."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    suffix = {"cps": " c/s", "pps": " p/s", "bps": "b/s", "s": "s", "Bps": "B/s"}.get(unit, "")
    if unit == "s" and abs(value) < 1:
        return f"{value * 1000:.3g} ms"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{suffix.strip()}" if suffix else f"{value / factor:.3g}{prefix}"
    text = f"{value:.3g}"
    return f"{text}{suffix}" if suffix.startswith(" ") or not suffix else f"{text} {suffix}"


def _legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def _mapped(panel: dict[str, Any], value: float) -> tuple[str, str] | None:
    for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
        hit = mapping["options"].get(str(int(value))) if not math.isnan(value) and value == int(value) else None
        if hit:
            return hit["text"], _color(hit["color"])
    return None


def _threshold_color(steps: list[dict[str, Any]], value: float) -> str:
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return _color(color)


def _no_data(ax: Any, why: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, why, ha="center", va="center", color="#8e8e8e", fontsize=9, transform=ax.transAxes, wrap=True)


def _missing(panel: dict[str, Any]) -> list[str]:
    """Metrics some query of the panel needs that no component served during the collection."""
    return sorted({m for t in panel["targets"] for m in t.get("missing", [])})


def _minutes_axis(ax: Any, span: float) -> None:
    """The whole collection on the x axis, as Grafana shows the dashboard's time range (a short series stays short)."""
    from matplotlib.ticker import MultipleLocator

    ax.set_xlim(0, span)
    ax.xaxis.set_major_locator(MultipleLocator(1))
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0f} min")


def _series(panel: dict[str, Any]) -> list[tuple[str, list[float], list[float], dict[str, Any]]]:
    out = []
    for t in panel["targets"]:
        if t.get("missing"):
            continue
        for row in t["result"]:
            points = row.get("values") or [row["value"]]
            out.append(
                (
                    _legend(t["legendFormat"], row["metric"]),
                    [float(p[0]) for p in points],
                    [float(p[1]) for p in points],
                    t,
                )
            )
    return out


def _timeseries(ax: Any, panel: dict[str, Any], start: float, span: float) -> None:
    import numpy as np

    defaults = panel["fieldConfig"]["defaults"]
    custom, unit = defaults["custom"], defaults["unit"]
    negative = [
        re.compile(o["matcher"]["options"])
        for o in panel["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byRegexp"
    ]
    series = _series(panel)
    if not series:
        _no_data(ax, "No data")
        return
    grid = np.arange(start, start + max(max(xs) for _, xs, _, _ in series) - start + STEP, STEP)
    stacked = np.zeros(len(grid))
    for i, (name, xs, ys, _) in enumerate(series):
        values = np.interp(grid, xs, ys, left=np.nan, right=np.nan)
        values[~np.isin(np.round(grid), np.round(xs))] = np.nan
        if any(r.fullmatch(name) for r in negative):
            values = -values
        color = PALETTE[i % len(PALETTE)]
        minutes = (grid - start) / 60
        if custom["stacking"]["mode"] == "normal":
            base = stacked.copy()
            stacked = stacked + np.nan_to_num(values)
            ax.fill_between(
                minutes,
                base,
                stacked,
                color=color,
                alpha=0.35,
                lw=0,
                step="post" if custom["lineInterpolation"] == "stepAfter" else None,
            )
            ax.plot(
                minutes,
                stacked,
                color=color,
                lw=1,
                label=name,
                drawstyle="steps-post" if custom["lineInterpolation"] == "stepAfter" else "default",
            )
        elif custom["drawStyle"] == "bars":
            ax.bar(minutes, np.nan_to_num(values), width=STEP / 60 * 0.8, color=color, label=name)
        else:
            ax.plot(
                minutes,
                values,
                color=color,
                lw=1.2,
                label=name,
                drawstyle="steps-post" if custom["lineInterpolation"] == "stepAfter" else "default",
            )
    if custom["thresholdsStyle"]["mode"] == "line":
        for step in defaults["thresholds"]["steps"][1:]:
            ax.axhline(step["value"], color=_color(step["color"]), lw=1, ls="--")
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] * 1.02)
    ax.yaxis.set_major_formatter(lambda v, _pos: _human(abs(v), unit))
    _minutes_axis(ax, span)
    ax.grid(color=GRID, lw=0.5)
    ax.tick_params(colors=TEXT, labelsize=7)
    handles = ax.get_legend_handles_labels()
    if handles[0]:
        ax.legend(
            fontsize=6,
            loc="best",
            ncol=2 if len(handles[0]) > 4 else 1,
            facecolor=PANEL,
            edgecolor=GRID,
            labelcolor=TEXT,
            framealpha=0.8,
        )


def _stat(ax: Any, panel: dict[str, Any]) -> None:
    series = _series(panel)
    if not series:
        _no_data(ax, "No data")
        return
    unit = panel["fieldConfig"]["defaults"]["unit"]
    width = 1 / len(series)
    for i, (name, _, ys, _) in enumerate(series):
        value = ys[-1]
        mapped = _mapped(panel, value)
        text, color = (
            mapped
            if mapped
            else (_human(value, unit), _threshold_color(panel["fieldConfig"]["defaults"]["thresholds"]["steps"], value))
        )
        ax.add_patch(
            __import__("matplotlib").patches.Rectangle(
                (i * width + 0.01, 0.03), width - 0.02, 0.94, color=color, transform=ax.transAxes
            )
        )
        ax.text(
            i * width + width / 2,
            0.45,
            text,
            ha="center",
            va="center",
            color="white",
            fontsize=16 if len(series) < 3 else 11,
            weight="bold",
            transform=ax.transAxes,
        )
        if len(series) > 1:
            ax.text(
                i * width + width / 2,
                0.85,
                name,
                ha="center",
                va="center",
                color="white",
                fontsize=7,
                transform=ax.transAxes,
            )


def _table(ax: Any, panel: dict[str, Any]) -> None:
    organize = panel["transformations"][1]["options"]
    columns = organize["renameByName"]
    rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for t in panel["targets"]:
        if t.get("missing"):
            continue
        for row in t["result"]:
            key = tuple(sorted((k, v) for k, v in row["metric"].items() if k in columns))
            cells = rows.setdefault(key, dict(key))
            value = float(row["value"][1])
            cells[f"Value #{t['refId']}"] = f"{value:g}"
    if not rows:
        _no_data(ax, "No data")
        return
    header = list(columns.values())
    body = [
        [cells.get(field, "") for field in columns]
        for cells in sorted(rows.values(), key=lambda c: [c.get(f, "") for f in columns])
    ]
    table = ax.table(cellText=body, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (r, _), cell in table.get_celld().items():
        cell.set_facecolor("#22252b" if r == 0 else PANEL)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)
    table.scale(1, 1.1)


def _state_timeline(ax: Any, panel: dict[str, Any], start: float, span: float) -> None:
    series = _series(panel)
    if not series:
        _no_data(ax, "No data")
        return
    for lane, (name, xs, ys, _) in enumerate(series):
        for x, y in zip(xs, ys):
            mapped = _mapped(panel, y)
            color = mapped[1] if mapped else "#8e8e8e"
            ax.broken_barh([((x - start) / 60, STEP / 60)], (lane + 0.1, 0.8), color=color, lw=0)
        ax.text(
            -0.01,
            (lane + 0.5) / len(series),
            name,
            ha="right",
            va="center",
            color=TEXT,
            fontsize=6,
            transform=ax.transAxes,
        )
    ax.set_ylim(0, len(series))
    ax.set_yticks([])
    _minutes_axis(ax, span)
    ax.tick_params(colors=TEXT, labelsize=7)


def _heatmap(ax: Any, panel: dict[str, Any], start: float, span: float) -> None:
    import numpy as np

    series = [(float("inf") if name == "+Inf" else float(name), xs, ys) for name, xs, ys, _ in _series(panel)]
    if not series:
        _no_data(ax, "No data")
        return
    series.sort()
    matrix = np.array([ys for _, _, ys in series])
    cumulative = np.diff(np.vstack([np.zeros(matrix.shape[1]), matrix]), axis=0)
    xs = (np.array(series[0][1]) - start) / 60
    ax.imshow(
        np.clip(cumulative, 0, None),
        aspect="auto",
        origin="lower",
        cmap="Oranges",
        extent=(xs[0], xs[-1], 0, len(series)),
    )
    ax.set_yticks(
        np.arange(len(series)) + 0.5,
        [_human(le, "s") if le != float("inf") else "+Inf" for le, _, _ in series],
        fontsize=6,
    )
    _minutes_axis(ax, span)
    ax.tick_params(colors=TEXT, labelsize=7)


def render(data: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    collected = json.loads(data.read_text())
    start = collected["start"]
    span = (collected["end"] - start) / 60  # minutes
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for board in collected["dashboards"].values():
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
        width_px, height_px = 1600, rows * PX_PER_ROW + 40
        fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=BACKGROUND)
        fig.text(0.01, 1 - 20 / height_px, board["title"], color=TEXT, fontsize=14, weight="bold", va="center")
        for panel in board["panels"]:
            g = panel["gridPos"]
            left, top = g["x"] / 24, 1 - (40 + g["y"] * PX_PER_ROW) / height_px
            width, height = g["w"] / 24, g["h"] * PX_PER_ROW / height_px
            if panel["type"] == "row":
                fig.text(
                    left + 0.005, top - height / 2, panel["title"], color=TEXT, fontsize=11, weight="bold", va="center"
                )
                continue
            frame = fig.add_axes((left + 0.003, top - height + 0.004, width - 0.006, height - 0.008), facecolor=PANEL)
            frame.set_xticks([])
            frame.set_yticks([])
            for spine in frame.spines.values():
                spine.set_color(GRID)
            frame.text(
                0.01,
                1 - 12 / (g["h"] * PX_PER_ROW),
                panel["title"],
                color=TEXT,
                fontsize=8,
                weight="bold",
                va="center",
                transform=frame.transAxes,
            )
            inset = 24 / (g["h"] * PX_PER_ROW)
            pad_left = (
                0.14
                if panel["type"] == "state-timeline"
                else 0.07
                if panel["type"] in ("timeseries", "heatmap")
                else 0.01
            )
            ax = frame.inset_axes(
                (
                    pad_left,
                    0.1 if panel["type"] in ("timeseries", "state-timeline", "heatmap") else 0.02,
                    1 - pad_left - 0.02,
                    1 - inset - 0.14,
                ),
                facecolor=PANEL,
            )
            for spine in ax.spines.values():
                spine.set_visible(False)
            if panel["type"] not in ("timeseries", "state-timeline", "heatmap"):
                ax.set_xticks([])
                ax.set_yticks([])
            drawer = {
                "timeseries": lambda: _timeseries(ax, panel, start, span),
                "stat": lambda: _stat(ax, panel),
                "table": lambda: _table(ax, panel),
                "state-timeline": lambda: _state_timeline(ax, panel, start, span),
                "heatmap": lambda: _heatmap(ax, panel, start, span),
            }[panel["type"]]
            drawer()
            missing = _missing(panel)
            if missing:
                note = f"needs {', '.join(missing)}: not served by the components of this lab run"
                frame.text(0.01, 0.02, note, color="#8e8e8e", fontsize=6, transform=frame.transAxes)
        path = out_dir / f"{board['uid']}.png"
        fig.savefig(path, facecolor=BACKGROUND)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collect_cmd = commands.add_parser("collect", help="inside the lab VM: run the scenario and query every panel")
    collect_cmd.add_argument("--out", type=Path, required=True)
    collect_cmd.add_argument("--seconds", type=float, default=240.0, help="length of the traffic scenario")
    render_cmd = commands.add_parser("render", help="draw the PNGs from collected data")
    render_cmd.add_argument("data", type=Path)
    render_cmd.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "previews")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.out, args.seconds)
    else:
        for path in render(args.data, args.out_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
