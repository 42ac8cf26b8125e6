"""``make demo``: the two-director lab cluster with real traffic, seen and driven by lvsguard.

Runs inside the lab VM (``lab/vm.sh .venv/bin/python lab/demo.py``). It builds
the HA cluster (docs/lab.md, docs/ha.md: two directors with keepalived, three
real servers, a client), starts a real Alertmanager that sends every
notification to both directors' actuators, and ``lvsguard exporter`` and
``lvsguard actuator`` on each director. First the single-director view, on the
active director: real HTTP and UDP traffic through the NAT, DR, fwmark, IPv6
and UDP services, the table (``lvsguard status``), the live counters scraped
from the exporter, long-lived connections showing as active, and a weight
change taking effect on new connections. Then the HA story with a timeline
(lab/demo_ha.py): a real server dies and comes back, the active director
crashes, the backup takes over with the long-lived connections, the primary
returns. Every step is checked: the exit status is 0 only when the kernel, the
exporter and the client agree with what should happen.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a file (lab/demo.py): make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import demo_ha, traffic
from lab.ha import ACTUATOR_PORTS, EXPORTER_PORTS, HALab, alertmanager_config
from lab.keepalived import KeepalivedError
from lab.monitoring import running_alertmanager
from lab.topology import ConnectionCounts, Lab, LabError

LISTEN = f"127.0.0.1:{EXPORTER_PORTS['dir1']}"  # the active director's exporter
COUNTERS_TIMEOUT = 10.0  # seconds: the kernel folds its counters every 2 s
REQUESTS_PER_PORT = {"nat": 60, "dr": 30, "fwmark": 30, "nat6": 24, "dr6": 24, "udp": 30}

T0 = time.monotonic()
failures: list[str] = []


def step(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {message}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def check(ok: bool, what: str) -> None:
    print(f"   {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)


def split(counter: Counter[str]) -> str:
    return "  ".join(f"{name}={counter[name]}" for name in sorted(counter)) or "(none)"


# --- the exporter ----------------------------------------------------------------------


def scrape(listen: str = LISTEN) -> str:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str) -> dict[tuple[str, str], int]:
    """``name`` samples by (service, real_server) labels; service-level metrics have real_server ""."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[(sample.labels.get("service", ""), sample.labels.get("real_server", ""))] = int(sample.value)
    return found


