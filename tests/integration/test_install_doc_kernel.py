"""docs/install.md, followed literally on a clean director of the lab.

Every ```sh block of the doc (tests/unit/test_install_doc.py says which blocks are
steps and why the others are not) runs, in order, as one root shell script inside
the lab director's network namespace: the wheel into /opt/lvsguard, the lvsguard
user from the sysusers file, the config and the tokens, the units installed and
started, ``lvsguard doctor`` (whose exit status must be 0), and at the end the
uninstall. The wheel and its dependencies come from ``build/wheelhouse`` (``make
wheelhouse`` on the host: the VM has no network) through pip's own
``PIP_NO_INDEX``/``PIP_FIND_LINKS``, as a director behind a mirror would use them.

The VM has no systemd: ``systemctl`` is tests/integration/systemctl_shim.py, which
starts a unit's ``ExecStart=`` as its user with its capabilities, umask and
directories, as systemd does. Between the start and the uninstall the test scrapes
the exporter and asks the actuator's API, over the addresses the doc configured, and
a real Prometheus (Debian's) in the director's namespace scrapes both with the
README's scrape jobs (targets and token file swapped for the lab's): both ``up``;
then, with the lab's services and a tcp check in the config (the units restarted),
the shipped rules in that Prometheus and a real Alertmanager there with the shipped
alerts/alertmanager.yml (the actuator's URL and token file swapped): a real server
whose port is closed (iptables REJECT in its namespace) is quarantined in the kernel
through probe -> Prometheus -> Alertmanager -> the installed actuator.

It installs system-wide, so it runs only inside the lab VM, whose root is a
throw-away overlay, and removes every trace (user, files, processes) at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import monitoring
from lab.topology import Lab
from lvsguard import __version__
from tests.unit.test_install_doc import DOC, steps
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "build" / "wheelhouse"
SHIM = Path(__file__).resolve().parent / "systemctl_shim.py"
UNITS = ("lvsguard-exporter.service", "lvsguard-actuator.service")
IPTABLES = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"  # the lab kernel has no nf_tables
TRACES = (
    Path("/opt/lvsguard"),
    Path("/usr/local/bin/lvsguard"),
    Path("/etc/lvsguard"),
    Path("/etc/sysusers.d/lvsguard.conf"),
    Path("/var/lib/lvsguard"),
    Path("/run/lvsguard"),
    *(Path("/etc/systemd/system") / unit for unit in UNITS),
)


def the_wheel() -> Path:
    wheels = sorted(WHEELHOUSE.glob(f"lvsguard-{__version__}-*.whl"))
    if not wheels:
        message = f"no {WHEELHOUSE.relative_to(ROOT)}/lvsguard-{__version__}-*.whl: run make wheelhouse on the host"
        if os.environ.get("LVSGUARD_REQUIRE_PACKAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return wheels[-1]


@pytest.fixture
def director(lab: Lab) -> Iterator[tuple[Lab, Path]]:
    """The lab and a working directory holding ``dist/`` and ``systemctl``; every trace removed afterwards."""
    if os.environ.get("IPVS_VM_GUEST") != "1":
        pytest.skip("installs system-wide: only inside the lab VM, whose root is a throw-away overlay")
    wheel = the_wheel()
    assert [p for p in TRACES if p.exists()] == [], "lvsguard is installed in this VM already"
    work = Path(tempfile.mkdtemp(prefix="lvsguard-install-", dir="/tmp"))
    (work / "dist").mkdir()
    shutil.copy(wheel, work / "dist")
    (work / "bin").mkdir()
    (work / "bin" / "systemctl").write_text(f'#!/bin/sh\nexec /usr/bin/python3 {SHIM} "$@"\n')
    (work / "bin" / "systemctl").chmod(0o755)
    try:
        yield lab, work
    finally:
        shell(lab, work, f"systemctl stop {' '.join(UNITS)}", check=False)
        for path in TRACES:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for command in (["userdel", "lvsguard"], ["groupdel", "lvsguard"]):
            subprocess.run(command, capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def shell(lab: Lab, work: Path, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``script`` as root in the director's namespace, in ``work``, with the doc reader's environment."""
    env = {
        "PATH": f"{work / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "LVSGUARD_SYSTEMCTL_STATE": str(work / "systemd"),
    }
    done = subprocess.run(
        ["ip", "netns", "exec", lab.director.netns, "bash", "-c", f"set -eo pipefail\n{script}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((work / "systemd").glob("*.log")))
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}{logs}"
    return done


WAIT_FOR_THE_UNITS = """for i in $(seq 300); do
    curl -s -o /dev/null http://127.0.0.1:9910/ && curl -s -o /dev/null http://127.0.0.1:9911/ && exit 0; sleep 0.2
done; exit 1"""


def test_install_md_step_by_step_on_a_clean_director(director: tuple[Lab, Path]) -> None:
    """Each step in its own root shell, as a reader types it; before the doctor, the started units get to listen
    (systemd returns from ``enable --now`` before a ``Type=simple`` service is up, and so does the shim)."""
    lab, work = director
    output = []
    uninstall = []
    for section, body in steps(DOC.read_text()):
        if section == "Uninstall":
            uninstall.append(body)
            continue
        if section.startswith("Check the director"):
            shell(lab, work, WAIT_FOR_THE_UNITS)
        output.append(shell(lab, work, body).stdout)
    text = "".join(output)
    assert f"lvsguard {__version__}" in text
    assert "\n0 failed, " in text  # the doctor's summary; its exit status 0 let the step pass

    token = Path("/etc/lvsguard/tokens").read_text().split(":", 1)[1].strip()
    metrics = shell(lab, work, "curl -fsS http://127.0.0.1:9910/metrics").stdout
    assert 'ipvs_source="netlink"' in metrics
    backends = [line for line in metrics.splitlines() if line.startswith("ipvs_backend_weight{")]
    assert len(backends) >= len(lab.nat.backends)
    api = "http://127.0.0.1:9911/api/v1/services"
    assert shell(lab, work, f"curl -s -o /dev/null -w '%{{http_code}}' {api}").stdout == "401"  # reads need a token
    answer = shell(lab, work, f"curl -fsS -H 'Authorization: Bearer {token}' {api}").stdout
    assert lab.nat.key.address in answer
    owner = shell(lab, work, "stat -c '%U %a' /var/lib/lvsguard/actuator.db").stdout.split()
    assert owner[0] == "lvsguard" and owner[1].endswith("0")  # the unit's user; closed to others

    the_alert_loop(lab, work, token)

    pids = {unit: int((work / "systemd" / f"{unit}.pid").read_text()) for unit in UNITS}
    for body in uninstall:
        shell(lab, work, body)
    assert not Path("/opt/lvsguard").exists()
    assert [unit for unit, pid in pids.items() if Path(f"/proc/{pid}").exists()] == []


def readme_scrape_configs() -> list[dict[str, Any]]:
    blocks = re.findall(r"^```ya?ml\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    configs = [yaml.safe_load(b) for b in blocks if "scrape_configs:" in b]
    assert configs, "README.md has no scrape_configs block"
    jobs: list[dict[str, Any]] = configs[0]["scrape_configs"]
    return jobs


def in_the_director(lab: Lab, work: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` running in the director's namespace, its output in ``work/NAME.log``."""
    with open(work / f"{name}.log", "wb") as log:
        return subprocess.Popen(["ip", "netns", "exec", lab.director.netns, *argv], stdout=log, stderr=log)


def get(lab: Lab, work: Path, url: str) -> Any:
    """The JSON at ``url`` (in the director's namespace), or None while it does not answer."""
    done = shell(lab, work, f"curl -fsS '{url}' || true")
    try:
        return json.loads(done.stdout)
    except ValueError:
        return None


def lab_config(lab: Lab) -> str:
    """The doc's listen lines with the lab's services and a tcp check of the NAT service (no netns: the
    units run inside the director's namespace)."""
    config = yaml.safe_load(lab.config_yaml())
    del config["director"]
    config["exporter"] = {"listen": "0.0.0.0:9910"}
    config["actuator"] = {"listen": "0.0.0.0:9911"}
    check = {"service": lab.nat.name, "type": "tcp", "interval": "250ms", "timeout": "250ms", "rise": 2, "fall": 2}
    config["probes"] = {"default_tcp": False, "refresh": "1s", "checks": [check]}
    return yaml.safe_dump(config)


def the_alert_loop(lab: Lab, work: Path, token: str) -> None:
    """The installed units with the lab's services, Debian's Prometheus (the README's scrape jobs, the shipped
    rules) and Alertmanager (the shipped example) in the director's namespace: rs2's port closed -> quarantined."""
    Path("/etc/lvsguard/lvsguard.yaml").write_text(lab_config(lab))
    shell(lab, work, "lvsguard config check /etc/lvsguard/lvsguard.yaml && systemctl restart " + " ".join(UNITS))
    shell(lab, work, WAIT_FOR_THE_UNITS)
    (work / "token").write_text(token)
    rules = Path(shell(lab, work, "lvsguard paths alerts").stdout.strip())

    am_port, prom_port = monitoring.free_port(), monitoring.free_port()
    am_config = monitoring.alertmanager_config(["http://127.0.0.1:9911/webhook/alertmanager"], work / "token")
    (work / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    jobs = readme_scrape_configs()
    for job in jobs:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{target.rsplit(':', 1)[1]}" for target in static["targets"][:1]]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(work / "token")
    assert sorted(job["job_name"] for job in jobs) == ["lvsguard-actuator", "lvsguard-exporter"]
    prom_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "lvsguard.rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": jobs,
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    processes = [
        in_the_director(
            lab,
            work,
            "alertmanager",
            [
                monitoring.binary(["prometheus-alertmanager", "alertmanager"], "prometheus-alertmanager"),
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
        ),
        in_the_director(
            lab,
            work,
            "prometheus",
            [
                monitoring.binary(["prometheus"], "prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
        ),
    ]
    nat, rs2 = lab.nat, lab.node("rs2")
    remote = nat.real_server("rs2")

    def query(expr: str) -> list[dict[str, Any]]:
        for name, proc in zip(("alertmanager", "prometheus"), processes):
            assert proc.poll() is None, (work / f"{name}.log").read_text()[-2000:]
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = get(lab, work, url)
        return list(body["data"]["result"]) if body else []

    def weight() -> int | None:
        service = lab.read_table().service(nat.key)
        real_server = service.real_server(remote) if service else None
        return real_server.weight if real_server else None

    def cut_off(verb: str) -> list[str]:
        """rs2's service port refusing every connection (``-I``), or not any more (``-D``)."""
        return [verb, "INPUT", "-p", "tcp", "--dport", str(remote.port), "-j", "REJECT", "--reject-with", "tcp-reset"]

    healthy = f'lvs_backend_healthy{{remote_address="{remote.address}",remote_port="{remote.port}"}} == 1'
    try:
        up = lambda: sorted(row["metric"]["job"] for row in query("up == 1"))
        wait_for(lambda: up() == ["lvsguard-actuator", "lvsguard-exporter"], "both README jobs up", timeout=90, step=1)
        wait_for(lambda: query(healthy), "rs2 healthy in Prometheus", timeout=60, step=1)
        assert weight() not in (None, 0)
        subprocess.run(["ip", "netns", "exec", rs2.netns, IPTABLES, *cut_off("-I")], check=True)
        wait_for(lambda: weight() == 0, "rs2 quarantined through Prometheus and Alertmanager", timeout=90, step=0.5)
    finally:
        subprocess.run(["ip", "netns", "exec", rs2.netns, IPTABLES, *cut_off("-D")], check=False)
        for proc in processes:
            proc.terminate()
            proc.wait(timeout=30)
        lab.reset_services()


def readme_scrape_configs() -> list[dict[str, Any]]:
    blocks = re.findall(r"^```ya?ml\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    configs = [yaml.safe_load(b) for b in blocks if "scrape_configs:" in b]
    assert configs, "README.md has no scrape_configs block"
    jobs: list[dict[str, Any]] = configs[0]["scrape_configs"]
    return jobs
