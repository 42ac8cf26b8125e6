"""``make demo``: the lab cluster with real traffic, seen through lvsguard's exporter.

Runs inside the lab VM (``lab/vm.sh .venv/bin/python lab/demo.py``). It builds
the cluster (docs/lab.md), starts ``lvsguard exporter`` on the director's
namespace, sends real HTTP and UDP traffic through the NAT, DR, fwmark, IPv6
and UDP services, then prints the table (``lvsguard status``), the live
counters scraped from the exporter, long-lived connections showing as active,
and a weight change taking effect on new connections. Every step is checked:
the exit status is 0 only when the kernel and the exporter agree with what the
client did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a file (lab/demo.py): make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import traffic  # noqa: E402
from lab.topology import ROOT, Lab, LabError  # noqa: E402

LISTEN = "127.0.0.1:9910"
EXPORTER_READY_TIMEOUT = 60.0  # seconds: Python start-up and imports are slow under UML
COUNTERS_TIMEOUT = 10.0  # seconds: the kernel folds its counters every 2 s
REQUESTS_PER_PORT = {"nat": 60, "dr": 30, "fwmark": 30, "nat6": 24, "udp": 30}

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


def start_exporter(lab: Lab, config_file: Path, listen: str = LISTEN) -> subprocess.Popen[bytes]:
    """Start ``lvsguard exporter`` on the director's namespace, serving on ``listen`` in ours."""
    return subprocess.Popen(
        [sys.executable, "-m", "lvsguard.cli", "exporter", "--config", str(config_file),
         "--netns", lab.director.netns, "--listen", listen],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_until_serving(proc: subprocess.Popen[bytes], listen: str = LISTEN) -> str | None:
    """None once /metrics answers; otherwise why not (the exporter's own error when it exited)."""
    deadline = time.monotonic() + EXPORTER_READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            return f"the exporter exited ({proc.returncode}): {err or 'no message'}"
        try:
            scrape(listen)
            return None
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    return f"the exporter did not answer on http://{listen}/metrics within {EXPORTER_READY_TIMEOUT:.0f} s"


def stop_exporter(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        moved = {svc: +Counter({rs: n - before.get((s, rs), 0) for (s, rs), n in now.items() if s == svc})
                 for svc in expected}
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


def show_kernel_agrees(lab: Lab, seen: dict[str, Counter[str]], before: dict[str, object]) -> None:
    section("the kernel's connection counters against what the client did (exact)")
    for service in lab.services.values():
        delta = lab.wait_for_connections(service, before[service.name], seen[service.name], COUNTERS_TIMEOUT)  # type: ignore[arg-type]
        check(delta.by_real_server == seen[service.name] and delta.total == sum(seen[service.name].values()),
              f"{service.name:6} {service.key}: kernel counted {split(delta.by_real_server)} (total {delta.total})")


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
        kernel = +Counter({service.name_of(rs.key): rs.active_connections for rs in table.real_servers}) if table else Counter()
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
            check(weights.get((service.name, drained)) == 0, f"exporter ipvs_backend_weight{{real_server=\"{drained}\"}} = 0")
        got = traffic.http_get(lab, service.address, service.port, n)
        step(f"{n} new connections while {drained} has weight 0: {split(got)}")
        check(drained not in got and sum(got.values()) == n, f"no new connection went to {drained}")
    finally:
        lab.set_weight(service, drained, weight)
    got = traffic.http_get(lab, service.address, service.port, 2 * sum(service.weights.values()))
    step(f"weight {weight} restored; new connections: {split(got)}")
    check(got[drained] == 2 * weight, f"{drained} takes its share again ({got[drained]} = 2 x weight {weight})")


def main() -> int:
    print("lvsguard lab demo: a director, real servers and a client in network namespaces,")
    print("real traffic through the kernel's IPVS, and lvsguard's exporter watching it.\n")
    lab = Lab()
    exporter: subprocess.Popen[bytes] | None = None
    try:
        lab.build(progress=step)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lvsguard-lab-", delete=False) as f:
            f.write(lab.config_yaml(listen=LISTEN))
        step(f"starting lvsguard exporter --netns {lab.director.netns} --listen {LISTEN} (names from {f.name})")
        exporter = start_exporter(lab, Path(f.name))

        section("real traffic from the client namespace (every request is a new connection)")
        before = {s.name: lab.connections(s) for s in lab.services.values()}
        why_not = wait_until_serving(exporter)
        exporter_before = samples(scrape(), "ipvs_backend_connections_total") if why_not is None else {}
        seen = send_traffic(lab)

        show_kernel_agrees(lab, seen, before)  # type: ignore[arg-type]
        show_status(lab)
        if why_not is None:
            show_exporter(lab, seen, exporter_before)
        else:
            section("live counters from the exporter")
            check(False, f"exporter not available: {why_not}")
        show_active(lab, why_not is None)
        show_weight_change(lab, why_not is None)
    except (LabError, traffic.TrafficError, OSError) as exc:
        print(f"\nlab demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if exporter is not None:
            stop_exporter(exporter)
        lab.teardown()
    print()
    if failures:
        print(f"DEMO FAILED: {len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
        return 1
    step("DEMO OK: the kernel and the exporter agree with the client, exactly")
    return 0


if __name__ == "__main__":
    if os.environ.get("IPVS_VM_GUEST") != "1" and os.environ.get("FORCE") != "1":
        print("lab/demo.py builds namespaces and IPVS services: run it inside lab/vm.sh (make demo)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
