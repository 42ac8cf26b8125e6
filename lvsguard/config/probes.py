"""Section ``probes``: health checks of the real servers (docs/probes.md).

A check takes the common keys and only the keys of its type
(``CHECK_KEYS``); ``check_entry`` refuses the others and resolves the real
server a check names once the check's service is known.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace

from yaml.nodes import Node, SequenceNode

from lvsguard.config.schema import (
    FAILED,
    Context,
    Invalid,
    Key,
    Recorded,
    Schema,
    boolean,
    choice,
    duration,
    http_url,
    integer,
    join,
    list_of,
    name,
    record,
    regex,
    scalar_text,
    section,
    text,
)
from lvsguard.config.services import service_ref
from lvsguard.defaults import ACTUATOR_URL
from lvsguard.model import RealServerKey, ServiceKey


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """One health check (``probes.checks[]``): which real servers, the type, its timing and type-specific keys."""

    type: str
    service: ServiceKey | None = None  # None: every service
    real_server: RealServerKey | None = None  # None: every real server of the service(s)
    name: str = ""  # the ``check`` label; "" = the type
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None  # None: the real server's own port
    method: str = "GET"  # http, https
    path: str = "/"
    host: str = ""  # Host header; "" = the real server's address
    statuses: tuple[int, ...] = ()  # () = 200-399
    body: str = ""  # regex the body must match; "" = any body
    digest: str = ""  # lowercase MD5 hex the body must have; "" = any body
    tls_verify: bool = True  # https
    sni: str = ""  # https: TLS server name; "" = host, else the address
    payload: str = "lvsguard-probe\n"  # udp
    expect: str = ""  # udp: regex the reply must match; "" = any reply
    query_name: str = ""  # dns
    query_type: str = "A"
    rcode: str = "NOERROR"
    answer: str = ""  # dns: regex one answer must match; "" = any
    command: tuple[str, ...] = ()  # script
    send: str = ""  # agent: a line sent before reading the reply
    url: str = ""  # prometheus: base URL of the Prometheus server
    query: str = ""  # prometheus: PromQL; its value is a weight percentage

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """``probes.publish``: where health transitions and weight changes go (never to IPVS directly)."""

    mode: str = "actuator"  # actuator (its webhook and API: the fast path) or alertmanager (its /api/v2/alerts)
    url: str = ACTUATOR_URL
    token_file: str = ""  # the actuator token (NAME:SECRET or SECRET); "" = $LVSGUARD_TOKEN


@dataclass(frozen=True, slots=True)
class ProbesConfig:
    """Section ``probes``: health checks of the real servers (docs/probes.md)."""

    enabled: bool = True
    default_tcp: bool = False  # opt-in: a tcp check on every real server of a TCP/SCTP service that no check names
    refresh: float = 2.0  # seconds between two reads of the kernel table (the checked set follows it)
    default_rate: int = 1000  # default tcp probes per second at most, all together (their interval stretches beyond)
    weight_min_step: int = 1  # damping of agent/prometheus/script weights: smallest change published
    weight_min_interval: float = 10.0  # and seconds between two published changes of one real server
    publish: PublishConfig | None = None  # None: transitions are only exported as metrics
    checks: tuple[CheckConfig, ...] = ()


CHECK_TYPES = ("tcp", "http", "https", "udp", "icmp", "dns", "script", "agent", "prometheus")
CHECK_COMMON = ("type", "service", "real_server", "name", "interval", "timeout", "rise", "fall", "port")
CHECK_KEYS: Mapping[str, tuple[str, ...]] = {
    "tcp": (),
    "http": ("method", "path", "host", "statuses", "body", "digest"),
    "https": ("method", "path", "host", "statuses", "body", "digest", "tls_verify", "sni"),
    "udp": ("payload", "expect"),
    "icmp": (),
    "dns": ("query_name", "query_type", "rcode", "answer"),
    "script": ("command",),
    "agent": ("send",),
    "prometheus": ("url", "query"),
}
"""The keys each check type takes besides the common ones."""
CHECK_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "dns": ("query_name",),
    "script": ("command",),
    "agent": ("port",),
    "prometheus": ("url", "query"),
}


def statuses(node: Node, path: str, ctx: Context) -> tuple[int, ...]:
    return tuple(sorted(set(list_of(integer(100, 599))(node, path, ctx))))


MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
"""An MD5 as keepalived's ``digest`` and the http check's ``digest`` take it (either case)."""


def md5_hex(node: Node, path: str, ctx: Context) -> str:
    """32 hex digits (either case), kept in lowercase."""
    value = scalar_text(node)
    if not MD5_HEX.fullmatch(value):
        raise Invalid(f"must be an MD5 as 32 hex digits, got {value!r}")
    return value.lower()


def command(node: Node, path: str, ctx: Context) -> tuple[str, ...]:
    """A list of arguments, or one string split as a shell would (no shell runs it)."""
    if isinstance(node, SequenceNode):
        argv = tuple(list_of(text)(node, path, ctx))
    else:
        try:
            argv = tuple(shlex.split(scalar_text(node)))
        except ValueError as exc:
            raise Invalid(f"cannot be split into arguments: {exc}") from None
    if not argv:
        raise Invalid("must name a program")
    return argv


def _real_server_ref(node: Node, path: str, ctx: Context) -> str:
    return scalar_text(node)  # resolved in check_entry, once the entry's service is known


CHECK = Schema(
    CheckConfig,
    {
        "type": Key(choice(CHECK_TYPES), required=True, doc="The check type; keys of another type are refused."),
        "service": Key(
            service_ref,
            doc="Which service's real servers: a name from `services` or `TCP 192.0.2.10:80`; absent: every service.",
        ),
        "real_server": Key(
            _real_server_ref,
            doc="Which real server: a name from `services[].real_servers` or `ADDRESS:PORT`; absent: every real server.",
        ),
        "name": Key(
            name,
            doc="The `check` label; two checks of one type on one real server need different names. Absent: the type.",
        ),
        "interval": Key(duration, doc="Time between two checks (the first is jittered over one interval)."),
        "timeout": Key(duration, doc="A check that takes longer fails; at most `interval`."),
        "rise": Key(integer(1, 100), doc="Consecutive successes that make an unhealthy real server healthy."),
        "fall": Key(integer(1, 100), doc="Consecutive failures that make a healthy real server unhealthy."),
        "port": Key(
            integer(1, 65535),
            doc="The port to check; absent: the real server's own port (an agent check must give the agent's port).",
        ),
        "method": Key(choice(("GET", "HEAD", "POST", "OPTIONS")), doc="The request method."),
        "path": Key(text, doc="The request path."),
        "host": Key(text, doc="The Host header; empty: the real server's address."),
        "statuses": Key(statuses, doc="The statuses that pass; empty: 200..399."),
        "body": Key(regex, doc="A regular expression the body (first 64 KiB) must match; empty: any body."),
        "digest": Key(
            md5_hex,
            doc="The MD5 of the body as 32 hex digits (keepalived's `digest`): another MD5 fails the check, so does a body over 64 KiB; empty: any body.",
        ),
        "tls_verify": Key(boolean, doc="Verify the real server's certificate (false for self-signed real servers)."),
        "sni": Key(text, doc="The TLS server name; empty: `host`, else none."),
        "payload": Key(text, doc="The datagram sent."),
        "expect": Key(regex, doc="A regular expression the reply must match; empty: any reply."),
        "query_name": Key(text, doc="The name asked."),
        "query_type": Key(
            choice(("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")), doc="The record type asked."
        ),
        "rcode": Key(
            choice(("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")),
            doc="The expected response code.",
        ),
        "answer": Key(regex, doc="A regular expression one answer must match; empty: any."),
        "command": Key(
            command,
            doc="The program and its arguments (`{address}`, `{port}` replaced; no shell): exit 0 up, 1 down, 2..255 up with weight code - 2.",
        ),
        "send": Key(text, doc="A line sent before reading the reply (HAProxy's `agent-send`)."),
        "url": Key(http_url, doc="Base URL of the Prometheus server."),
        "query": Key(text, doc="PromQL giving one sample: the weight percentage (`{address}`, `{port}` replaced)."),
    },
)


def check_entry(node: Node, path: str, ctx: Context) -> CheckConfig:
    """One check: the common keys, then only the keys of its type; a real server by name or address."""
    built, pairs, values = record(node, path, CHECK, ctx)
    value: CheckConfig = built
    kind = values.get("type")
    ok = value is not FAILED
    if kind is not None:
        allowed = set(CHECK_COMMON) | set(CHECK_KEYS[kind])
        for key_name, (key_node, _) in pairs.items():
            if key_name in CHECK.keys and key_name not in allowed:
                takes = ", ".join(CHECK_KEYS[kind]) or "only the common keys"
                ctx.problem(key_node, join(path, key_name), f"does not apply to a {kind} check (it takes {takes})")
                ok = False
        for key_name in CHECK_REQUIRED.get(kind, ()):
            if key_name not in pairs:
                ctx.problem(node, join(path, key_name), f"required for a {kind} check")
                ok = False
    if not ok:
        raise Recorded()
    if values.get("timeout", value.timeout) > values.get("interval", value.interval):
        raise Invalid(f"timeout ({value.timeout:g} s) must not exceed interval ({value.interval:g} s)")
    ref = values.get("real_server")
    if ref is None:
        return value
    try:
        return replace(value, real_server=RealServerKey.parse(ref))
    except ValueError:
        pass
    for svc in ctx.services:
        if value.service in (None, svc.service):
            for rs in svc.real_servers:
                if rs.name == ref:
                    return replace(value, real_server=rs.address)
    ctx.problem(
        pairs["real_server"][1],
        join(path, "real_server"),
        f"{ref!r} is neither an address:port nor the name of a real server of {value.service or 'a named service'}",
    )
    raise Recorded()


PUBLISH = Schema(
    PublishConfig,
    {
        "mode": Key(
            choice(("actuator", "alertmanager")),
            doc="actuator: the fast path, to the actuator's webhook and `POST /api/v1/weight`; alertmanager: alerts to its `/api/v2/alerts` (weights are not published).",
        ),
        "url": Key(http_url, doc="Base URL of the actuator or the Alertmanager."),
        "token_file": Key(
            text,
            doc="A file holding the actuator token (`NAME:SECRET` or `SECRET`, first line); empty: `$LVSGUARD_TOKEN`.",
        ),
    },
)

PROBES = Schema(
    ProbesConfig,
    {
        "enabled": Key(boolean, doc="Run health checks at all."),
        "default_tcp": Key(
            boolean,
            doc="Opt-in: a tcp check on every real server of a TCP/SCTP service that no entry of `checks` names. Off by default: only what `checks` names is probed.",
        ),
        "refresh": Key(duration, doc="How often the kernel table is re-read to follow real servers that come and go."),
        "default_rate": Key(
            integer(1, 1000000),
            doc="The most default tcp probes a second, all real servers together: above it their interval stretches to checks / rate (logged once per change); configured checks keep theirs.",
        ),
        "weight_min_step": Key(
            integer(1, 65535),
            doc="Damping of agent/prometheus/script weights: a smaller change is not published (a move to or from 0 always is).",
        ),
        "weight_min_interval": Key(
            duration,
            doc="Damping: the least time between two published weight changes of one real server (keep it at or above the actuator's `hold_down`).",
        ),
        "publish": Key(
            section(PUBLISH),
            doc="Where health transitions and weight changes go; absent: they are only exported as metrics.",
        ),
        "checks": Key(
            list_of(check_entry),
            doc="Health checks; each applies to the real servers its `service` and `real_server` match.",
        ),
    },
)
