"""prometheus-snmp-exporter (an NMS-like client) scrapes the agent with the module config the project ships."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_snmp_agent import WEB, AgentThread, make_table

from lvsguard.exporter.snmp.mibfiles import MIB_DIR, BaseMibsUnavailable, base_mib_dir
from lvsguard.exporter.snmp.snapshot import Health, RealServerState, ServiceState, Snapshot

MODULE_DIR = MIB_DIR.parent / "snmp_exporter"


def _mibdirs() -> str:
    try:
        return f"{base_mib_dir()}:{MIB_DIR}"
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.skipif(shutil.which("prometheus-snmp-generator") is None, reason="prometheus-snmp-generator not installed")
def test_shipped_snmp_yml_is_what_the_generator_makes_of_the_mib(tmp_path: Path) -> None:
    shutil.copy(MODULE_DIR / "generator.yml", tmp_path / "generator.yml")
    subprocess.run(
        ["prometheus-snmp-generator", "generate"],
        cwd=tmp_path,
        env={**os.environ, "MIBDIRS": _mibdirs()},
        capture_output=True,
        check=True,
    )
    assert (tmp_path / "snmp.yml").read_text() == (MODULE_DIR / "snmp.yml").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def snmp_exporter(tmp_path: Path):
    if shutil.which("prometheus-snmp-exporter") is None:
        pytest.skip("prometheus-snmp-exporter not installed (Debian prometheus-snmp-exporter)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            "prometheus-snmp-exporter",
            f"--config.file={MODULE_DIR / 'snmp.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("prometheus-snmp-exporter did not start") from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_snmp_exporter_scrapes_model_values(snmp_exporter: str) -> None:
    table = make_table()
    web = table.services[0]
    states = {(WEB, web.real_servers[1].key): RealServerState(Health.ALIVE, name="web-2")}
    agent = AgentThread(
        lambda: Snapshot(table, services={WEB: ServiceState(name="web")}, real_servers=states), users=()
    )
    try:
        url = f"{snmp_exporter}/snmp?module=lvsguard&target={agent.target}"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
    finally:
        agent.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    conns = {lab["lvsgRsAddress"]: v for lab, v in samples["lvsgRsStatsConns_total"] if lab.get("lvsgVsName") == "web"}
    assert conns == {rs.key.address: float(rs.stats.connections) for rs in web.real_servers}
    in_bytes = {
        lab["lvsgRsAddress"]: v for lab, v in samples["lvsgRsStatsInBytes_total"] if lab.get("lvsgVsName") == "web"
    }
    assert in_bytes == {rs.key.address: float(rs.stats.incoming_bytes) for rs in web.real_servers}
    names = {lab["lvsgRsName"] for lab, _ in samples["lvsgRsStatus"] if lab.get("lvsgVsName") == "web"}
    assert "web-2" in names
    status = {lab["lvsgRsName"]: v for lab, v in samples["lvsgRsStatus"]}
    assert status["web-2"] == 1.0 and status["10.0.0.1:8080"] == 3.0
    up = [v for lab, v in samples["lvsgVsRealServersUp"] if lab.get("lvsgVsName") == "web"]
    assert up == [1.0]
    assert samples["snmp_scrape_pdus_returned"][0][1] > 0
