"""Read-only IPVS table from /proc/net/ip_vs and /proc/net/ip_vs_stats.

The fallback for a director where netlink is not permitted (it needs
CAP_NET_ADMIN; these files are world-readable). It serves what the text
format has: services, real servers, forwarding, weights, active and inactive
connections, and the host totals. It has no per-object counters (``stats`` is
``ZERO_STATS``), no thresholds, no persistent-connection counts and no sync
daemons.

I/O and parsing are apart: ``ProcfsReader`` opens the two files once, inside
the director's network namespace, and re-reads them with ``os.pread`` from
offset 0 (a seq file restarts there), so every read stays in that namespace
from any thread. ``parse_ip_vs`` and ``parse_ip_vs_stats`` are pure.

The format is that of ``ip_vs_info_seq_show`` and ``ip_vs_stats_show`` in
net/netfilter/ipvs/ip_vs_ctl.c; tests/fixtures/proc/ holds text captured
from a 6.1 kernel::

    IP Virtual Server version 1.2.1 (size=4096)
    Prot LocalAddress:Port Scheduler Flags
      -> RemoteAddress:Port Forward Weight ActiveConn InActConn
    TCP  C000020A:0050 wrr  persistent 180000 FFFFFF00
      -> 0A000102:0050      Masq    3      0          0
    UDP  [2001:0db8:0000:0000:0000:0000:0000:0010]:0035 rr
    FWM  00000001 wlc ops

Kernel quirks this module undoes, each seen on 6.1:

* the persistence timeout is printed in jiffies, so seconds need the kernel's
  CONFIG_HZ (``kernel_hz``); when it is unknown the timeout reads 0;
* an IPv6 service's netmask is a prefix length passed through ``ntohl``, so a
  little-endian kernel prints /64 as ``40000000``;
* a fwmark line does not say the service's address family: it is taken from a
  real server that is not tunnelled (the kernel only lets tunnels cross
  families), else from an IPv6-shaped netmask, else IPv4;
* ``ops`` (one-packet scheduling) is printed for IPv4 and fwmark services
  only, so an IPv6 service never shows ONEPACKET here;
* a "Bypass" real server is printed as "Masq" (``ip_vs_fwd_name``); the
  name is still accepted.
"""

from __future__ import annotations

import errno as errno_codes
import gzip
import ipaddress
import os
import re
import socket
import string
import threading
import time

from lvsguard.errors import IPVSUnavailable, KernelError, NotPermitted, ProcfsFormatError
from lvsguard.ipvs.netns import entered, proc_net_path
from lvsguard.model import (
    FWM,
    PROTOCOLS,
    ZERO_STATS,
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    Stats,
    Table,
    VirtualService,
    fast_constructor,
)

IP_VS = "ip_vs"
IP_VS_STATS = "ip_vs_stats"

_READ_SIZE = 1 << 20  # bytes per pread; a seq file returns at most its buffer (a page or one service) per call

_FORWARD = {
    "Masq": Forward.MASQ,
    "Local": Forward.LOCAL,
    "Tunnel": Forward.TUNNEL,
    "Route": Forward.ROUTE,
    "Bypass": Forward.BYPASS,
}

_HZ_VALUES = (100, 250, 300, 1000)  # the CONFIG_HZ choices of kernel/Kconfig.hz
_INITIAL_JIFFIES_SECONDS = 300  # jiffies start 300 s before wrapping 32 bits (INITIAL_JIFFIES)


