"""Faults under a running exporter and actuator, against the real kernel in the lab VM.

- The IPVS table changes under them (a service deleted, the table flushed):
  the exporter's metrics follow the kernel, ``ipvs_up`` stays 1; a running
  job ends with its reason recorded; later requests about the gone service
  are answered 404, never 5xx.
- Least privilege, as the systemd units run them: an unprivileged user with
  only the capabilities of packaging/systemd (plus the netns drop-in's
  CAP_SYS_ADMIN, since the lab's director is a namespace) reads and writes
  IPVS; without CAP_NET_ADMIN the exporter falls back to procfs and says so.
- A full disk under the ledger: 503s that name it, nothing half done,
  PRAGMA integrity_check ok afterwards.
- An unwritable state directory: the actuator refuses to start with a
  message that names the ledger, and no traceback.
- kill -9 of the actuator at random points of a churn of quarantines,
  restores and weight changes: after the restart the ledger and the kernel
  agree, and nothing acknowledged is lost. (kill -9 during a drain and a
  slow start is in test_actuator_kernel.py.)
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path

import pytest

from lab.topology import Lab, LabService
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey
from tests.integration.test_actuator_kernel import TOKEN, actuator, actuator_process, http, wait_for
from tests.integration.test_reload import Exporter

pytestmark = pytest.mark.kernel

NOBODY = "65534"


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's own tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="lvsguard-faults-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def restored(lab: Lab) -> Iterator[Lab]:
    """The lab; its services are created afresh afterwards (the tests delete them)."""
    yield lab
    lab.reset_services()


def backend_lines(metrics: str, proto: str) -> list[str]:
    return [
        line for line in metrics.splitlines() if line.startswith("ipvs_backend_weight{") and f'proto="{proto}"' in line
    ]


def scrape_until(exporter: Exporter, done: Callable[[str], bool], what: str) -> str:
    """The first scrape for which ``done`` holds."""
    scrapes: list[str] = []

    def check() -> bool:
        scrapes.append(exporter.metrics())
        return done(scrapes[-1])

    wait_for(check, what)
    return scrapes[-1]


def test_a_service_deleted_and_the_table_flushed_under_the_exporter_and_the_actuator(
    restored: Lab, tmp_path: Path
) -> None:
    lab = restored
    udp, nat = lab.udp, lab.nat
    config = tmp_path / "empty.yaml"
    config.write_text("")
    exporter = Exporter(config, "--netns", lab.director.netns)
    try:
        before = exporter.metrics()
        assert backend_lines(before, "UDP") and "ipvs_up 1" in before
        lab.set_weight(udp, "rs1", 3)  # a slow start needs a weight above 1
        with actuator(lab, tmp_path, slow_start=120.0) as url:
            rs1 = {"service": str(udp.key), "real_server": str(udp.real_server("rs1"))}
            assert http("POST", f"{url}/api/v1/quarantine", rs1)[1]["result"] == "applied"
            _, restore = http("POST", f"{url}/api/v1/restore", rs1)
            assert restore["job_id"] is not None, restore
            job_url = f"{url}/api/v1/jobs/{restore['job_id']}"
            assert http("GET", job_url)[1]["state"] == "running"  # a slow start ramping rs1 back up

            with NetlinkIPVS(lab.director.netns) as kernel:
                kernel.delete_service(udp.key)

            job = wait_for(lambda: (j := http("GET", job_url)[1])["state"] != "running" and j, "the ramp to end")
            assert job["state"] == "failed" and job["message"].endswith("is no longer in the kernel table"), job
            status, reply = http(
                "POST",
                f"{url}/api/v1/quarantine",
                {"service": str(udp.key), "real_server": str(udp.real_server("rs2"))},
            )
            assert (status, reply["result"]) == (404, "not_found")
            services = http("GET", f"{url}/api/v1/services")[1]["services"]
            assert str(udp.key) not in {s["service"] for s in services}
            after = scrape_until(exporter, lambda m: not backend_lines(m, "UDP"), "the exporter to drop the service")
            assert "ipvs_up 1" in after and backend_lines(after, "TCP")  # the rest is still exported

            with NetlinkIPVS(lab.director.netns) as kernel:
                kernel.flush()
            flushed = scrape_until(exporter, lambda m: "ipvs_backend_weight{" not in m, "the exporter to see the flush")
            assert "ipvs_up 1" in flushed
            status, reply = http(
                "POST",
                f"{url}/api/v1/quarantine",
                {"service": str(nat.key), "real_server": str(nat.real_server("rs1"))},
            )
            assert (status, reply["result"]) == (404, "not_found")
            assert http("GET", f"{url}/api/v1/services")[1]["services"] == []
        assert "Traceback" not in "\n".join(exporter.log)
    finally:
        exporter.stop()


def as_nobody(caps: list[str], *argv: str) -> list[str]:
    """``argv`` as user nobody with exactly ``caps`` (bounding, inheritable and ambient), as a unit's User= and AmbientCapabilities= do."""
    spec = ",".join(f"+{c}" for c in caps)
    drop = ["--bounding-set=-all" + ("," + spec if caps else ""), "--inh-caps=-all" + ("," + spec if caps else "")]
    ambient = [f"--ambient-caps=-all,{spec}"] if caps else []
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        *drop,
        *ambient,
        "--no-new-privs",
        *argv,
    ]


