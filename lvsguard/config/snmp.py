"""Section ``snmp``: the exporter's SNMP agent (docs/snmp.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from yaml.nodes import Node

from lvsguard.config.schema import Context, Recorded, join, node_at, suggest

if TYPE_CHECKING:
    from exporter.snmp.settings import AgentSettings


SNMP_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "listen": ("`HOST:PORT` or `[IPv6]:PORT`", "UDP address of the agent."),
    "communities": (
        "list of strings",
        "SNMPv2c read-only communities; empty: v2c off. A community or a user is required.",
    ),
    "users": ("list of users", "SNMPv3 authPriv users (see `snmp.users[]`); empty: v3 off."),
    "base_oid": ("OID", "Where LVSGUARD-MIB's tables are served; absent: its registered OID."),
    "max_age": (
        "number (seconds, > 0)",
        "How long one read of the kernel table answers requests before the next request re-reads it.",
    ),
    "max_response_size": ("integer 484..65507", "Bytes of one answer; a GETBULK answer is cut to fit."),
    "engine_id": ("hexadecimal string, 5..32 octets", "snmpEngineID; absent: pysnmp's default."),
    "trap_targets": (
        "list of `HOST:PORT`",
        "Receivers of notifications (real server up/down, weight changes); empty: none sent.",
    ),
    "trap_community": (
        "string",
        "Community of v2c notifications; required with `trap_targets` unless `trap_user` is set.",
    ),
    "trap_user": ("user", "Send SNMPv3 authPriv notifications as this user instead of v2c."),
    "inform": ("boolean", "Send informs (acknowledged, re-sent) instead of traps."),
}
"""Keys of section ``snmp``: (type, meaning); the agent's ``build_settings`` checks the values."""
SNMP_USER_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "name": ("string", "The USM user name; unique."),
    "auth_key": ("string, at least 8 characters", "Authentication pass phrase."),
    "priv_key": ("string, at least 8 characters", "Privacy (encryption) pass phrase."),
    "auth_protocol": ("SHA, SHA-224, SHA-256, SHA-384 or SHA-512", "Authentication protocol."),
    "priv_protocol": ("AES, AES-192 or AES-256", "Privacy protocol."),
}
"""Keys of an SNMPv3 user (``snmp.users[]``, ``snmp.trap_user``): (type, meaning)."""
SNMP_KEYS = tuple(SNMP_KEY_DOCS)
SNMP_USER_KEYS = tuple(SNMP_USER_KEY_DOCS)


def snmp_section(node: Node, path: str, ctx: Context) -> AgentSettings:
    """Section ``snmp``: the exporter's SNMP agent, validated by ``exporter.snmp.settings.build_settings``.

    The agent owns the meaning of its keys (docs/snmp.md); this checks the
    shape (known keys, types), hands the values over, and puts each problem
    back at its place in the file.
    """
    from exporter.snmp.settings import SnmpSettingsError, V3User, build_settings  # the agent owns its section

    pairs = ctx.pairs(node, path)
    if pairs is None:
        raise Recorded()
    data = ctx.loader.construct_document(node)
    ok = True
    for key_name, (key_node, _) in pairs.items():
        if key_name not in SNMP_KEYS:
            ctx.problem(
                key_node,
                join(path, key_name),
                f"unknown key{suggest(key_name, SNMP_KEYS) or ' (known keys: ' + ', '.join(SNMP_KEYS) + ')'}",
            )
            ok = False

    def user(value: Any, where: str) -> V3User | None:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            ctx.problem(
                node_at(node, where.removeprefix(path + ".")),
                where,
                "must be a mapping of strings (name, auth_key, priv_key, auth_protocol, priv_protocol)",
            )
            return None
        unknown = sorted(set(value) - set(SNMP_USER_KEYS))
        missing = [k for k in ("name", "auth_key", "priv_key") if k not in value]
        if unknown or missing:
            what = "; ".join(
                filter(None, [f"unknown keys {unknown}" if unknown else "", f"missing {missing}" if missing else ""])
            )
            ctx.problem(node_at(node, where.removeprefix(path + ".")), where, what)
            return None
        return V3User(**value)

    options: dict[str, Any] = {}
    for key_name, value in (data or {}).items():
        if key_name not in SNMP_KEYS:
            continue
        if key_name in ("communities", "trap_targets"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                ctx.problem(pairs[key_name][1], join(path, key_name), "must be a list of strings")
                ok = False
                continue
            value = tuple(value)
        elif key_name == "users":
            if not isinstance(value, list):
                ctx.problem(pairs[key_name][1], join(path, key_name), "must be a list of users")
                ok = False
                continue
            users = [user(v, f"{path}.users[{i}]") for i, v in enumerate(value)]
            ok = ok and None not in users
            value = tuple(u for u in users if u is not None)
        elif key_name == "trap_user":
            value = user(value, f"{path}.trap_user")
            ok = ok and value is not None
        elif key_name == "inform" and not isinstance(value, bool):
            ctx.problem(pairs[key_name][1], join(path, key_name), f"must be true or false, got {value!r}")
            ok = False
            continue
        elif key_name in ("max_age", "max_response_size") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            ctx.problem(pairs[key_name][1], join(path, key_name), f"must be a number, got {value!r}")
            ok = False
            continue
        elif key_name in ("listen", "base_oid", "engine_id", "trap_community") and not isinstance(value, str):
            ctx.problem(pairs[key_name][1], join(path, key_name), f"must be a string, got {value!r}")
            ok = False
            continue
        options[key_name] = value
    if not ok:
        raise Recorded()
    try:
        return build_settings(**options)
    except SnmpSettingsError as exc:
        for problem in exc.problems:
            key_path, _, message = problem.partition(": ")
            key_path = re.sub(r" \([^)]*\)", "", key_path)  # "users[0] (nms).auth_key" -> "users[0].auth_key"
            where = node_at(node, key_path.split("/", 1)[0])  # "communities/users": at the first of them
            ctx.problem(where, join(path, key_path), message)
        raise Recorded() from None