class _Lines:
    """The lines of one file, numbered from 1, with errors that point at them."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.lines = text.splitlines()

    def error(self, lineno: int, reason: str) -> ProcfsFormatError:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        return ProcfsFormatError(self.path, lineno, line, reason)


def _hex(token: str, what: str) -> int:
    if not token or token.strip(string.hexdigits):
        raise ValueError(f"{what} {token!r} is not hexadecimal")
    return int(token, 16)


def _dec(token: str, what: str) -> int:
    if not token.isdigit():
        raise ValueError(f"{what} {token!r} is not a decimal number")
    return int(token)


def _endpoint(token: str, cache: dict[str, tuple[str, int, int]]) -> tuple[str, int, int]:
    """``0A000102:0050`` or ``[2001:0db8:...:0002]:01BB`` -> (address, port, family)."""
    found = cache.get(token)
    if found is not None:
        return found
    if token.startswith("["):
        host, sep, port = token[1:].partition("]:")
        digits = host.replace(":", "")
        if not sep or len(digits) != 32:
            raise ValueError(f"address {token!r} is not [IPv6]:PORT in hex")
        address = ipaddress.IPv6Address(bytes.fromhex(digits)).compressed
        family = 6
    else:
        host, sep, port = token.partition(":")
        if not sep or len(host) != 8:
            raise ValueError(f"address {token!r} is not IPv4:PORT in hex")
        address = socket.inet_ntoa(bytes.fromhex(host))
        family = 4
    if len(port) != 4:
        raise ValueError(f"port of {token!r} is not 4 hex digits")
    found = (address, _hex(port, "port"), family)
    cache[token] = found
    return found


def _is_ipv4_mask(value: int) -> bool:
    inverted = ~value & 0xFFFFFFFF
    return value != 0 and inverted & (inverted + 1) == 0


def _ipv6_prefix(value: int) -> int:
    """Undo ``ntohl`` of an IPv6 prefix length (a no-op on a big-endian kernel)."""
    return value if value <= 128 else int.from_bytes(value.to_bytes(4, "little"), "big")


class _ServiceLine:
    """A service line and its real servers, until the block ends."""

    def __init__(self, protocol: str, address: str, port: int, fwmark: int, family: int | None):
        self.protocol = protocol
        self.address = address
        self.port = port
        self.fwmark = fwmark
        self.family = family  # None: a fwmark line, decided in build()
        self.scheduler = ""
        self.flags = int(ServiceFlags.HASHED)  # every service in the table is hashed
        self.jiffies = 0
        self.raw_netmask = 0
        self.real_servers: list[RealServer] = []

    def build(self, hz: int | None) -> VirtualService:
        family = self.family or self._fwmark_family()
        netmask = self.raw_netmask
        if family == 6 and self.flags & ServiceFlags.PERSISTENT:
            netmask = _ipv6_prefix(netmask)
        return VirtualService(
            key=ServiceKey(self.protocol, self.address, self.port, self.fwmark, family),
            scheduler=self.scheduler,
            flags=self.flags,
            timeout=self.jiffies // hz if hz else 0,
            netmask=netmask,
            real_servers=tuple(self.real_servers),
        )

    def _fwmark_family(self) -> int:
        for rs in self.real_servers:
            if rs.forward is not Forward.TUNNEL:
                return rs.key.family
        if self.flags & ServiceFlags.PERSISTENT:
            mask = self.raw_netmask
            if mask == 0x80000000 or not _is_ipv4_mask(mask):  # /128 is the IPv6 default; /1 is no IPv4 mask
                return 6
        return 4


def _service_line(tokens: list[str], cache: dict[str, tuple[str, int, int]]) -> _ServiceLine:
    proto = tokens[0]
    if len(tokens) < 3:
        raise ValueError("a service line needs a protocol, an address and a scheduler")
    if proto == FWM:
        svc = _ServiceLine(FWM, "", 0, _hex(tokens[1], "firewall mark"), None)
    else:
        address, port, family = _endpoint(tokens[1], cache)
        svc = _ServiceLine(proto, address, port, 0, family)
    svc.scheduler = tokens[2]
    flags = tokens[3:]
    if flags[:1] == ["ops"]:
        svc.flags |= ServiceFlags.ONEPACKET
        flags = flags[1:]
    if flags[:1] == ["persistent"] and len(flags) == 3:
        svc.flags |= ServiceFlags.PERSISTENT
        svc.jiffies = _dec(flags[1], "persistence timeout")
        svc.raw_netmask = _hex(flags[2], "persistence netmask")
        if svc.raw_netmask > 0xFFFFFFFF:  # the kernel prints a 32-bit mask (or IPv6 prefix length)
            raise ValueError(f"persistence netmask {flags[2]!r} is wider than 32 bits")
    elif flags:
        raise ValueError(f"unknown service flags {' '.join(flags)!r}")
    return svc


_make_real_server = fast_constructor(RealServer)
_make_real_server_key = fast_constructor(RealServerKey)


def _real_server(
    tokens: list[str], cache: dict[str, tuple[str, int, int]], keys: dict[str, RealServerKey]
) -> RealServer:
    """One ``  -> ADDRESS:PORT Forward Weight ActiveConn InActConn`` line.

    The hot path of a large table (100 000 lines): keys are shared between
    services and the values are checked here, so it builds without __init__.
    """
    if len(tokens) != 6:
        raise ValueError("a real server line needs address, forward, weight, ActiveConn and InActConn")
    _, endpoint, method, weight, active, inactive = tokens
    key = keys.get(endpoint)
    if key is None:
        key = keys[endpoint] = _make_real_server_key(*_endpoint(endpoint, cache))
    forward = _FORWARD.get(method)
    if forward is None:
        raise ValueError(f"unknown forwarding method {method!r}")
    if not (weight.isdigit() and active.isdigit() and inactive.isdigit()):
        for token, what in ((weight, "weight"), (active, "ActiveConn"), (inactive, "InActConn")):
            _dec(token, what)
    return _make_real_server(
        key=key,
        weight=int(weight),
        forward=forward,
        upper_threshold=0,
        lower_threshold=0,
        active_connections=int(active),
        inactive_connections=int(inactive),
        persistent_connections=0,
        stats=ZERO_STATS,
        tunnel_type=0,
        tunnel_port=0,
        tunnel_flags=0,
    )


def parse_ip_vs(text: str, *, hz: int | None = None, path: str = "/proc/net/ip_vs") -> tuple[VirtualService, ...]:
    """Parse /proc/net/ip_vs into services in the kernel's order.

    ``hz`` is the kernel's CONFIG_HZ, needed to turn the persistence timeout
    (printed in jiffies) into seconds; None leaves ``timeout`` at 0. ``path``
    only names the file in errors. A seq file is read in several calls, so a
    service that moves in the kernel's hash table during a read can be
    printed twice: the first one is kept.
    """
    lines = _Lines(text, path)
    if not lines.lines or not lines.lines[0].startswith("IP Virtual Server version"):
        raise lines.error(1, "not an IPVS table (no 'IP Virtual Server version' header)")
    cache: dict[str, tuple[str, int, int]] = {}
    keys: dict[str, RealServerKey] = {}
    services: list[VirtualService] = []
    seen: set[ServiceKey] = set()
    current: _ServiceLine | None = None

    def finish() -> None:
        if current is not None:
            svc = current.build(hz)
            if svc.key not in seen:
                seen.add(svc.key)
                services.append(svc)

    for lineno, line in enumerate(lines.lines[1:], start=2):
        tokens = line.split()
        if not tokens or (lineno <= 3 and tokens[0] in ("Prot", "->") and "Port" in line):
            continue
        try:
            if tokens[0] == "->":
                if current is None:
                    raise ValueError("real server before any service")
                current.real_servers.append(_real_server(tokens, cache, keys))
            elif tokens[0] in PROTOCOLS or tokens[0] == FWM:
                finish()
                current = _service_line(tokens, cache)
            else:
                raise ValueError(f"unknown line type {tokens[0]!r}")
        except ValueError as exc:
            raise lines.error(lineno, str(exc)) from None
    finish()
    return tuple(services)


def parse_ip_vs_stats(text: str, *, path: str = "/proc/net/ip_vs_stats") -> Stats:
    """Parse the host totals and the kernel's rate estimates (all printed in hex)."""
    lines = _Lines(text, path)
    totals = _stats_row(lines, 1, "Total", 3)
    rates = _stats_row(lines, 5, "Conns/s", 6)
    return Stats(*totals, *rates)


