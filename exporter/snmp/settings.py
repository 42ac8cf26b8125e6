"""Validated settings of the SNMP agent (the ``exporter.snmp`` section of the config).

Everything is checked when the settings are built, before a socket opens,
and every problem is reported at once, sorted, each naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.snmp.ber import Oid, parse_oid
from exporter.snmp.layout import DEFAULT_BASE
from lvsguard.model import parse_endpoint

AUTH_PROTOCOLS = ("SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512")
PRIV_PROTOCOLS = ("AES", "AES-192", "AES-256")
MIN_KEY_LENGTH = 8  # RFC 3414: a USM pass phrase has at least 8 octets
MAX_RESPONSE_SIZE = 1472
"""Default bytes of one answer: one Ethernet frame (1500 - IP 20 - UDP 8), so no IP fragments.

Why not 65000: a GETBULK of about 50 bytes from a spoofed source made the
agent send 65 kB to the victim (1 300 times); at 1472 bytes the factor is
below 30, and a walk only takes more, smaller round trips.
"""


class SnmpSettingsError(ValueError):
    """Invalid SNMP settings; ``problems`` lists each one as ``key: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = sorted(problems)
        super().__init__("invalid SNMP settings: " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class V3User:
    """A USM user; the agent accepts it only with authPriv."""

    name: str
    auth_key: str
    priv_key: str
    auth_protocol: str = "SHA-256"
    priv_protocol: str = "AES"

    def __repr__(self) -> str:  # keys never reach a log line
        return f"V3User({self.name!r}, {self.auth_protocol}/{self.priv_protocol})"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How and what the agent serves."""

    listen: str = "127.0.0.1:1161"
    communities: tuple[str, ...] = field(default=(), repr=False)  # v2c read-only communities; none = v2c off
    users: tuple[V3User, ...] = ()  # v3 authPriv users; none = v3 off
    base_oid: Oid = DEFAULT_BASE
    max_age: float = 2.0  # seconds a snapshot is served before the next request re-reads it
    max_response_size: int = MAX_RESPONSE_SIZE  # bytes of one answer (a GETBULK answer is cut to fit)
    engine_id: bytes | None = None  # snmpEngineID; None = pysnmp's default
    trap_targets: tuple[str, ...] = ()  # host:port of v2c notification receivers; none = no notifications
    trap_community: str = field(default="", repr=False)
    trap_user: V3User | None = None  # send SNMPv3 authPriv notifications as this user instead of v2c
    inform: bool = False  # send informs (acknowledged, re-sent) instead of traps

    @property
    def host_port(self) -> tuple[str, int, int]:
        """(address, port, IP version) of ``listen``."""
        return parse_endpoint(self.listen)


def build_settings(
    *,
    listen: str = "127.0.0.1:1161",
    communities: tuple[str, ...] = (),
    users: tuple[V3User, ...] = (),
    base_oid: str | None = None,
    max_age: float = 2.0,
    max_response_size: int = MAX_RESPONSE_SIZE,
    engine_id: str | None = None,
    trap_targets: tuple[str, ...] = (),
    trap_community: str = "",
    trap_user: V3User | None = None,
    inform: bool = False,
) -> AgentSettings:
    """Check every value and return the settings, or raise SnmpSettingsError with all problems."""
    problems: list[str] = []
    try:
        parse_endpoint(listen)
    except ValueError as exc:
        problems.append(f"listen: {exc}")
    for target in trap_targets:
        try:
            parse_endpoint(target)
        except ValueError as exc:
            problems.append(f"trap_targets: {exc}")
    if trap_targets and not trap_community and trap_user is None:
        problems.append("trap_community/trap_user: one is required when trap_targets are configured")
    if trap_user is not None:
        problems += _user_problems("trap_user", trap_user)
    base = DEFAULT_BASE
    if base_oid is not None:
        try:
            base = parse_oid(base_oid)
        except ValueError as exc:
            problems.append(f"base_oid: {exc}")
    if not communities and not users:
        problems.append("communities/users: neither a v2c community nor a v3 user is configured")
    for i, community in enumerate(communities):
        if not community:
            problems.append(f"communities[{i}]: empty community")
    names = [u.name for u in users]
    for i, user in enumerate(users):
        if not user.name:
            problems.append(f"users[{i}]: empty name")
        if names.count(user.name) > 1:
            problems.append(f"users[{i}] ({user.name}): duplicate user name")
        problems += _user_problems(f"users[{i}] ({user.name})", user)
    if not max_age > 0:
        problems.append(f"max_age: must be > 0 seconds, got {max_age}")
    if not 484 <= max_response_size <= 65507:
        problems.append(f"max_response_size: must be 484..65507 bytes, got {max_response_size}")
    engine = None
    if engine_id is not None:
        try:
            engine = bytes.fromhex(engine_id)
        except ValueError:
            problems.append(f"engine_id: {engine_id!r} is not hexadecimal")
        else:
            if not 5 <= len(engine) <= 32:
                problems.append(f"engine_id: must be 5..32 octets, got {len(engine)}")
    if problems:
        raise SnmpSettingsError(problems)
    return AgentSettings(
        listen=listen,
        communities=tuple(communities),
        users=tuple(users),
        base_oid=base,
        max_age=max_age,
        max_response_size=max_response_size,
        engine_id=engine,
        trap_targets=tuple(trap_targets),
        trap_community=trap_community,
        trap_user=trap_user,
        inform=inform,
    )


def _user_problems(where: str, user: V3User) -> list[str]:
    problems = []
    if user.auth_protocol not in AUTH_PROTOCOLS:
        problems.append(f"{where}.auth_protocol: {user.auth_protocol!r} is not one of {', '.join(AUTH_PROTOCOLS)}")
    if user.priv_protocol not in PRIV_PROTOCOLS:
        problems.append(f"{where}.priv_protocol: {user.priv_protocol!r} is not one of {', '.join(PRIV_PROTOCOLS)}")
    for key_name, key in (("auth_key", user.auth_key), ("priv_key", user.priv_key)):
        if len(key.encode()) < MIN_KEY_LENGTH:
            problems.append(f"{where}.{key_name}: must have at least {MIN_KEY_LENGTH} characters")
    return problems
