"""ipvsadm, the reference tool, as the lab's builder and independent witness.

The lab creates its IPVS services with ``ipvsadm -R`` (one process for any
number of rules) and reads the table back through ipvsadm's own listings. That
view comes from code that is not lvsguard's, so the kernel tests can compare
lvsguard's readers against it instead of against themselves.

Everything runs inside a named network namespace by entering it on the calling
thread (a child process inherits the namespace of the thread that forks it).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lvsguard.ipvs.netns import entered
from lvsguard.model import (
    FWM,
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    Stats,
    Table,
    VirtualService,
    format_endpoint,
)

_FORWARD_FLAG = {Forward.MASQ: "-m", Forward.ROUTE: "-g", Forward.TUNNEL: "-i"}
_PROTOCOL_FLAG = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
_SCHED_FLAG_BITS = {"flag-1": ServiceFlags.SCHED1, "flag-2": ServiceFlags.SCHED2, "flag-3": ServiceFlags.SCHED3}
_SCHED_FLAG_NAMES = {
    ServiceFlags.SCHED1: "{s}-fallback",
    ServiceFlags.SCHED2: "{s}-port",
    ServiceFlags.SCHED3: "flag-3",
}
_SECTION = "#lab-ipvsadm-section#"


class IpvsadmError(RuntimeError):
    """ipvsadm failed or printed something the lab cannot read."""


def run(args: Sequence[str], *, netns: str | None = None, stdin: str | None = None) -> str:
    """Run a command in ``netns`` and return its stdout; raise IpvsadmError naming it on failure."""
    with entered(netns):
        proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        where = f" in netns {netns}" if netns else ""
        detail = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise IpvsadmError(f"{' '.join(args)}{where}: {detail}")
    return proc.stdout


# --- rules (what ipvsadm -R reads) -------------------------------------------------


def _target(key: ServiceKey) -> str:
    if key.protocol == FWM:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    return f"{_PROTOCOL_FLAG[key.protocol]} {format_endpoint(key.address, key.port)}"


def _netmask(svc: VirtualService) -> str:
    if svc.key.family == 6:
        return str(svc.netmask)
    return str(ipaddress.IPv4Address(svc.netmask))


def service_rule(svc: VirtualService) -> str:
    """The ``-A`` line that creates ``svc`` (scheduler, persistence, flags)."""
    line = f"-A {_target(svc.key)} -s {svc.scheduler}"
    if svc.flags & ServiceFlags.PERSISTENT:
        line += f" -p {svc.timeout}"
        if svc.netmask:
            line += f" -M {_netmask(svc)}"
    if svc.flags & ServiceFlags.ONEPACKET:
        line += " -o"
    if svc.pe_name:
        line += f" --pe {svc.pe_name}"
    sched = [name.format(s=svc.scheduler) for bit, name in _SCHED_FLAG_NAMES.items() if svc.flags & bit]
    if sched:
        line += " -b " + ",".join(sched)
    return line


def real_server_rule(service: ServiceKey, rs: RealServer, *, command: str = "-a") -> str:
    """The ``-a`` (or ``-e``) line for ``rs``: forwarding method, weight and thresholds all spelled out.

    ipvsadm sends every field on an edit, so a line that leaves out the method
    would turn a Masq real server into Route.
    """
    flag = _FORWARD_FLAG.get(rs.forward)
    if flag is None:
        raise IpvsadmError(f"real server {rs.key} of {service}: ipvsadm cannot set forwarding method {rs.forward}")
    line = f"{command} {_target(service)} -r {format_endpoint(rs.key.address, rs.key.port)} {flag} -w {rs.weight}"
    if rs.upper_threshold or rs.lower_threshold:
        line += f" -x {rs.upper_threshold} -y {rs.lower_threshold}"
    return line


def rules(services: Iterable[VirtualService]) -> str:
    """The whole ``ipvsadm -R`` input for ``services`` and their real servers."""
    lines: list[str] = []
    for svc in services:
        lines.append(service_rule(svc))
        lines.extend(real_server_rule(svc.key, rs) for rs in svc.real_servers)
    return "\n".join(lines) + "\n"


def restore(services: Iterable[VirtualService], *, netns: str | None = None) -> None:
    """Create ``services`` with one ``ipvsadm -R``."""
    run(["ipvsadm", "-R"], netns=netns, stdin=rules(services))


def clear(*, netns: str | None = None) -> None:
    """Delete every virtual service (``ipvsadm -C``)."""
    run(["ipvsadm", "-C"], netns=netns)


# --- listings (what ipvsadm -L prints) ---------------------------------------------


@dataclass
class _Row:
    """One line of a listing: the service (or real server) and its numeric columns."""

    service: ServiceKey
    real_server: RealServerKey | None
    words: list[str]  # what follows the address: scheduler + flags, or numbers


def _parse_service_head(tokens: list[str]) -> tuple[ServiceKey, list[str]]:
    proto = tokens[0]
    if proto == FWM:
        family = 6 if len(tokens) > 2 and tokens[2] == "IPv6" else 4
        rest = tokens[3:] if family == 6 else tokens[2:]
        return ServiceKey(FWM, "", 0, int(tokens[1]), family), rest
    return ServiceKey.parse(f"{proto} {tokens[1]}"), tokens[2:]


def _rows(listing: str) -> list[_Row]:
    rows: list[_Row] = []
    service: ServiceKey | None = None
    for number, line in enumerate(listing.splitlines(), 1):
        tokens = line.split()
        if not tokens or number <= 3:  # version line and the two header lines
            continue
        try:
            if tokens[0] == "->":
                if service is None:
                    raise ValueError("real server before any service")
                rows.append(_Row(service, RealServerKey.parse(tokens[1]), tokens[2:]))
            else:
                service, rest = _parse_service_head(tokens)
                rows.append(_Row(service, None, rest))
        except (ValueError, IndexError) as exc:
            raise IpvsadmError(f"ipvsadm listing line {number}: cannot read {line.strip()!r}: {exc}") from None
    return rows


def _service_config(words: list[str]) -> tuple[str, int, int, int, str]:
    """scheduler, flags, timeout, netmask, pe_name from ``wrr persistent 300 mask ... ops``."""
    scheduler, flags, timeout, netmask, pe_name = words[0], 0, 0, 0, ""
    rest = iter(words[1:])
    for word in rest:
        if word == "persistent":
            flags |= ServiceFlags.PERSISTENT
            timeout = int(next(rest))
        elif word == "mask":
            mask = next(rest)
            netmask = int(ipaddress.IPv4Address(mask)) if "." in mask else int(mask)
        elif word == "ops":
            flags |= ServiceFlags.ONEPACKET
        elif word == "pe":
            pe_name = next(rest)
        elif word.endswith("-fallback"):
            flags |= ServiceFlags.SCHED1
        elif word.endswith("-port"):
            flags |= ServiceFlags.SCHED2
        elif word in _SCHED_FLAG_BITS:
            flags |= _SCHED_FLAG_BITS[word]
    return scheduler, flags, timeout, netmask, pe_name


def _stats(counters: list[str], rates: list[str]) -> Stats:
    conns, inpkts, outpkts, inbytes, outbytes = (int(w) for w in counters[:5])
    cps, inpps, outpps, inbps, outbps = (int(w) for w in rates[:5])
    return Stats(conns, inpkts, outpkts, inbytes, outbytes, cps, inpps, outpps, inbps, outbps)


def parse_listings(plain: str, stats: str, rates: str, thresholds: str, persistent: str) -> Table:
    """Merge the five ``ipvsadm -Ln`` listings into one Table (source ``ipvsadm``)."""
    by_key: dict[tuple[ServiceKey, RealServerKey | None], dict[str, list[str]]] = {}
    order: list[tuple[ServiceKey, RealServerKey | None]] = []
    for name, listing in (
        ("plain", plain),
        ("stats", stats),
        ("rates", rates),
        ("thresholds", thresholds),
        ("persistent", persistent),
    ):
        for row in _rows(listing):
            key = (row.service, row.real_server)
            if key not in by_key:
                by_key[key] = {}
                order.append(key)
            by_key[key][name] = row.words
    services: list[VirtualService] = []
    for svc_key, rs_key in order:
        if rs_key is not None:
            continue
        cols = by_key[(svc_key, None)]
        scheduler, flags, timeout, netmask, pe_name = _service_config(cols["plain"])
        real_servers = tuple(_real_server(rk, by_key[(sk, rk)]) for sk, rk in order if sk == svc_key and rk is not None)
        services.append(
            VirtualService(
                svc_key,
                scheduler,
                flags | ServiceFlags.HASHED,
                timeout,
                netmask,
                pe_name,
                _stats(cols["stats"], cols["rates"]),
                real_servers,
            )
        )
    return Table(tuple(services), source="ipvsadm")


def _real_server(key: RealServerKey, cols: dict[str, list[str]]) -> RealServer:
    forward, weight, active, inactive = cols["plain"][:4]
    upper, lower = cols["thresholds"][:2]
    return RealServer(
        key=key,
        weight=int(weight),
        forward=Forward.from_name(forward),
        upper_threshold=int(upper),
        lower_threshold=int(lower),
        active_connections=int(active),
        inactive_connections=int(inactive),
        persistent_connections=int(cols["persistent"][1]),
        stats=_stats(cols["stats"], cols["rates"]),
    )


def read_counters(*, netns: str | None = None) -> dict[tuple[ServiceKey, RealServerKey | None], Stats]:
    """Counters of every service (real server None) and real server, from one ``ipvsadm -Ln --stats --exact``."""
    zero = ["0"] * 5
    return {
        (row.service, row.real_server): _stats(row.words, zero)
        for row in _rows(run(["ipvsadm", "-Ln", "--stats", "--exact"], netns=netns))
    }


def read_table(*, netns: str | None = None) -> Table:
    """The IPVS table as ipvsadm lists it (one shell, five listings).

    The listings are not one atomic read: with traffic running, counters can
    move between them. Tests read it once traffic has stopped.
    """
    script = "; ".join(
        f"ipvsadm -Ln {opts} && echo '{_SECTION}'"
        for opts in ("", "--stats --exact", "--rate --exact", "--thresholds", "--persistent-conn")
    )
    out = run(["sh", "-ec", script], netns=netns)
    parts = out.split(_SECTION + "\n")
    if len(parts) != 6:
        raise IpvsadmError(f"ipvsadm listings in netns {netns}: expected 5 sections, got {len(parts) - 1}")
    return parse_listings(*parts[:5])