def _stats_row(lines: _Lines, header_lineno: int, header: str, lineno: int) -> list[int]:
    """The five hex numbers on ``lineno``, below the header line that starts with ``header``."""
    if len(lines.lines) >= header_lineno and lines.lines[header_lineno - 1].split()[:1] != [header]:
        raise lines.error(header_lineno, f"not the kernel's ip_vs_stats layout (expected a {header!r} header)")
    if len(lines.lines) < lineno:
        raise lines.error(max(len(lines.lines), 1), f"file ends early (expected {lineno} lines)")
    fields = lines.lines[lineno - 1].split()
    if len(fields) != 5:
        raise lines.error(lineno, f"expected 5 hex numbers, found {len(fields)} fields")
    try:
        return [_hex(f, "counter") for f in fields]
    except ValueError as exc:
        raise lines.error(lineno, str(exc)) from None


_CONFIG_HZ = re.compile(rb"^CONFIG_HZ=(\d+)$", re.MULTILINE)


def kernel_hz() -> int | None:
    """The running kernel's CONFIG_HZ, or None when nothing readable tells.

    Sources, first answer wins: the kernel config (/proc/config.gz,
    /boot/config-RELEASE), then the jiffies counter (/proc/schedstat's
    ``timestamp``; /proc/timer_list, root only) against CLOCK_MONOTONIC.
    """
    release = os.uname().release
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rb") as f:
                found = _CONFIG_HZ.search(f.read())
        except OSError:
            continue
        if found:
            return int(found.group(1))
    return _hz_from_jiffies()


