"""One read of the probe state by the actuator's console: ``/probes.json`` against the Prometheus text.

    .venv/bin/python bench/probe_report.py [--sizes 1000,10000] [--repeat 7]

For N real servers (services of 100, one tcp check each, a few results each)
the real ``ProbeMetrics`` renders both documents, and a loopback HTTP server
serves them. Measured, in one run:

- the actuator's read of ``/probes.json`` (``actuator.probestate``: fetch, JSON,
  ``parse_probe_report``);
- the alternative it replaced: ``/metrics`` read line by line, only the lines
  of the five wanted series handed to prometheus_client's text parser, each
  series matched to its real server by its labels. The body carries nine
  IPVS series per real server too, as a real ``/metrics`` does (written here
  as text, so the exporter's time to read its table is not in the figure);
- the exporter's time to render each: the probe text (``chunks``) and the
  report (``report`` + ``json.dumps``).

Reported: wall time per read, min and median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families

from lvsguard.actuator.probestate import OPENER, fetch_report, parse_probe_report, report_url
from lvsguard.actuator.settings import Names
from lvsguard.actuator.targets import TargetError, target_from_labels
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.state import Health
from lvsguard.model import RealServerKey, ServiceKey

WANTED = tuple(
    f"{name}{{".encode()
    for name in (
        "lvs_backend_healthy",
        "lvs_probe_success",
        "lvs_probe_duration_seconds_sum",
        "lvs_probe_duration_seconds_count",
        "lvs_backend_health_last_change_timestamp_seconds",
    )
)
IPVS = (
    "connections_total",
    "incoming_packets_total",
    "outgoing_packets_total",
    "incoming_bytes_total",
    "outgoing_bytes_total",
    "connections_active",
    "connections_inactive",
    "connections_persistent",
    "weight",
)


def documents(real_servers: int) -> tuple[ProbeMetrics, bytes, bytes]:
    """The probe metrics of ``real_servers`` checks, their ``/metrics`` body (with IPVS lines) and their report."""
    metrics = ProbeMetrics()
    ipvs = []
    for s in range(real_servers // 100):
        service = ServiceKey("TCP", f"192.0.{s // 250}.{s % 250 + 1}", 80)
        for r in range(100):
            key = (service, RealServerKey(f"10.{s // 250}.{s % 250}.{r + 1}", 80), "tcp")
            metrics.add(key)
            for took in (0.001, 0.002, 0.03):
                metrics.observe(key, ProbeResult(True, "", took), Health(2, 1))
            labels = (
                f'local_address="{service.address}",local_port="80",remote_address="{key[1].address}",'
                'remote_port="80",proto="TCP",local_mark="",service="",real_server=""'
            )
            ipvs += [f"ipvs_backend_{name}{{{labels}}} 12345\n" for name in IPVS]
    text = ("".join(ipvs) + "".join(metrics.chunks())).encode()
    return metrics, text, json.dumps(metrics.report(), separators=(",", ":")).encode()


def serve(text: bytes, report: bytes) -> str:
    """A loopback server of both documents; returns its /metrics URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = report if self.path.endswith(".json") else text
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def read_text(url: str) -> dict[object, dict[str, float]]:
    """The probe series out of /metrics with prometheus_client's parser (only the wanted lines handed to it)."""
    with OPENER.open(url, timeout=300) as response:
        lines = [raw.decode() for raw in response if raw.startswith(WANTED)]
    found: dict[object, dict[str, float]] = {}
    for family in text_string_to_metric_families("".join(lines)):
        for sample in family.samples:
            try:
                target = target_from_labels(sample.labels, Names())
            except TargetError:
                continue
            found.setdefault((target, sample.labels.get("check", "")), {})[sample.name] = sample.value
    return found


def timed(fn: Callable[[], object], repeat: int) -> str:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return f"{min(times) * 1000:8.1f} / {statistics.median(times) * 1000:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="real servers, comma-separated")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for size in (int(n) for n in args.sizes.split(",")):
        metrics, text, report = documents(size)
        url = serve(text, report)
        assert len(read_text(url)) == len(parse_probe_report(fetch_report(report_url(url), 300))) == size
        print(f"{size} real servers: /metrics {len(text) / 1e6:.1f} MB, /probes.json {len(report) / 1e3:.0f} kB")
        print("  (min / median)")
        json_read = lambda: parse_probe_report(fetch_report(report_url(url), 300))
        print(f"  actuator, /probes.json:                  {timed(json_read, args.repeat)}")
        print(f"  actuator, /metrics + prometheus_client:  {timed(lambda: read_text(url), args.repeat)}")
        print(f"  exporter, probe text (chunks):           {timed(lambda: ''.join(metrics.chunks()), args.repeat)}")
        render = lambda: json.dumps(metrics.report(), separators=(",", ":"))
        print(f"  exporter, /probes.json (report + json):  {timed(render, args.repeat)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
