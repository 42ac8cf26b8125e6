"""From the ``probes`` config to the engine's plan: which checks run on which real server.

A real server gets every configured check whose ``service`` and
``real_server`` match it (absent: any). One that no check names gets the
default ``tcp`` check (``default_tcp``) when its service is TCP or SCTP.
"""

from __future__ import annotations

import re

from lvsguard.config import CheckConfig, ProbesConfig
from lvsguard.exporter.probes.agent import AgentChecker
from lvsguard.exporter.probes.dns import DNSChecker
from lvsguard.exporter.probes.engine import CheckSpec, Plan, default_plan
from lvsguard.exporter.probes.http import DEFAULT_STATUSES, HTTPChecker, tls_context
from lvsguard.exporter.probes.icmp import ICMPChecker
from lvsguard.exporter.probes.prometheus import PrometheusChecker
from lvsguard.exporter.probes.result import Checker
from lvsguard.exporter.probes.script import ScriptChecker
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.exporter.probes.udp import UDPChecker
from lvsguard.model import RealServerKey, ServiceKey


def checker(check: CheckConfig) -> Checker:
    """The checker of one configured check (the config is already validated)."""
    kind = check.type
    if kind == "tcp":
        return TCPChecker()
    if kind in ("http", "https"):
        return HTTPChecker(
            method=check.method,
            path=check.path,
            host=check.host,
            statuses=frozenset(check.statuses) or DEFAULT_STATUSES,
            body=re.compile(check.body.encode()) if check.body else None,
            tls=tls_context(check.tls_verify) if kind == "https" else None,
            sni=check.sni or None,
            digest=check.digest,
        )
    if kind == "udp":
        return UDPChecker(check.payload.encode(), re.compile(check.expect.encode()) if check.expect else None)
    if kind == "icmp":
        return ICMPChecker()
    if kind == "dns":
        return DNSChecker(
            check.query_name, check.query_type, check.rcode, re.compile(check.answer) if check.answer else None
        )
    if kind == "script":
        return ScriptChecker(check.command)
    if kind == "agent":
        return AgentChecker(check.send.encode() + b"\n" if check.send else b"")
    if kind == "prometheus":
        return PrometheusChecker(check.url, check.query)
    raise ValueError(f"unknown check type {kind!r}")


def spec(check: CheckConfig) -> CheckSpec:
    port = 0 if check.type == "icmp" else check.port
    return CheckSpec(check.label, checker(check), check.interval, check.timeout, check.rise, check.fall, port)


def build_plan(probes: ProbesConfig) -> Plan:
    """The engine's plan for ``probes``; checkers are built once, here."""
    configured = [(c, spec(c)) for c in probes.checks]

    def plan(service: ServiceKey, real_server: RealServerKey) -> tuple[CheckSpec, ...]:
        chosen = tuple(
            s for c, s in configured if c.service in (None, service) and c.real_server in (None, real_server)
        )
        if chosen or not probes.default_tcp:
            return chosen
        return default_plan(service, real_server)

    return plan
