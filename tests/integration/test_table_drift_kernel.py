"""Drift on the lab's kernel: ``ipvsadm -e`` on a managed real server, seen by the running actuator.

The actuator owns the lab's NAT service (``table.manage``) and compares it
with the config every ``table.drift_interval`` (2 s here; the retry loop runs
every second). A weight changed by hand with ``ipvsadm -e`` must be named by
``lvsguard_table_drift`` within the interval plus a margin, logged once, and:

- with ``drift: report`` left as it is until it is put back by hand, when the
  series goes;
- with ``drift: correct`` put back to the config's weight, audited as
  ``table_apply`` by ``drift``.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
import yaml

from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from tests.integration.test_table_actuator_kernel import (  # noqa: F401 - director and actuator are fixtures
    Actuator,
    actuator,
    director,
    write_config,
)

pytestmark = pytest.mark.kernel

INTERVAL = 2.0
BOUND = INTERVAL + 1.0 + 5.0  # drift_interval + retry_interval + a margin for the lab VM


def start(lab: Lab, director: NetlinkIPVS, actuator: Actuator, policy: str) -> int:
    """Start the actuator owning the NAT service with ``table.drift: policy``; rs2's config weight."""
    before = director.read_service(lab.nat.key)
    write_config(actuator.config, before, lab)
    doc = yaml.safe_load(actuator.config.read_text())
    doc["table"].update({"drift": policy, "drift_interval": f"{INTERVAL:g}s"})
    doc["actuator"]["retry_interval"] = "1s"
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    actuator.start()
    return weight_of(lab, director, "rs2")


def weight_of(lab: Lab, director: NetlinkIPVS, name: str) -> int:
    return {lab.nat.name_of(rs.key): rs.weight for rs in director.read_service(lab.nat.key).real_servers}[name]


def drift_series(actuator: Actuator) -> list[str]:
    with urllib.request.urlopen(actuator.url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [line for line in text.splitlines() if line.startswith("lvsguard_table_drift{")]


def wait_for(check: object, seconds: float, what: str, actuator: Actuator) -> float:
    """Seconds until ``check()`` is true; fails after ``seconds`` with the actuator's log."""
    assert callable(check)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if check():
            return time.monotonic() - began
        time.sleep(0.1)
    pytest.fail(f"{what} not within {seconds:g} s; actuator log:\n{actuator.log.read_text()}")


def drift_lines(actuator: Actuator) -> list[str]:
    return [line for line in actuator.log.read_text().splitlines() if re.search(r"\btable_drift ", line)]


def test_report_names_a_weight_changed_by_hand_and_leaves_it(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    weight = start(lab, director, actuator, "report")
    rs2 = lab.nat.real_server("rs2")
    assert drift_series(actuator) == []
    lab.set_weight(lab.nat, "rs2", weight + 3)  # ipvsadm -e
    seen = wait_for(lambda: drift_series(actuator), BOUND, "lvsguard_table_drift", actuator)
    [series] = drift_series(actuator)
    assert 'real_server="rs2"' in series and 'field="weight"' in series and 'service="web"' in series, series
    assert f'remote_address="{rs2.address}"' in series and series.endswith(" 1.0"), series
    time.sleep(2 * INTERVAL + 1)  # more rounds: still left, still one line
    assert weight_of(lab, director, "rs2") == weight + 3, "report leaves the hand change"
    lines = drift_lines(actuator)
    assert len(lines) == 1, lines
    assert f"real_server={rs2}" in lines[0] and f"kernel={weight + 3} config={weight}" in lines[0], lines[0]

    lab.set_weight(lab.nat, "rs2", weight)  # put back by hand
    wait_for(lambda: not drift_series(actuator), BOUND, "the drift series gone", actuator)
    print(f"drift seen {seen:.1f} s after ipvsadm -e (drift_interval {INTERVAL:g} s)")


def test_correct_puts_the_config_weight_back(lab: Lab, director: NetlinkIPVS, actuator: Actuator) -> None:
    weight = start(lab, director, actuator, "correct")
    lab.set_weight(lab.nat, "rs2", weight + 3)
    back = wait_for(lambda: weight_of(lab, director, "rs2") == weight, BOUND, "the config's weight back", actuator)
    assert len(drift_lines(actuator)) == 1, drift_lines(actuator)
    assert drift_series(actuator) == [], "the metric drops once corrected"
    events = actuator.call("/api/v1/audit")[1]["events"]
    corrections = [e for e in events if e["action"] == "table_apply" and e["actor"] == "drift"]
    assert len(corrections) == 1 and "1 real server to change" in corrections[0]["message"], corrections
    print(f"weight back {back:.1f} s after ipvsadm -e (drift_interval {INTERVAL:g} s)")
