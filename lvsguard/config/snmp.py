"""Section ``snmp``: the exporter's SNMP agent (docs/snmp.md).

Everything is checked when the settings are built, before a socket opens, and
every problem is reported at once, each naming its key. The settings live in
the core so that the config builds them without importing the exporter;
``exporter.snmp.settings`` re-exports them for the agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from yaml.nodes import Node

from lvsguard.config.schema import (
    Context,
    Invalid,
    Key,
    Schema,
    boolean,
    choice,
    integer,
    list_of,
    parse_data,
    positive_number,
    records,
    scalar_text,
    section,
    text,
)
from lvsguard.defaults import SNMP_BASE_OID, SNMP_LISTEN
from lvsguard.model import parse_endpoint
from lvsguard.oid import Oid, parse_oid

AUTH_PROTOCOLS = ("SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512")
PRIV_PROTOCOLS = ("AES", "AES-192", "AES-256")
MIN_KEY_LENGTH = 8  # RFC 3414: a USM pass phrase has at least 8 octets
MAX_RESPONSE_SIZE = 1472
"""Default bytes of one answer: one Ethernet frame (1500 - IP 20 - UDP 8), so no IP fragments.

Why not 65000: a GETBULK of about 50 bytes from a spoofed source made the
agent send 65 kB to the victim (1 300 times); at 1472 bytes the factor is
below 30, and a walk only takes more, smaller round trips.
"""


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

    listen: str = SNMP_LISTEN
    communities: tuple[str, ...] = field(default=(), repr=False)  # v2c read-only communities; none = v2c off
    users: tuple[V3User, ...] = ()  # v3 authPriv users; none = v3 off
    base_oid: Oid = SNMP_BASE_OID
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


# --- value parsers -------------------------------------------------------------------


def endpoint(node: Node, path: str, ctx: Context) -> str:
    """``ADDRESS:PORT`` or ``[IPv6]:PORT`` with an IP address (the agent binds and sends to addresses, not names)."""
    value = scalar_text(node)
    try:
        parse_endpoint(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return value


def community(node: Node, path: str, ctx: Context) -> str:
    value = scalar_text(node)
    if not value:
        raise Invalid("empty community")
    return value


def user_name(node: Node, path: str, ctx: Context) -> str:
    value = scalar_text(node)
    if not value:
        raise Invalid("empty name")
    return value


def pass_phrase(node: Node, path: str, ctx: Context) -> str:
    value = scalar_text(node)
    if len(value.encode()) < MIN_KEY_LENGTH:
        raise Invalid(f"must have at least {MIN_KEY_LENGTH} characters")
    return value


def oid(node: Node, path: str, ctx: Context) -> Oid:
    try:
        return parse_oid(scalar_text(node))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def engine_id(node: Node, path: str, ctx: Context) -> bytes:
    value = scalar_text(node)
    try:
        engine = bytes.fromhex(value)
    except ValueError:
        raise Invalid(f"{value!r} is not hexadecimal") from None
    if not 5 <= len(engine) <= 32:
        raise Invalid(f"must be 5..32 octets, got {len(engine)}")
    return engine


# --- the schema ----------------------------------------------------------------------

V3USER = Schema(
    V3User,
    {
        "name": Key(user_name, required=True, doc="The USM user name; unique."),
        "auth_key": Key(pass_phrase, required=True, doc="Authentication pass phrase."),
        "priv_key": Key(pass_phrase, required=True, doc="Privacy (encryption) pass phrase."),
        "auth_protocol": Key(choice(AUTH_PROTOCOLS), doc="Authentication protocol."),
        "priv_protocol": Key(choice(PRIV_PROTOCOLS), doc="Privacy protocol."),
    },
    unique=("name",),
)


def _between_keys(settings: AgentSettings) -> Iterator[tuple[str, str]]:
    if not settings.communities and not settings.users:
        yield "communities/users", "neither a v2c community nor a v3 user is configured"
    if settings.trap_targets and not settings.trap_community and settings.trap_user is None:
        yield "trap_community/trap_user", "one is required when trap_targets are configured"


SNMP = Schema(
    AgentSettings,
    {
        "listen": Key(endpoint, doc="UDP address of the agent."),
        "communities": Key(
            list_of(community),
            doc="SNMPv2c read-only communities; empty: v2c off. A community or a user is required.",
        ),
        "users": Key(records(V3USER), doc="SNMPv3 authPriv users; empty: v3 off."),
        "base_oid": Key(oid, doc="Where LVSGUARD-MIB's tables are served; absent: its registered OID."),
        "max_age": Key(
            positive_number,
            doc="How long one read of the kernel table answers requests before the next request re-reads it.",
        ),
        "max_response_size": Key(integer(484, 65507), doc="Bytes of one answer; a GETBULK answer is cut to fit."),
        "engine_id": Key(engine_id, doc="snmpEngineID; absent: pysnmp's default."),
        "trap_targets": Key(
            list_of(endpoint),
            doc="Receivers of notifications (real server up/down, weight changes); empty: none sent.",
        ),
        "trap_community": Key(
            text,
            doc="Community of v2c notifications; required with `trap_targets` unless `trap_user` is set.",
        ),
        "trap_user": Key(section(V3USER), doc="Send SNMPv3 authPriv notifications as this user instead of v2c."),
        "inform": Key(boolean, doc="Send informs (acknowledged, re-sent) instead of traps."),
    },
    check=_between_keys,
)

SECTION = Key(section(SNMP), doc="The exporter's SNMP agent (docs/snmp.md); absent: no SNMP agent.")


def build_settings(
    *,
    listen: str = SNMP_LISTEN,
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
    """The settings from arguments named as the section's keys: the same schema as the config file.

    Every problem is raised at once as a ``ConfigError`` keyed by its path
    (``users[0].auth_key``).
    """
    data: dict[str, object] = {
        "listen": listen,
        "communities": communities,
        "users": [asdict(user) for user in users],
        "max_age": max_age,
        "max_response_size": max_response_size,
        "trap_targets": trap_targets,
        "trap_community": trap_community,
        "inform": inform,
    }
    optional = {"base_oid": base_oid, "engine_id": engine_id, "trap_user": trap_user and asdict(trap_user)}
    data.update((key, value) for key, value in optional.items() if value is not None)
    settings: AgentSettings = parse_data(section(SNMP), data)
    return settings
