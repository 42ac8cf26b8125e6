"""keepalived's side of an lvsguard director: the keepalived.conf lines that match an lvsguard config.

lvsguard touches three things of keepalived's, and ``snippet()`` prints the
keepalived lines for each from the config (``lvsguard keepalived snippet``):

- the failover track file (``actuator.failover_track_file``): the actuator
  writes ``1`` to give the VIPs up and ``0`` to take them back
  (lvsguard/actuator/failover.py). keepalived tracks it with weight 0, so a non-zero
  value puts the instance in FAULT: the VIPs go at once and the peer takes
  over even when it is ``nopreempt`` (a negative weight only lowers the
  priority, which a ``nopreempt`` backup ignores; docs/ha.md);
- the VRRP notify FIFO (``director.keepalived_fifo``): the exporter reads the
  instance's state from it (lvsguard/exporter/keepalived.py); keepalived's
  ``vrrp_notify_fifo``, a FIFO of the exporter's own (a FIFO has one reader);
- the VRRP role (``actuator.role_file``), which the other director's actuator
  asks for before it fails over: keepalived runs ``lvsguard keepalived
  follow`` as its ``notify_fifo_script``, which copies every state of the
  instance from the notify FIFO to the role file, in order (a ``notify``
  script per transition would not keep the order: keepalived forks one per
  transition, so a quick MASTER -> BACKUP could leave MASTER in the file);
- the IPVS sync daemon: keepalived's ``lvs_sync_daemon`` runs it as master on
  the MASTER and as backup elsewhere, so connections survive a failover; the
  exporter reports it (``ipvs_sync_daemon_*``).

The VIPs are the addresses of the config's services (a fwmark service has
none) and those given with ``--vip``: IPv4 in ``virtual_ipaddress``, IPv6 in
``virtual_ipaddress_excluded`` (an IPv4 instance cannot advertise them). Interfaces, router id and priority
are the operator's: options with the lab's defaults.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lvsguard.errors import LvsguardError

if TYPE_CHECKING:
    from lvsguard.config import Config

TRACK_FILE_WEIGHT = 0  # a non-zero value in the track file = FAULT (see the docstring)
TRACK_NAME = "lvsguard_failover"
ROLE_FIFO = "/run/keepalived/lvsguard-role.fifo"
LVSGUARD = "/opt/lvsguard/bin/lvsguard"  # the install of docs/install.md
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")  # what keepalived's notify FIFO reports as an instance's state
ROLES = ("master", "backup", "fault", "stop")  # the VRRP states, as the actuator and the doctor name them


@dataclass(frozen=True, slots=True)
class SnippetOptions:
    """What the lvsguard config does not say: the VRRP instance's name, interfaces and numbers."""

    instance: str = "VI_1"
    interface: str = "eth0"  # VRRP adverts and the VIPs
    sync_interface: str = ""  # the sync daemon's multicast; "" = interface
    virtual_router_id: int = 51  # also the sync daemon's id
    priority: int = 100  # the other director's must differ
    extra_vips: tuple[str, ...] = ()  # more addresses to move (ADDRESS or ADDRESS/PREFIX): gateways, services to come
    role_fifo: str = ROLE_FIFO  # keepalived's notify_fifo, read by `lvsguard keepalived follow`
    lvsguard: str = LVSGUARD  # the command keepalived runs as the notify_fifo_script


