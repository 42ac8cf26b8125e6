"""The high-availability story of ``make demo``, told on ``lab.ha.HALab`` with a timeline.

Two directors run keepalived, ``lvsguard exporter`` and ``lvsguard actuator``
as real processes; a real Alertmanager sends every notification to both
actuators. The story, each step checked against the kernel or the client:

1. traffic through the NAT VIP, served by dir1 (VRRP master);
2. rs1's HTTP service dies (its port answers with resets): both exporters'
   tcp probes see it, Alertmanager gets the alert and delivers it to both
   actuators, and rs1 has weight 0 on both directors;
3. rs1 comes back: the resolved alert restores its weight on both;
4. long-lived connections are opened through dir1 and synced to dir2;
5. dir1 dies at once (keepalived, exporter and actuator SIGKILLed, links down):
   dir2 takes the VIPs, clients are served, the long-lived connections live on;
6. dir1 boots again and, with preemption, takes the VIPs back.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lab import traffic
from lab.ha import HALab, open_held, served_again, survivors, synced_connections
from lab.keepalived import Keepalived
from lab.topology import LabError, LabService
from lvsguard.ipvs.netlink import NetlinkIPVS

HELD = 20  # long-lived connections per service (NAT and DR) across the crash
PROBE_TIMEOUT = 20.0  # seconds for the probes and Alertmanager to move a weight (group_interval is 10 s)
VICTIM = "rs1"


def probes_section(alertmanager: str) -> str:
    """The lvsguard config's ``probes``: a fast tcp check of the NAT service, published to Alertmanager."""
    return (
        "probes:\n  default_tcp: false\n  checks:\n"
        "    - {type: tcp, service: nat, interval: 0.5s, timeout: 0.5s, rise: 2, fall: 2}\n"
        f'  publish:\n    mode: alertmanager\n    url: "{alertmanager}"\n'
    )


class Timeline:
    """Events with their time since the story began; ``mark`` also prints one through ``say``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> float:
        now = time.monotonic() - self.start
        self.events.append((now, what))
        self.say(what)
        return now

    def render(self) -> str:
        return "\n".join(f"   {at:7.2f} s  {what}" for at, what in self.events)


def weights(lab: HALab, service: LabService, name: str) -> dict[str, int]:
    """Real server ``name``'s weight in ``service`` on each live director."""
    found = {}
    for director in lab.directors:
        if director.name in lab.crashed:
            continue
        with NetlinkIPVS(director.netns) as kernel:
            rs = kernel.read_service(service.key).real_server(service.real_server(name))
            found[director.name] = rs.weight if rs is not None else -1
    return found


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def service_port_blocked(lab: HALab, name: str, port: int, blocked: bool) -> None:
    """Make real server ``name``'s port answer with TCP resets (its service died), or serve again.

    iptables-legacy where there is one: the lab kernel has no nf_tables (lab.topology).
    """
    netns = next(rs.netns for rs in lab.real_servers if rs.name == name)
    action = "-I" if blocked else "-D"
    iptables = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            iptables,
            action,
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
        check=True,
    )


