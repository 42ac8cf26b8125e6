"""The importers build the peers' own tables: compared with ``ipvsadm -Sn`` on the real kernel.

For each keepalived.conf under tests/fixtures/import/keepalived-kernel
(NAT, DR with persistence, tunnels, fwmark with mh/sh flags and one-packet
scheduling, IPv6, a virtual_server_group), Debian's keepalived runs its
checker on the file in one network namespace and builds its table (a real
server with no checker counts as up); lvsguard imports the same file and
plans and applies it through netlink in a second namespace. ``ipvsadm -Sn``
of the two must be the same lines, and a plan of the imported config against
keepalived's own table must be empty. The same for a table written with
``ipvsadm`` commands and read back with ``ipvsadm-save -n`` (which leaves
the thresholds out: the plans compare those, over netlink). The same for
the ldirectord.cf files under tests/fixtures/import/ldirectord-kernel, built
by Debian's ldirectord (``checktype = on``: every real server counts as up).

The ldirectord.cf files under tests/fixtures/import/ldirectord-negotiate
(and the keepalived.conf files under tests/fixtures/import/keepalived-checks:
HTTP_GET with a ``digest``)
check the lab's real servers (``negotiate`` over HTTP with request and
receive, ``connect``): ldirectord runs in the lab's director namespace and
its checks decide its table; lvsguard's probes, translated by the importer,
run from the same namespace against the same real servers. A real server
whose answer does not match the receive regex is down for both: removed
from ldirectord's table (``quiescent = no``, its default), judged down by
lvsguard's probe; and the two tables, lvsguard's without what its probes
judged down, are the same lines. (lvsguard's actuator would keep such a real
server at weight 0, which ldirectord does with ``quiescent = yes``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from lab.topology import Lab
from lvsguard import cli, config
from lvsguard.exporter.probes.engine import probe
from lvsguard.exporter.probes.plan import spec
from lvsguard.exporter.probes.result import Target
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.table.apply import apply
from lvsguard.table.importers import ipvsadm as ipvsadm_importer
from lvsguard.table.importers import keepalived as keepalived_importer
from lvsguard.table.importers import ldirectord as ldirectord_importer
from lvsguard.table.importers import render
from lvsguard.table.importers._emit import Imported
from lvsguard.table.load import load_table
from lvsguard.table.plan import plan
from tests.integration.test_probes_checks_kernel import in_netns

pytestmark = pytest.mark.kernel

THEIRS = "lvsg-rt-peer"
OURS = "lvsg-rt-ours"
KEEPALIVED = "/usr/sbin/keepalived"
LDIRECTORD = "/usr/sbin/ldirectord"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "import" / "keepalived-kernel"
LDIRECTORD_FIXTURES = FIXTURES.parent / "ldirectord-kernel"
NEGOTIATE_FIXTURES = FIXTURES.parent / "ldirectord-negotiate"
NEGOTIATE_DOWN = {"negotiate": set(), "mismatch": {("TCP 192.0.2.43:80", "10.0.1.4:8080")}}
"""The real servers each negotiate fixture's checks find down (the lab's real servers answer their name)."""
CHECKS_FIXTURES = FIXTURES.parent / "keepalived-checks"
CHECKS_DOWN = {"digest": {("TCP 192.0.2.45:80", "10.0.1.4:8080")}}
"""The real servers each keepalived-checks fixture's checks find down."""
NEGOTIATE_TIMEOUT = 120.0
"""ldirectord starts with one ipvsadm process per entry, and more when it adds and removes: 30 s were too few in a
loaded lab VM."""
BUILD_TIMEOUT = 30.0