def _hz_from_jiffies() -> int | None:
    for path, pattern in (("/proc/schedstat", rb"^timestamp (\d+)$"), ("/proc/timer_list", rb"^jiffies: (\d+)$")):
        try:
            with open(path, "rb") as f:
                found = re.search(pattern, f.read(), re.MULTILINE)
        except OSError:
            continue
        if found:
            return _hz_estimate(int(found.group(1)), time.clock_gettime(time.CLOCK_MONOTONIC))
    return None


def _hz_estimate(jiffies: int, uptime: float) -> int | None:
    """Solve jiffies = 2**32 + (uptime - 300) * HZ for the nearest CONFIG_HZ choice (64-bit jiffies)."""
    elapsed = uptime - _INITIAL_JIFFIES_SECONDS
    if abs(elapsed) < 30:  # near 300 s every HZ predicts about 2**32
        return None
    estimate = (jiffies - 2**32) / elapsed
    best = min(_HZ_VALUES, key=lambda hz: abs(hz - estimate))
    return best if abs(best - estimate) < best * 0.05 else None


class ProcfsReader:
    """Reads a network namespace's IPVS table from its procfs files."""

    source = "procfs"

    def __init__(self, netns: str | None = None, *, hz: int | None = None, proc_net: str | None = None):
        """Open both files now, inside ``netns``.

        ``hz`` overrides ``kernel_hz()``; ``proc_net`` is a directory holding
        ``ip_vs`` and ``ip_vs_stats`` to read instead of this thread's
        /proc/net (tests point it at captured files).
        """
        self.netns = netns
        self.hz = hz if hz is not None else kernel_hz()
        self._proc_net = proc_net
        self._lock = threading.Lock()  # one reader at a time: a seq file keeps one position
        self._fds: dict[str, int] = {}
        try:
            with entered(netns):
                for name in (IP_VS, IP_VS_STATS):
                    self._fds[name] = self._open(name)
        except BaseException:
            self.close()
            raise

    def _where(self, name: str) -> str:
        path = os.path.join(self._proc_net or "/proc/net", name)
        return f"{path} (network namespace {self.netns})" if self.netns else path

    def _open(self, name: str) -> int:
        try:
            path = os.path.join(self._proc_net, name) if self._proc_net else proc_net_path(name)
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(name, exc) from None

    def _error(self, name: str, exc: OSError) -> KernelError:
        where = self._where(name)
        if exc.errno in (errno_codes.EACCES, errno_codes.EPERM):
            return NotPermitted(f"{where}: {exc.strerror}", errno=exc.errno)
        if exc.errno == errno_codes.ENOENT:
            return IPVSUnavailable(f"{where}: no such file (is the ip_vs module loaded?)", errno=exc.errno)
        return KernelError(f"{where}: {exc.strerror}", errno=exc.errno)

    def _read_file(self, name: str) -> str:
        fd = self._fds.get(name)
        if fd is None:
            raise KernelError(f"{self._where(name)}: reader is closed")
        chunks: list[bytes] = []
        offset = 0
        try:
            while chunk := os.pread(fd, _READ_SIZE, offset):
                chunks.append(chunk)
                offset += len(chunk)
        except OSError as exc:
            raise self._error(name, exc) from None
        return b"".join(chunks).decode("latin-1")

    def read(self) -> Table:
        """One read of both files; raises a KernelError subclass, never OSError."""
        with self._lock:
            services_text = self._read_file(IP_VS)
            stats_text = self._read_file(IP_VS_STATS)
        services = parse_ip_vs(services_text, hz=self.hz, path=self._where(IP_VS))
        totals = parse_ip_vs_stats(stats_text, path=self._where(IP_VS_STATS))
        return Table(services=services, totals=totals, source=self.source)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> ProcfsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcfsReader(netns={self.netns!r}, hz={self.hz})"