def exporter_says(lab: HALab, name: str, metric: str) -> list[str]:
    """The sample lines of ``metric`` with value 1 from director ``name``'s exporter."""
    with urllib.request.urlopen(f"{lab.lvsguard[name].exporter_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(metric + "{") and line.endswith(" 1")]


def vrrp_process_state(instance: Keepalived) -> str:
    """Where keepalived's VRRP process is (its state and kernel wait channel): what a stuck director shows."""
    try:
        pid = instance.files.vrrp_pid.read_text().split()[0]
        status = Path(f"/proc/{pid}/status").read_text().splitlines()[2]
        return f"VRRP process {pid} {status.strip()}, waiting in {Path(f'/proc/{pid}/wchan').read_text() or '-'}"
    except (OSError, IndexError) as exc:
        return f"VRRP process not found ({exc})"


def story(lab: HALab, say: Callable[[str], None], check: Callable[[bool, str], None]) -> Timeline:
    """Tell the story on a built lab whose lvsguard processes run with ``probes_section``; returns the timeline."""
    nat, dr = lab.nat, lab.dr
    port = nat.real_server(VICTIM).port
    full = nat.weights[VICTIM]
    timeline = Timeline(say)
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    timeline.mark(
        f"12 requests through the NAT VIP {nat.address}:{nat.port}, dir1 holding the VIPs: "
        + " ".join(f"{k}={v}" for k, v in sorted(seen.items()))
    )
    check(lab.vip_owners() == ("dir1",) and sum(seen.values()) == 12, "dir1 holds the VIPs and serves every request")

    service_port_blocked(lab, VICTIM, port, True)
    timeline.mark(f"{VICTIM}'s HTTP service dies (port {port} answers with resets)")
    out = wait_for(lambda: weights(lab, nat, VICTIM) == {"dir1": 0, "dir2": 0}, PROBE_TIMEOUT)
    timeline.mark(
        f"{VICTIM} quarantined on dir1 and dir2 (probes -> Alertmanager -> both actuators): {weights(lab, nat, VICTIM)}"
    )
    check(out, f"{VICTIM} has weight 0 on both directors")
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    check(VICTIM not in seen and sum(seen.values()) == 12, f"12 new requests avoid {VICTIM}: {dict(seen)}")

    service_port_blocked(lab, VICTIM, port, False)
    timeline.mark(f"{VICTIM}'s HTTP service is back")
    back = wait_for(lambda: weights(lab, nat, VICTIM) == {"dir1": full, "dir2": full}, PROBE_TIMEOUT)
    timeline.mark(f"{VICTIM} restored on both directors by the resolved alert: {weights(lab, nat, VICTIM)}")
    check(back, f"{VICTIM} has its weight {full} again on both directors")

    held = {service.name: open_held(lab, service, HELD) for service in (nat, dr)}
    try:
        synced = wait_for(lambda: all(synced_connections(lab, "dir2", s) == HELD for s in held.values()), 10.0)
        timeline.mark(f"{HELD} long-lived connections each through NAT and DR, synced to dir2 by the IPVS sync daemon")
        check(synced, "dir2 has every long-lived connection")
        crashed = lab.crash("dir1")
        timeline.events.append(
            (crashed - timeline.start, "dir1 dies: keepalived, exporter and actuator SIGKILLed, links down")
        )
        say("dir1 died")
        lab.wait_for_vip_owner("dir2", poll=0.002)
        timeline.mark(f"dir2 holds the VIPs ({(time.monotonic() - crashed) * 1000:.0f} ms after the crash)")
        served = served_again(lab, nat, crashed)
        timeline.mark(f"the client is served through dir2 ({served * 1000:.0f} ms after the crash)")
        alive = {name: survivors(socks) for name, socks in held.items()}
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()
    timeline.mark(f"long-lived connections that survived the crash: nat {alive['nat']}/{HELD}, dr {alive['dr']}/{HELD}")
    check(alive == {"nat": HELD, "dr": HELD}, "every long-lived connection survived")
    owned = exporter_says(lab, "dir2", "lvs_director_vip_owned")
    check(
        len(owned) == 3,
        f"dir2's exporter: {len(owned)} VIPs owned, sync daemon "
        + ", ".join(
            line.split('role="')[1].split('"')[0] for line in exporter_says(lab, "dir2", "ipvs_sync_daemon_up")
        ),
    )

    reboot = time.monotonic()
    timeline.mark("dir1 boots again: exporter and actuator, then keepalived")
    try:
        lab.revive("dir1")
        lab.wait_for_vip_owner("dir1")
    except LabError as exc:
        check(False, f"dir1 back: {exc}")
        return timeline
    timeline.mark(f"dir1 holds the VIPs again (preempt; {time.monotonic() - reboot:.1f} s after its boot began)")
    served_again(lab, nat, time.monotonic())
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    timeline.mark("12 requests through dir1: " + " ".join(f"{k}={v}" for k, v in sorted(seen.items())))
    alone = wait_for(lambda: lab.vip_owners() == ("dir1",), 5.0)
    roles = ", ".join(f"{name} {instance.role() or '?'}" for name, instance in lab.keepalived.items())
    check(
        sum(seen.values()) == 12 and alone,
        f"dir1 serves again and holds the VIPs alone ({roles}; VIPs on {lab.vip_owners()})",
    )
    if not alone:
        for name, instance in lab.keepalived.items():
            say(f"keepalived of {name}: {vrrp_process_state(instance)}\n{instance.log_tail(12)}")
    return timeline