IPVSADM_RULES = [
    "-A -t 192.0.2.10:80 -s wrr",
    "-a -t 192.0.2.10:80 -r 10.0.1.2:80 -m -w 3 -x 100 -y 10",
    "-a -t 192.0.2.10:80 -r 10.0.1.3:8080 -m -w 0",
    "-A -u 192.0.2.10:53 -s sh -b sh-fallback,sh-port -o",
    "-a -u 192.0.2.10:53 -r 10.0.1.4:53 -g -w 2",
    "-A -f 7 -s mh -b mh-port -p 600 -M 255.255.255.0",
    "-a -f 7 -r 10.0.1.5:0 -i --tun-type gue --tun-port 6080 --tun-csum -w 1",
    "-a -f 7 -r 10.0.1.6:0 -i --tun-type gre --tun-csum -w 1",
    "-A -f 8 -6 -s rr -p 120 -M 64",
    "-a -f 8 -6 -r [2001:db8:1::3]:0 -g -w 1",
    "-A --sctp-service [2001:db8::10]:5060 -s wlc",
    "-a --sctp-service [2001:db8::10]:5060 -r [2001:db8:1::4]:5060 -m -w 7",
    "-a --sctp-service [2001:db8::10]:5060 -r 10.0.1.7:5060 -i -w 1",
]


def run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def saved(netns: str) -> list[str]:
    """``ipvsadm -Sn`` of ``netns``, sorted (the kernel lists services in hash order)."""
    return sorted(run("ip", "netns", "exec", netns, "ipvsadm", "-Sn").splitlines())


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    for name in (THEIRS, OURS):
        run("ip", "netns", "del", name, check=False)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
    try:
        yield
    finally:
        for name in (THEIRS, OURS):
            run("ip", "netns", "del", name, check=False)


@pytest.fixture
def ours(namespaces: None) -> Iterator[NetlinkIPVS]:
    for name in (THEIRS, OURS):
        run("ip", "netns", "exec", name, "ipvsadm", "-C")
    with NetlinkIPVS(OURS) as ipvs:
        yield ipvs


def build_ours(ipvs: NetlinkIPVS, text: str) -> None:
    """What ``lvsguard apply`` will do: load the config, plan against the kernel, apply."""
    _, desired, problems = load_table(yaml.safe_load(text))
    assert problems == []
    result = apply(plan(desired, ipvs.read(), prune="exact"), ipvs)
    assert result.ok, str(result)
    left = plan(desired, ipvs.read(), prune="exact")
    assert left.empty, f"the kernel reads back something else than was asked:\n{left}"


def wait_for_lines(netns: str, count: int, proc: subprocess.Popen[bytes], log: Path, name: str) -> list[str]:
    """Poll ``ipvsadm -Sn`` until it has ``count`` rules twice in a row."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    last: list[str] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
        lines = saved(netns)
        if len(lines) == count and lines == last:
            return lines
        last = lines
        time.sleep(0.5)
    raise AssertionError(f"{name} built {len(last)} of {count} rules in {BUILD_TIMEOUT:.0f} s:\n{log.read_text()}")


@contextmanager
def peer(argv: list[str], tmp: str, netns: str = THEIRS) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The peer daemon ``argv`` running in the foreground in ``netns``, stopped (SIGTERM) at the end."""
    log = Path(tmp) / "peer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def same_table(imported: Imported, argv: list[str], tmp: str, ours: NetlinkIPVS) -> None:
    """The peer started with ``argv`` and lvsguard applying ``imported`` build the same ``ipvsadm -Sn``."""
    rules = sum(1 + len(s.service.real_servers) for s in imported.services)
    _, desired, _ = load_table(yaml.safe_load(render(imported)))
    with peer(argv, tmp) as (proc, log):
        theirs = wait_for_lines(THEIRS, rules, proc, log, Path(argv[0]).name)
        with NetlinkIPVS(THEIRS) as other:
            left = plan(desired, other.read(), prune="exact")
            assert left.empty, f"{Path(argv[0]).name}'s table differs from the import:\n{left}{theirs}"
    build_ours(ours, render(imported))
    assert saved(OURS) == theirs