def test_the_units_capabilities_are_enough_and_needed(restored: Lab, public: Path, installed_python: Path) -> None:
    lab = restored
    config = public / "empty.yaml"
    config.write_text("")
    nat = lab.nat
    cli = [str(installed_python), "-m", "lvsguard.cli"]
    env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}

    with_caps = Exporter(
        config, "--netns", lab.director.netns, wrap=as_nobody(["net_admin", "sys_admin"]), python=installed_python
    )
    try:
        assert 'ipvs_source="netlink"' in with_caps.metrics() and backend_lines(with_caps.metrics(), "TCP")
    finally:
        with_caps.stop()

    state = public / "state"
    state.mkdir()
    os.chown(state, int(NOBODY), int(NOBODY))
    port = 19931
    proc = subprocess.Popen(
        as_nobody(
            ["net_admin", "sys_admin"],
            *cli,
            "actuator",
            "--netns",
            lab.director.netns,
            "--listen",
            f"127.0.0.1:{port}",
            "--ledger",
            str(state / "actuator.db"),
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is not None or _answers(url), "the actuator to listen", timeout=60)
        assert proc.poll() is None
        target = {"service": str(nat.key), "real_server": str(nat.real_server("rs2"))}
        assert http("POST", f"{url}/api/v1/quarantine", target)[1]["result"] == "applied"
        assert lab.read_table().service(nat.key).real_server(nat.real_server("rs2")).weight == 0  # type: ignore[union-attr]
        assert (
            http("POST", f"{url}/api/v1/restore", {**target, "force": True})[1]["result"] == "applied"
        )  # force: the default hold-down
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err

    without = Exporter(config, "--netns", lab.director.netns, wrap=as_nobody(["sys_admin"]), python=installed_python)
    try:
        metrics = without.metrics()
        assert 'ipvs_source="procfs"' in metrics and "ipvs_up 1" in metrics  # read-only fallback, said plainly
    finally:
        without.stop()


def _answers(url: str) -> bool:
    try:
        http("GET", f"{url}/api/v1/jobs")
    except OSError:
        return False
    return True


def test_an_unwritable_state_directory_is_a_clear_error(lab: Lab, public: Path, installed_python: Path) -> None:
    state = public / "state"
    state.mkdir(mode=0o755)  # root's, as /var/lib/lvsguard would be without StateDirectory=
    env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}
    done = subprocess.run(
        as_nobody(
            ["net_admin", "sys_admin"],
            str(installed_python),
            "-m",
            "lvsguard.cli",
            "actuator",
            "--netns",
            lab.director.netns,
            "--listen",
            "127.0.0.1:19932",
            "--ledger",
            str(state / "actuator.db"),
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(rf"^lvsguard: .*{re.escape(str(state / 'actuator.db'))}", done.stderr, re.M), done.stderr


# --- kill -9 of the actuator during a churn of quarantines, restores and weight changes --------------


class Expected:
    """What the acknowledged requests say about one real server; None where a kill left it unknown."""

    def __init__(self, weight: int):
        self.held: bool | None = False
        self.weight: int | None = weight

    def acknowledged(self, op: str, weight: int, result: str) -> None:
        if result in ("refused", "not_found"):
            return  # nothing changed
        if op == "quarantine":
            self.held = True
        elif op == "restore":
            self.held = False
        else:
            self.weight = weight

    def lost(self, op: str) -> None:
        """The request was cut by the kill: it may or may not have happened."""
        if op == "weight":
            self.weight = None
        else:
            self.held = None


def churn(
    url: str, service: LabService, expected: dict[str, Expected], rng: random.Random, stop: threading.Event
) -> int:
    """Random quarantines, restores and weight changes until the actuator dies or ``stop``; the count sent."""
    sent = 0
    while not stop.is_set():
        name = rng.choice(sorted(expected))
        op = rng.choice(["quarantine", "restore", "weight"])
        weight = rng.randint(1, 5)
        body = {"service": str(service.key), "real_server": str(service.real_server(name)), "force": True}
        if op == "weight":
            body["weight"] = weight
        sent += 1
        try:
            _, reply = http("POST", f"{url}/api/v1/{op}", body)
        except (OSError, ValueError, HTTPException):  # refused, reset, or a reply cut short: the process was killed
            expected[name].lost(op)
            return sent
        expected[name].acknowledged(op, weight, reply.get("result", ""))
    return sent


def test_kill_9_during_a_churn_then_the_ledger_and_the_kernel_agree(restored: Lab, tmp_path: Path) -> None:
    lab = restored
    nat = lab.nat
    rng = random.Random(int(os.environ.get("LVSGUARD_CHURN_SEED", "9")))
    expected = {name: Expected(weight) for name, weight in nat.weights.items()}
    ledger, port = tmp_path / "ledger.db", 19941
    url = f"http://127.0.0.1:{port}"
    kills = sent = 0
    for _ in range(6):
        with actuator_process(lab, ledger, port) as proc:
            stop = threading.Event()
            result: list[int] = []
            worker = threading.Thread(target=lambda: result.append(churn(url, nat, expected, rng, stop)))
            worker.start()
            time.sleep(rng.uniform(0.2, 1.5))  # a random point in the churn, not a timing assertion
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            stop.set()
            worker.join(30)
            sent += result[0] if result else 0
    with actuator_process(lab, ledger, port):  # the restart reconciles the ledger with the kernel
        view = http("GET", f"{url}/api/v1/ledger?active=true")[1]
        kernel = {nat.name_of(rs.key): rs.weight for rs in lab.read_table().service(nat.key).real_servers}  # type: ignore[union-attr]
    held = {name for name in expected if any(h["real_server"] == str(nat.real_server(name)) for h in view["holds"])}
    backends = {nat.name_of(RealServerKey.parse(b["real_server"])): b for b in view["backends"]}
    assert kills == 6 and sent > kills
    unknown = sum(w.held is None or w.weight is None for w in expected.values())
    print(
        f"churn: {sent} requests, {kills} kills, {len(held)} held at the end, {unknown} real servers left unknown by a kill"
    )
    assert [b for b in view["backends"] if b["write_pending"]] == []
    for name, want in expected.items():
        assert (kernel[name] == 0) == (name in held), (name, kernel, held)  # out exactly while held
        if want.held is not None:
            assert (name in held) == want.held, (name, "hold lost or invented")
        if want.weight is not None:
            back_at = backends[name]["original_weight"] if name in held else kernel[name]
            assert back_at == want.weight, (name, "weight lost", back_at, want.weight)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_under_the_ledger_gives_clear_503s_and_no_corruption(restored: Lab) -> None:
    lab = restored
    nat = lab.nat
    disk = Path(tempfile.mkdtemp(prefix="lvsguard-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "lvsguard-full", str(disk)], check=True)
    try:
        with actuator(lab, disk) as url:
            http("GET", f"{url}/api/v1/ledger")  # the ledger exists
            filler = disk / "filler"
            fill(filler)
            statuses = []
            for i in range(12):
                name = ("rs1", "rs2")[i % 2]
                op = "quarantine" if i % 4 < 2 else "restore"
                status, reply = http(
                    "POST",
                    f"{url}/api/v1/{op}",
                    {"service": str(nat.key), "real_server": str(nat.real_server(name)), "force": True},
                )
                statuses.append(status)
                assert status in (200, 503), reply  # never a 500
                if status == 503:
                    assert reply["error"].startswith("ledger: ") and "full" in reply["error"], reply
            filler.unlink()
            view = http("GET", f"{url}/api/v1/ledger?active=true")[1]
            held = {h["real_server"] for h in view["holds"]}
            kernel = {str(rs.key): rs.weight for rs in lab.read_table().service(nat.key).real_servers}  # type: ignore[union-attr]
            assert {rs for rs, w in kernel.items() if w == 0} == held  # whatever was refused left nothing half done
            assert [b for b in view["backends"] if b["write_pending"]] == []
            print(f"disk full: replies {statuses}")
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])",
                str(disk / "ledger.db"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "ok"
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)
