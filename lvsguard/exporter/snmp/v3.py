"""SNMPv3 (USM authPriv) through pysnmp, answering from the same ``MibView`` as v2c.

USM (engine discovery, time windows, HMAC-SHA-2, AES) is subtle enough to
leave to pysnmp. Only its data side is replaced: instead of pysnmp's MIB
tree, ``ViewInstrumentation`` reads the agent's current view, so both
versions serve one snapshot. Access is read-only, and only at authPriv: a
request with a lower security level is refused with authorizationError
even for a known user name (USM alone would let noAuthNoPriv through).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from pyasn1.type.univ import ObjectIdentifier
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error

from lvsguard.errors import V3Unavailable
from lvsguard.exporter.snmp.ber import MAX_UINT32, MAX_UINT64
from lvsguard.exporter.snmp.mibview import MibView
from lvsguard.exporter.snmp.settings import V3User

AUTH = {
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA-224": config.USM_AUTH_HMAC128_SHA224,
    "SHA-256": config.USM_AUTH_HMAC192_SHA256,
    "SHA-384": config.USM_AUTH_HMAC256_SHA384,
    "SHA-512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV = {
    "AES": config.USM_PRIV_CFB128_AES,
    "AES-192": config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256": config.USM_PRIV_CFB256_AES_BLUMENTHAL,
}

SECURITY_MODEL_USM = 3
AUTH_PRIV = 3
MAX_BULK_VARBINDS = 1000
"""pysnmp caps a GETBULK answer at 64 varbinds; an NMS walking a big table wants more."""


def _clamp(limit: int) -> Callable[[int], int]:
    return lambda v: min(max(v, 0), limit)


_u32, _u64 = _clamp(MAX_UINT32), _clamp(MAX_UINT64)

TO_PYASN1: dict[str, Callable[[Any], Any]] = {
    "integer": rfc1902.Integer32,
    "text": lambda v: rfc1902.OctetString(v.encode("utf-8")),
    "octets": rfc1902.OctetString,
    "gauge32": lambda v: rfc1902.Gauge32(_u32(v)),
    "unsigned32": lambda v: rfc1902.Unsigned32(_u32(v)),
    "counter64": lambda v: rfc1902.Counter64(_u64(v)),
    "timeticks": lambda v: rfc1902.TimeTicks(_u32(v)),
    "oid": rfc1902.ObjectName,
    "dyn-timeticks": lambda v: rfc1902.TimeTicks(_u32(v)),
    "dyn-counter32": lambda v: rfc1902.Counter32(_u32(v)),
}


class ViewInstrumentation:
    """The MIB instrumentation pysnmp's command responders call, backed by a ``MibView``."""

    def __init__(self, snmp_engine: engine.SnmpEngine, current_view: Callable[[], MibView]) -> None:
        self._engine = snmp_engine
        self._view = current_view

    def _authorize(self, name: Any) -> None:
        ctx = self._engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        if ctx["securityModel"] != SECURITY_MODEL_USM or ctx["securityLevel"] != AUTH_PRIV:
            raise smi_error.AuthorizationError(name=name, idx=0)

    def _answer(self, view: MibView, pos: tuple[int, int, int]) -> tuple[Any, Any]:
        oid, kind, value = view.cell(pos)
        return rfc1902.ObjectName(oid), TO_PYASN1[kind](value)

    def read_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        view = self._view()
        out = []
        for name, _value in var_binds:
            self._authorize(name)
            pos = view.find(tuple(name))
            if pos is None:
                out.append((name, rfc1905.noSuchObject))
            elif pos is False:
                out.append((name, rfc1905.noSuchInstance))
            else:
                out.append(self._answer(view, pos))
        return out

    def read_next_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        view = self._view()
        out = []
        for name, _value in var_binds:
            self._authorize(name)
            pos = view.next_position(tuple(name))
            if pos is None:
                out.append((name, rfc1905.endOfMibView))
            else:
                out.append(self._answer(view, pos))
        return out

    def write_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        name = var_binds[0][0] if var_binds else ObjectIdentifier((0, 0))
        raise smi_error.NoAccessError(name=name, idx=0)


def crypto_available() -> bool:
    """pysnmp's AES needs the ``cryptography`` package; without it every authPriv request fails."""
    return importlib.util.find_spec("cryptography") is not None


def make_engine(
    users: tuple[V3User, ...], current_view: Callable[[], MibView], engine_id: bytes | None = None
) -> engine.SnmpEngine:
    """An SnmpEngine with the USM users and read-only responders; the caller adds the transport."""
    if not crypto_available():
        raise V3Unavailable(
            "SNMPv3 users are configured but the Python package 'cryptography' (AES for USM) is not installed"
        )
    snmp_engine = engine.SnmpEngine(snmpEngineID=rfc1902.OctetString(engine_id)) if engine_id else engine.SnmpEngine()
    for user in users:
        config.add_v3_user(
            snmp_engine,
            user.name,
            AUTH[user.auth_protocol],
            user.auth_key,
            PRIV[user.priv_protocol],
            user.priv_key,
        )
    snmp_context = context.SnmpContext(snmp_engine)
    snmp_context.context_names[b""] = ViewInstrumentation(snmp_engine, current_view)
    cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
    cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
    bulk = cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
    bulk.max_varbinds = MAX_BULK_VARBINDS
    cmdrsp.SetCommandResponder(snmp_engine, snmp_context)
    return snmp_engine