@pytest.mark.skipif(not os.access(KEEPALIVED, os.X_OK), reason="needs Debian's keepalived")
@pytest.mark.parametrize("conf", sorted(FIXTURES.glob("*.conf")), ids=lambda p: p.stem)
def test_keepalived_conf_builds_the_same_table(conf: Path, ours: NetlinkIPVS) -> None:
    imported = keepalived_importer.parse(conf.read_text(), str(conf))
    with tempfile.TemporaryDirectory(prefix="lvsg-rt-") as tmp:
        argv = [KEEPALIVED, "--check", "--dont-fork", "-l", "-D", "-f", str(conf)]
        same_table(imported, argv + ["-p", f"{tmp}/k.pid", "-c", f"{tmp}/c.pid", "-r", f"{tmp}/v.pid"], tmp, ours)


@pytest.mark.skipif(not os.access(LDIRECTORD, os.X_OK), reason="needs Debian's ldirectord")
@pytest.mark.parametrize("conf", sorted(LDIRECTORD_FIXTURES.glob("*.cf")), ids=lambda p: p.stem)
def test_ldirectord_cf_builds_the_same_table(conf: Path, ours: NetlinkIPVS) -> None:
    """ldirectord -d stays in the foreground, writes no pid file and removes its services when stopped."""
    imported = ldirectord_importer.parse(conf.read_text(), str(conf))
    with tempfile.TemporaryDirectory(prefix="lvsg-rt-") as tmp:
        same_table(imported, [LDIRECTORD, "-d", str(conf), "start"], tmp, ours)


def verdicts(lab: Lab, cfg: config.Config) -> dict[tuple[str, str], bool]:
    """Each (service, real server) judged by every probe of the config, once, from the director's namespace."""
    out: dict[tuple[str, str], bool] = {}
    for check in cfg.probes.checks:
        assert check.real_server is not None and check.service is not None, "the importer names both"
        address, port = check.real_server.address, check.port or check.real_server.port
        result = in_netns(lab.director.netns, lambda: probe(spec(check), Target(address, port)))
        key = (str(check.service), str(check.real_server))
        out[key] = out.get(key, True) and result.ok
    return out


def checks_decide_the_same_table(
    text: str, name: str, down: set[tuple[str, str]], argv: list[str], lab: Lab, ours: NetlinkIPVS
) -> None:
    """The peer (``argv``) and lvsguard's probes of its import ``text`` judge the lab's real servers alike.

    The peer runs in the director's namespace and removes what its checks find down; lvsguard's table is the import
    without what its probes judged down: the two must become the same lines.
    """
    judged = verdicts(lab, config.loads(text, name))
    assert {rs for rs, ok in judged.items() if not ok} == down, judged
    doc = yaml.safe_load(text)
    for svc in doc["services"]:  # what the peer does with a failed real server: removed
        svc["real_servers"] = [rs for rs in svc["real_servers"] if judged[(svc["service"], rs["address"])]]
    build_ours(ours, yaml.safe_dump(doc, sort_keys=False))
    expected = saved(OURS)
    vips = {svc["service"].split()[1] for svc in doc["services"]}
    netns = lab.director.netns
    peer_name = Path(argv[0]).name
    try:
        with tempfile.TemporaryDirectory(prefix="lvsg-rt-") as tmp, peer(argv, tmp, netns) as (proc, log):
            deadline = time.monotonic() + NEGOTIATE_TIMEOUT
            theirs: list[str] = []
            while time.monotonic() < deadline and theirs != expected:
                assert proc.poll() is None, f"{peer_name} exited with {proc.returncode}:\n{log.read_text()}"
                time.sleep(0.5)
                theirs = [line for line in saved(netns) if line.split()[2] in vips]
            assert theirs == expected, f"{peer_name}'s table (its log:\n{log.read_text()})"
    finally:
        for vip in vips:
            run("ip", "netns", "exec", netns, "ipvsadm", "-D", "-t", vip, check=False)


