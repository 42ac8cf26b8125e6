"""A scheduler module the kernel does not have: refused alone, named, retried until it is there.

The lab kernel loads a scheduler's module on its first use. Here module
loading is off (``/proc/sys/kernel/modprobe`` is ``/bin/false``) and the
``sed`` scheduler's module is not loaded, so the kernel refuses a service
that asks for it, as a kernel built without it would. The running actuator
applies a config with that service and a weight change of the NAT service:
the weight is applied, the refused service is named (its real server fails
with it), and the retry loop tries it again, audited once however often it
fails. Once the module can load, the next retry adds the service and its
real server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import ServiceKey
from tests.integration.test_reload_actuator import wait_until
from tests.integration.test_table_actuator_kernel import (  # noqa: F401 - director and actuator are fixtures
    Actuator,
    actuator,
    director,
    write_config,
)

pytestmark = pytest.mark.kernel

MODPROBE = Path("/proc/sys/kernel/modprobe")
SCHEDULER = "sed"
ODD = ServiceKey("TCP", "192.0.2.250", 81)


@pytest.fixture
def module_loading() -> Iterator[Callable[[], None]]:
    """Module loading off and ip_vs_sed not loaded; yields what turns loading on again (done at the end anyway)."""
    before = MODPROBE.read_text().strip()
    subprocess.run(["modprobe", "-r", f"ip_vs_{SCHEDULER}"], capture_output=True, check=False)
    if f"ip_vs_{SCHEDULER} " in Path("/proc/modules").read_text():
        pytest.fail(f"ip_vs_{SCHEDULER} is loaded and in use: the test needs a scheduler the kernel does not have")
    MODPROBE.write_text("/bin/false\n")
    try:
        yield lambda: MODPROBE.write_text(before + "\n")
    finally:
        MODPROBE.write_text(before + "\n")


def events(actuator: Actuator) -> list[dict[str, Any]]:
    """The table runs in the audit, newest first."""
    return [e for e in actuator.call("/api/v1/audit")[1]["events"] if e["action"] == "table_apply"]


def real_servers(director: NetlinkIPVS) -> list[str] | None:
    """The odd service's real servers in the kernel; None without the service."""
    found = [svc for svc in director.read().services if svc.key == ODD]
    return [str(rs.key) for rs in found[0].real_servers] if found else None


def test_a_missing_scheduler_is_named_the_rest_applied_and_retried(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator, module_loading: Callable[[], None]
) -> None:
    nat = lab.nat
    write_config(actuator.config, director.read_service(nat.key), lab)
    doc = yaml.safe_load(actuator.config.read_text())
    doc["actuator"]["retry_interval"] = "1s"
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    actuator.start()
    odd = {"name": "odd", "service": str(ODD), "scheduler": SCHEDULER, "forward": "masq"}
    doc["services"].append({**odd, "real_servers": [{"name": "odd1", "address": "10.0.1.2:8080"}]})
    rs2 = doc["services"][0]["real_servers"][1]
    rs2["weight"] += 4
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    status, body = actuator.call("/api/v1/table/apply", {})
    assert status == 502, body
    assert [(f["service"], f["real_server"]) for f in body["failures"]] == [(str(ODD), ""), (str(ODD), "10.0.1.2:8080")]
    assert f"service {ODD}: no scheduler '{SCHEDULER}' in this kernel" in body["failures"][0]["message"], body
    weights = {nat.name_of(rs.key): rs.weight for rs in director.read_service(nat.key).real_servers}
    assert weights[rs2["name"]] == rs2["weight"], "the rest is applied"
    assert ODD not in {svc.key for svc in director.read().services}

    wait_until(lambda: [e["actor"] for e in events(actuator)] == ["retry", "env"], "the retry", actuator.log)
    time.sleep(3)  # three more rounds: the same failure is not audited again
    assert [(e["actor"], e["result"]) for e in events(actuator)] == [("retry", "error"), ("env", "error")]
    assert ODD not in {svc.key for svc in director.read().services}

    module_loading()  # the module is there now
    wait_until(lambda: real_servers(director) == ["10.0.1.2:8080"], "the retry that adds both", actuator.log)
    assert director.read_service(ODD).scheduler == SCHEDULER
    wait_until(lambda: events(actuator)[0]["result"] == "applied", "the retry's audit event", actuator.log)
    assert events(actuator)[0]["actor"] == "retry", events(actuator)[0]