def vips(cfg: Config, extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The services' addresses (host prefixes) and ``extra``, in order without repeats: (IPv4, IPv6)."""
    seen: dict[str, int] = {}
    for service in cfg.services:
        if service.service.address:
            prefix = 32 if service.service.family == 4 else 128
            seen.setdefault(f"{service.service.address}/{prefix}", service.service.family)
    for text in extra:
        try:
            interface = ipaddress.ip_interface(text)
        except ValueError:
            raise LvsguardError(f"--vip {text!r}: not an IP address (ADDRESS or ADDRESS/PREFIX)") from None
        seen.setdefault(interface.with_prefixlen, interface.version)
    return tuple(a for a, f in seen.items() if f == 4), tuple(a for a, f in seen.items() if f == 6)


def snippet(cfg: Config, options: SnippetOptions = SnippetOptions()) -> str:
    """keepalived.conf text for this director: global_defs lines, the track file, and the VRRP instance."""
    fifo = cfg.director.keepalived_fifo
    track = cfg.actuator.failover_track_file if cfg.actuator else ""
    role_file = cfg.actuator.role_file if cfg.actuator else ""
    source = cfg.file or "the defaults (no config file)"
    lines = [f"# keepalived lines for the lvsguard config {source}", "global_defs {", "    vrrp_version 3"]
    lines += [
        f"    # the IPVS sync daemon: master while {options.instance} is MASTER, backup otherwise",
        f"    lvs_sync_daemon {options.sync_interface or options.interface} {options.instance}"
        f" id {options.virtual_router_id}",
    ]
    if fifo:
        lines += ["    # director.keepalived_fifo: the exporter's VRRP state", f"    vrrp_notify_fifo {fifo}"]
    else:
        lines.append("    # no director.keepalived_fifo: the exporter shows no VRRP state")
    if role_file:
        follow = f"{options.lvsguard} keepalived follow --role-file {role_file} --instance {options.instance}"
        lines += [
            "    # actuator.role_file: keepalived runs the follower, which copies each state to it in order",
            f"    notify_fifo {options.role_fifo}",
            f'    notify_fifo_script "{follow}"',
        ]
    else:
        lines.append("    # no actuator.role_file: the other director's peer check sees this one as unknown")
    lines.append("}")
    if track:
        lines += [
            "# actuator.failover_track_file: non-zero in the file = FAULT, the peer takes the VIPs",
            f"track_file {TRACK_NAME} {{",
            f"    file {track}",
            f"    weight {TRACK_FILE_WEIGHT}",
            "}",
        ]
    else:
        lines.append("# no actuator.failover_track_file: 'lvsguard failover' is refused")
    lines += [
        f"vrrp_instance {options.instance} {{",
        "    state BACKUP",
        f"    interface {options.interface}",
        f"    virtual_router_id {options.virtual_router_id}",
        f"    priority {options.priority}",
        "    advert_int 1",
    ]
    if track:
        lines += ["    track_file {", f"        {TRACK_NAME}", "    }"]
    four, six = vips(cfg, options.extra_vips)
    if not four and not six:
        raise LvsguardError(f"{source}: no service with an address, so no VIP to move: give them with --vip ADDRESS")
    if four:
        lines += ["    virtual_ipaddress {", *(f"        {a} dev {options.interface}" for a in four), "    }"]
    if six:
        lines += ["    virtual_ipaddress_excluded {", *(f"        {a} dev {options.interface}" for a in six), "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_role_file(path: str) -> str:
    """This director's VRRP role from its ``role_file`` (the actuator's peer check, the doctor): master, backup, fault, stop, or unknown.

    The file holds a state word as keepalived names it (``MASTER``) or a whole
    notify FIFO line (``INSTANCE "VI_1" MASTER 150``). keepalived also reports
    ``MASTER_RX_LOWER_PRI`` (a master heard a lower-priority advert, as when a
    split brain heals): it stays master, so that reads master. Anything else,
    a missing or unreadable file, reads unknown: the peer check then refuses a
    failover, which is the safe side.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            words = os.read(fd, 256).decode("ascii", "replace").split()
        finally:
            os.close(fd)
    except OSError:
        return "unknown"
    if len(words) >= 3 and words[0] == "INSTANCE":
        words = words[2:]
    state = words[0].lower() if words else ""
    if state == "master_rx_lower_pri":
        return "master"
    return state if state in ROLES else "unknown"


def follow(fifo: str, role_file: str, instance: str = "") -> None:
    """Copy every state of ``instance`` (any instance when "") from keepalived's notify FIFO to ``role_file``.

    Runs until keepalived ends it (SIGTERM). The FIFO is opened read-write, so
    it never reads end-of-file while keepalived restarts. Only states are
    copied: ``MASTER_RX_LOWER_PRI`` is an event, not a transition. Each write
    is a rename, so the actuator never reads half a state.
    """
    try:
        fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise LvsguardError(f"keepalived notify FIFO {fifo}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            state = instance_state(line, instance)
            if state:
                write_role_file(role_file, state)


def instance_state(line: str, instance: str = "") -> str:
    """``INSTANCE "VI_1" MASTER 150`` -> ``MASTER`` (when ``instance`` is "" or VI_1); "" for anything else."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != "INSTANCE" or parts[2] not in STATES:
        return ""
    return parts[2] if not instance or parts[1].strip('"') == instance else ""


def write_role_file(path: str, state: str) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(state + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise LvsguardError(f"role file {path}: {exc.strerror}") from None