@pytest.mark.skipif(not os.access(LDIRECTORD, os.X_OK), reason="needs Debian's ldirectord")
@pytest.mark.parametrize("conf", sorted(NEGOTIATE_FIXTURES.glob("*.cf")), ids=lambda p: p.stem)
def test_ldirectord_negotiate_checks_decide_the_same_table(conf: Path, lab: Lab, ours: NetlinkIPVS) -> None:
    text = render(ldirectord_importer.parse(conf.read_text(), str(conf)))
    argv = [LDIRECTORD, "-d", str(conf), "start"]
    checks_decide_the_same_table(text, str(conf), NEGOTIATE_DOWN[conf.stem], argv, lab, ours)


@pytest.mark.skipif(not os.access(KEEPALIVED, os.X_OK), reason="needs Debian's keepalived")
@pytest.mark.parametrize("conf", sorted(CHECKS_FIXTURES.glob("*.conf")), ids=lambda p: p.stem)
def test_keepalived_checks_decide_the_same_table(conf: Path, lab: Lab, ours: NetlinkIPVS, tmp_path: Path) -> None:
    """keepalived's HTTP_GET digest and the imported probe's digest find the same real server down."""
    text = render(keepalived_importer.parse(conf.read_text(), str(conf)))
    assert "digest:" in text and "not translated" not in text
    pids = ["-p", f"{tmp_path}/k.pid", "-c", f"{tmp_path}/c.pid", "-r", f"{tmp_path}/v.pid"]
    argv = [KEEPALIVED, "--check", "--dont-fork", "-l", "-D", "-f", str(conf), *pids]
    checks_decide_the_same_table(text, str(conf), CHECKS_DOWN[conf.stem], argv, lab, ours)


def test_ipvsadm_save_round_trip(ours: NetlinkIPVS) -> None:
    for rule in IPVSADM_RULES:
        run("ip", "netns", "exec", THEIRS, "ipvsadm", *rule.split())
    dump = run("ip", "netns", "exec", THEIRS, "ipvsadm-save", "-n")
    build_ours(ours, render(ipvsadm_importer.parse(dump, "ipvsadm-save")))
    assert saved(OURS) == saved(THEIRS)
    assert len(saved(OURS)) == len(IPVSADM_RULES)


def test_scheduler_persistence_weight_and_threshold_changes_are_edits(ours: NetlinkIPVS) -> None:
    """The kernel takes every change of a kept identity as an edit in place, and reads back the new settings."""
    before = "-A -t 192.0.2.10:80 -s rr\n-a -t 192.0.2.10:80 -r 10.0.1.2:80 -m -w 1\n"
    after = "-A -t 192.0.2.10:80 -s wlc -p 60\n-a -t 192.0.2.10:80 -r 10.0.1.2:80 -m -w 9 -x 50\n"
    build_ours(ours, render(ipvsadm_importer.parse(before, "before")))
    _, desired, _ = load_table(yaml.safe_load(render(ipvsadm_importer.parse(after, "after"))))
    steps = plan(desired, ours.read(), prune="exact")
    assert [s.op.name for s in steps.steps] == ["EDIT_SERVICE", "EDIT_REAL_SERVER"]
    assert apply(steps, ours).ok
    svc = ours.read_service(desired.services[0].key)
    assert (svc.scheduler, svc.timeout) == ("wlc", 60)
    rs = svc.real_servers[0]
    assert (rs.weight, rs.upper_threshold) == (9, 50)  # ipvsadm-save does not show thresholds: read them back