def raw_lines(text: str, name: str, service: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") and f'service="{service}"' in line]


def wait_for_exporter_counts(expected: dict[str, Counter[str]], before: dict[tuple[str, str], int]) -> str:
    """Scrape until ipvs_backend_connections_total moved by ``expected`` (or the timeout); the last scrape."""
    deadline = time.monotonic() + COUNTERS_TIMEOUT
    while True:
        text = scrape()
        now = samples(text, "ipvs_backend_connections_total")
        moved = {
            svc: +Counter({rs: n - before.get((s, rs), 0) for (s, rs), n in now.items() if s == svc})
            for svc in expected
        }
        if moved == {svc: +c for svc, c in expected.items()} or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


# --- the story -----------------------------------------------------------------------------


def send_traffic(lab: Lab) -> dict[str, Counter[str]]:
    seen: dict[str, Counter[str]] = {}
    for service in lab.services.values():
        n = REQUESTS_PER_PORT[service.name]
        total: Counter[str] = Counter()
        for port in service.ports:
            if service.key.protocol == "UDP":
                got = traffic.udp_exchange(lab, service.address, port, n)
                how = "UDP echoes"
            else:
                got = traffic.http_get(lab, service.address, port, n)
                how = "HTTP GETs"
            where = f"[{service.address}]:{port}" if ":" in service.address else f"{service.address}:{port}"
            step(f"{n:3d} {how:10} to {where:22} {service.name:6} answered by  {split(got)}")
            total += got
        seen[service.name] = total
    return seen


def show_kernel_agrees(lab: Lab, seen: dict[str, Counter[str]], before: dict[str, ConnectionCounts]) -> None:
    section("the kernel's connection counters against what the client did (exact)")
    for service in lab.services.values():
        delta = lab.wait_for_connections(service, before[service.name], seen[service.name], COUNTERS_TIMEOUT)
        check(
            delta.by_real_server == seen[service.name] and delta.total == sum(seen[service.name].values()),
            f"{service.name:6} {service.key}: kernel counted {split(delta.by_real_server)} (total {delta.total})",
        )


def show_status(lab: Lab) -> None:
    section(f"lvsguard status --netns {lab.director.netns}   (like ipvsadm -Ln --stats, with names)")
    try:
        from lvsguard import config, status
    except ImportError as exc:
        print(f"   (lvsguard status is not available: {exc}; ipvsadm's view instead)")
        print(lab.ipvsadm("-Ln", "--stats"))
        return
    cfg = config.loads(lab.config_yaml(listen=LISTEN), "lab.yaml")
    print(status.render(status.read_table(netns=lab.director.netns), cfg), end="")


def show_exporter(lab: Lab, seen: dict[str, Counter[str]], before: dict[tuple[str, str], int]) -> None:
    section(f"live counters scraped from the exporter: http://{LISTEN}/metrics")
    text = wait_for_exporter_counts(seen, before)
    now = samples(text, "ipvs_backend_connections_total")
    for service in lab.services.values():
        moved = +Counter({rs: n - before.get((s, rs), 0) for (s, rs), n in now.items() if s == service.name})
        check(moved == seen[service.name], f"{service.name:6} ipvs_backend_connections_total moved by {split(moved)}")
    print("\n   " + "\n   ".join(raw_lines(text, "ipvs_backend_connections_total", "nat")))
    up = samples(text, "ipvs_up")
    check(up.get(("", "")) == 1, "ipvs_up 1")


def show_active(lab: Lab, exporter_ok: bool) -> None:
    service = lab.nat
    n = 2 * sum(service.weights.values())
    section(f"{n} long-lived connections to {service.key}: active connections")
    with traffic.hold_connections(lab, service.address, service.port, n) as held:
        step(f"holding {n} connections open: {split(held)}")
        table = lab.read_table().service(service.key)
        kernel = (
            +Counter({service.name_of(rs.key): rs.active_connections for rs in table.real_servers})
            if table
            else Counter()
        )
        check(kernel == held, f"kernel ActiveConn per real server: {split(kernel)}")
        if exporter_ok:
            active = samples(scrape(), "ipvs_backend_connections_active")
            got = +Counter({rs: v for (s, rs), v in active.items() if s == service.name})
            check(got == held, f"exporter ipvs_backend_connections_active: {split(got)}")
    step("closed them")


def show_weight_change(lab: Lab, exporter_ok: bool) -> None:
    service = lab.nat
    drained = service.backends[0][1]
    weight = service.weights[drained]
    n = 3 * sum(w for name, w in service.weights.items() if name != drained)
    section(f"weight change: {drained} of {service.name} ({service.real_server(drained)}) weight {weight} -> 0")
    lab.set_weight(service, drained, 0)
    try:
        if exporter_ok:
            weights = samples(scrape(), "ipvs_backend_weight")
            check(
                weights.get((service.name, drained)) == 0,
                f'exporter ipvs_backend_weight{{real_server="{drained}"}} = 0',
            )
        got = traffic.http_get(lab, service.address, service.port, n)
        step(f"{n} new connections while {drained} has weight 0: {split(got)}")
        check(drained not in got and sum(got.values()) == n, f"no new connection went to {drained}")
    finally:
        lab.set_weight(service, drained, weight)
    got = traffic.http_get(lab, service.address, service.port, 2 * sum(service.weights.values()))
    step(f"weight {weight} restored; new connections: {split(got)}")
    check(got[drained] == 2 * weight, f"{drained} takes its share again ({got[drained]} = 2 x weight {weight})")


def main() -> int:
    print("lvsguard lab demo: two directors (keepalived), real servers and a client in network namespaces,")
    print("real traffic through the kernel's IPVS, lvsguard's exporter watching it and its actuator driving it.\n")
    workdir = Path(tempfile.mkdtemp(prefix="lvsguard-demo-"))
    token_file = workdir / "token"
    token_file.write_text(secrets.token_hex(16) + "\n")
    token_file.chmod(0o600)  # lvsguard refuses a token file others can read
    webhooks = {name: f"http://127.0.0.1:{port}/webhook/alertmanager" for name, port in ACTUATOR_PORTS.items()}
    lab: HALab | None = None
    try:
        with running_alertmanager(workdir / "alertmanager", alertmanager_config(webhooks, token_file)) as alertmanager:
            step(f"Alertmanager on {alertmanager} (alerts/alertmanager.yml), its webhook to both directors' actuators")
            # lvsguard exporter and actuator per director (--netns), started by build() before keepalived
            lab = HALab(lvsguard_token=token_file.read_text().strip(), probes=demo_ha.probes_section(alertmanager))
            lab.build(progress=step)
            step(
                f"exporters on {', '.join(p.exporter_url for p in lab.lvsguard.values())}, "
                f"actuators on {', '.join(p.actuator_url for p in lab.lvsguard.values())}"
            )
            single_director(lab)
            section("high availability: the story, step by step")
            timeline = demo_ha.story(lab, step, check)
            section("timeline of the HA story (seconds since it began)")
            print(timeline.render(), flush=True)
    except (LabError, KeepalivedError, traffic.TrafficError, OSError) as exc:
        print(f"\nlab demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            lab.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    if failures:
        print(f"DEMO FAILED: {len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
        return 1
    step(
        "DEMO OK: the kernel and the exporter agree with the client; a real server and a director failed and the cluster kept serving"
    )
    return 0


def single_director(lab: Lab) -> None:
    """The active director's view: traffic, exact counters, the table, the exporter, active connections, a weight change."""
    section("real traffic from the client namespace (every request is a new connection)")
    before = {s.name: lab.connections(s) for s in lab.services.values()}
    exporter_before = samples(scrape(), "ipvs_backend_connections_total")
    seen = send_traffic(lab)
    show_kernel_agrees(lab, seen, before)
    show_status(lab)
    show_exporter(lab, seen, exporter_before)
    show_active(lab, True)
    show_weight_change(lab, True)


if __name__ == "__main__":
    if os.environ.get("IPVS_VM_GUEST") != "1" and os.environ.get("FORCE") != "1":
        print("lab/demo.py builds namespaces and IPVS services: run it inside lab/vm.sh (make demo)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