def test_diff_says_pending_then_matches(ours: NetlinkIPVS, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lvsguard.yaml"
    config.write_text(render(keepalived_importer.parse((FIXTURES / "nat.conf").read_text(), "nat.conf")))
    assert cli.main(["diff", "--config", str(config), "--netns", OURS]) == 2
    printed = capsys.readouterr().out
    assert printed.startswith("+ TCP 192.0.2.10:80: scheduler wrr\n    + 10.0.1.2:80: masq, weight 3")
    assert printed.endswith("Plan: 1 service to add; 3 real servers to add.\n")
    build_ours(ours, config.read_text())
    assert cli.main(["diff", "--config", str(config), "--netns", OURS]) == 0
    assert capsys.readouterr().out == "No changes: the kernel's table matches the config.\n"
    # a hand change: ipvsadm -e sets every setting, so the thresholds go back to 0 with it
    run("ip", "netns", "exec", OURS, "ipvsadm", "-e", "-t", "192.0.2.10:80", "-r", "10.0.1.2:80", "-m", "-w", "1")
    assert cli.main(["diff", "--config", str(config), "--netns", OURS]) == 2
    assert "~ 10.0.1.2:80: weight 1 → 3; upper threshold 0 → 100; lower threshold 0 → 10" in capsys.readouterr().out


def test_a_refused_service_fails_alone_in_a_pipelined_build(ours: NetlinkIPVS) -> None:
    """One request of a batch refused (no such scheduler): its service and real servers fail, named; the rest is built."""
    rules = "".join(
        f"-A -t 192.0.2.{i}:80 -s {'nosuch' if i == 2 else 'rr'}\n-a -t 192.0.2.{i}:80 -r 10.0.1.{i}:80 -m -w 1\n"
        for i in (1, 2, 3)
    )
    _, desired, _ = load_table(yaml.safe_load(render(ipvsadm_importer.parse(rules, "rules"))))
    result = apply(plan(desired, ours.read(), prune="exact"), ours)
    assert [str(f) for f in result.failures] == [
        "service TCP 192.0.2.2:80: no scheduler 'nosuch' in this kernel",
        "service TCP 192.0.2.2:80: no scheduler 'nosuch' in this kernel",
    ]
    assert len(result.applied) == 4
    assert saved(OURS) == sorted(
        f"-{c} -t 192.0.2.{i}:80" + (f" -r 10.0.1.{i}:80 -m -w 1" if c == "a" else " -s rr")
        for i in (1, 3)
        for c in "Aa"
    )


def test_killed_during_a_large_apply_the_next_apply_converges(ours: NetlinkIPVS, tmp_path: Path) -> None:
    """kill -9 in the middle of building 2 000 services: a new plan finishes the table, nothing doubled or lost.

    The applying process SIGKILLs itself once the services and half of the
    real servers are written (between two pipelined batches), so the kill
    lands mid-apply on every run, however fast the machine.
    """
    rules = "".join(
        f"-A -t 10.{i // 250}.{i % 250}.1:80 -s wrr\n"
        + "".join(
            f"-a -t 10.{i // 250}.{i % 250}.1:80 -r 172.16.{i // 64}.{i % 64 * 4 + j}:80 -m -w 1\n" for j in range(4)
        )
        for i in range(2000)
    )
    config = tmp_path / "big.yaml"
    config.write_text(render(ipvsadm_importer.parse(rules, "rules")))
    _, desired, _ = load_table(yaml.safe_load(config.read_text()))
    total = len(desired) + desired.real_server_count
    script = (
        "import os, signal, sys, yaml\n"
        "from lvsguard.ipvs.netlink import NetlinkIPVS\n"
        "from lvsguard.table.apply import apply\n"
        "from lvsguard.table.load import load_table\n"
        "from lvsguard.table.plan import plan\n"
        "class Dying(NetlinkIPVS):\n"
        "    def add_real_servers_to(self, servers):\n"
        "        servers = list(servers)\n"
        "        super().add_real_servers_to(servers[: len(servers) // 2])\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "_, desired, _ = load_table(yaml.safe_load(open(sys.argv[1]).read()))\n"
        f"ipvs = Dying({OURS!r})\n"
        "apply(plan(desired, ipvs.read(), prune='exact'), ipvs)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    table = ours.read()
    partial = len(table.services) + table.real_server_count
    assert partial == len(desired) + desired.real_server_count // 2
    steps = plan(desired, table, prune="exact")
    assert len(steps.operations) == total - partial  # only what is missing: nothing redone, nothing removed
    assert apply(steps, ours).ok
    assert plan(desired, ours.read(), prune="exact").empty
