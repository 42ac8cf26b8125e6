"""Every error lvsguard raises on purpose, in one hierarchy.

::

    LvsguardError
     ├── ConfigError          a config file is invalid (carries every problem found)
     ├── KernelError          the kernel refused or failed an IPVS request
     │    ├── NotPermitted         EPERM/EACCES: netlink needs CAP_NET_ADMIN
     │    ├── IPVSUnavailable      no IPVS in this kernel / namespace
     │    ├── NoSuchService        ESRCH on a service
     │    ├── NoSuchDestination    ENOENT on a real server
     │    ├── AlreadyExists        EEXIST
     │    ├── InvalidRequest       EINVAL and friends
     │    ├── ProcfsFormatError    a /proc/net/ip_vs* line is not in the kernel's format
     │    ├── MalformedReply       a netlink reply we cannot decode
     │    ├── TransportError       the netlink exchange itself failed (socket error, timeout)
     │    └── BulkFailed           some requests of a bulk write failed (one typed error each)
     ├── NamespaceError       the named network namespace cannot be entered
     ├── PolicyRefused        the actuator's safety rules refused an action
     │    └── RefusedForNow        a refusal that time lifts (hold-down, rate limit): ``retry_after``
     ├── PayloadError         the webhook body is not an Alertmanager version-4 payload (``path``)
     ├── ApiError             an admin API request the actuator cannot take (``status``, ``path``)
     ├── UiError              a console form the actuator cannot take (``field``, ``status``)
     ├── TargetError          an alert's labels name no real server (also a ValueError)
     ├── TrackFileError       the failover track file cannot be written
     │
     │   the core, the exporter, the actuator's client and tokens:
     ├── ConfigDocError       the configuration reference cannot describe a key or a parser
     ├── UnknownBackendLabels exporter.backend_labels names labels that do not exist (also a ValueError)
     ├── AgentError           ``lvsguard agent`` cannot start (bad option, port in use)
     ├── ListenError          the exporter cannot listen on its address (``listen``)
     ├── FifoError            keepalived's notify FIFO cannot be opened
     ├── SnmpAgentError       the SNMP agent cannot start
     ├── V3Unavailable        SNMPv3 users are configured but AES cannot work here
     ├── BaseMibsUnavailable  the base MIB modules could not be fetched (also a RuntimeError)
     ├── BerError             bytes that are not the BER of an SNMP message (also a ValueError)
     ├── HTTPProtocolError    a probed peer's answer is not HTTP/1.x (also a ValueError)
     ├── DNSFormatError       a DNS reply that cannot be decoded (also a ValueError)
     ├── ClientError          the actuator could not be reached or refused a request (``status``, ``body``)
     ├── Unauthorized         no or a wrong bearer token (401)
     │   └── TooManyFailures  too many wrong tokens from one address (429, ``retry_after``)
     ├── TokenFileError       a token file or LVSGUARD_TOKEN is unusable
     ├── ClusterStoreError    no etcd endpoint answered, or etcd refused a request (``endpoint``)
     │   └── TableRefused     the cluster's table in etcd is not a valid table (a chunk missing, bad JSON)
     └── WebConfigError       a --web.config.file (TLS, basic auth, headers) is unusable

An exception carries the objects it is about (``service``, ``real_server``,
``errno``) and its message names them the way an operator writes them:
``real server 10.0.1.2:80 of TCP 192.0.2.10:80: no such destination``.
errno is translated once, at the kernel edge (``lvsguard.ipvs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lvsguard.model import RealServerKey, ServiceKey


class LvsguardError(Exception):
    """Base of every error lvsguard raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config: where it is (file, line, column, key path) and what is wrong.

    Settings built from Python data rather than a file (``parse_data``) have
    no file and no line: the problem is the key path and the message.
    """

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    key: str  # dotted path, e.g. "services[0].real_servers[2].weight"
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        return ": ".join(part for part in (where, self.key, self.message) if part)


class ConfigError(LvsguardError):
    """A config is invalid; ``problems`` holds all of them, sorted by position."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.key))
        super().__init__("\n".join(str(p) for p in self.problems))


class KernelError(LvsguardError):
    """The kernel refused or failed an IPVS request about ``service``/``real_server``."""

    def __init__(
        self,
        message: str,
        *,
        service: ServiceKey | None = None,
        real_server: RealServerKey | None = None,
        errno: int | None = None,
    ):
        self.service = service
        self.real_server = real_server
        self.errno = errno
        self.reason = message
        super().__init__(_name_object(service, real_server) + message)


def _name_object(service: ServiceKey | None, real_server: RealServerKey | None) -> str:
    if real_server is not None and service is not None:
        return f"real server {real_server} of {service}: "
    if real_server is not None:
        return f"real server {real_server}: "
    if service is not None:
        return f"service {service}: "
    return ""


class NotPermitted(KernelError):
    """EPERM/EACCES: reading or writing IPVS over netlink needs CAP_NET_ADMIN."""


class IPVSUnavailable(KernelError):
    """The kernel has no IPVS (module not loaded, or the family is missing)."""


class NoSuchService(KernelError):
    """The virtual service does not exist."""


class NoSuchDestination(KernelError):
    """The real server does not exist in its virtual service."""


class AlreadyExists(KernelError):
    """The service or real server already exists."""


class InvalidRequest(KernelError):
    """The kernel rejected the request's arguments (EINVAL, EAFNOSUPPORT, ...)."""


class BulkFailed(KernelError):
    """Some requests of a bulk write failed; ``failures`` holds one typed error per object.

    The requests not named in ``failures`` succeeded.
    """

    def __init__(self, message: str, failures: list[KernelError], *, service: ServiceKey | None = None):
        self.failures = tuple(failures)
        shown = "; ".join(str(f) for f in self.failures[:5])
        more = f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        super().__init__(f"{message}: {shown}{more}", service=service)


class MalformedReply(KernelError):
    """A netlink reply we cannot decode (truncated, garbled, or not what was asked for)."""


class TransportError(KernelError):
    """The exchange itself failed: a socket error, no reply in time, replies lost to a full buffer."""


class ProcfsFormatError(KernelError):
    """A line of /proc/net/ip_vs or ip_vs_stats is not in the kernel's format."""

    def __init__(self, path: str, lineno: int, line: str, reason: str):
        self.path = path
        self.lineno = lineno
        self.line = line
        super().__init__(f"{path}:{lineno}: {reason}: {line!r}")


class NamespaceError(LvsguardError):
    """The named network namespace does not exist or cannot be entered."""

    def __init__(self, netns: str, reason: str):
        self.netns = netns
        super().__init__(f"network namespace {netns!r}: {reason}")


class PolicyRefused(LvsguardError):
    """The actuator's safety rules refused an action; ``reason`` is machine-readable."""

    def __init__(self, message: str, *, reason: str):
        self.reason = reason
        super().__init__(message)


class RefusedForNow(PolicyRefused):
    """A refusal that time lifts (hold-down, rate limit): ``retry_after`` seconds."""

    def __init__(self, message: str, *, reason: str, retry_after: float):
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class PayloadError(LvsguardError):
    """The webhook body is not a valid version-4 payload; ``path`` is where (``alerts[3].labels``)."""

    def __init__(self, message: str, path: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message


class ApiError(LvsguardError):
    """A request the API cannot take: ``status``, and ``path`` names the bad field."""

    def __init__(self, status: int, message: str, path: str = ""):
        self.status = status
        self.path = path
        self.message = message
        super().__init__(message)


class UiError(LvsguardError):
    """A form the console cannot take: ``field`` names the input, ``status`` the HTTP code."""

    def __init__(self, message: str, field: str = "", status: int = 400):
        self.field = field
        self.status = status
        super().__init__(message)


class TargetError(LvsguardError, ValueError):
    """The labels do not name a real server; the message says which label is missing or wrong."""


class TrackFileError(LvsguardError):
    """The track file cannot be written; the message names it."""


# --- the core, the exporter, the actuator's client and tokens -----------------------------


class ConfigDocError(LvsguardError):
    """The schema has a key or parser the reference cannot describe; the message names it."""


class AgentError(LvsguardError):
    """The agent cannot start (bad option, port in use)."""


class UnknownBackendLabels(LvsguardError, ValueError):
    """``backend_labels`` names labels that do not exist; ``unknown`` holds them, sorted."""

    def __init__(self, unknown: Sequence[str]):
        self.unknown = sorted(unknown)
        super().__init__(f'unknown IPVS backend labels: "{", ".join(self.unknown)}"')


class HTTPProtocolError(LvsguardError, ValueError):
    """The peer's answer is not HTTP/1.x."""


class DNSFormatError(LvsguardError, ValueError):
    """A DNS message that cannot be decoded."""


class V3Unavailable(LvsguardError):
    """v3 users are configured but AES cannot work here."""


class BerError(LvsguardError, ValueError):
    """The bytes are not the BER an SNMP message may contain; the message says where."""


class BaseMibsUnavailable(LvsguardError, RuntimeError):
    """The base MIB modules could not be fetched; the message has the script's reason."""


class SnmpAgentError(LvsguardError):
    """The agent cannot start (the message names the listen address and the reason)."""


class ListenError(LvsguardError):
    """The exporter cannot listen on the address it was given."""

    def __init__(self, listen: str, reason: str):
        self.listen = listen
        super().__init__(f"cannot listen on {listen}: {reason}")


class FifoError(LvsguardError):
    """The notify FIFO cannot be opened; the message names it and the config key."""


class ClientError(LvsguardError):
    """The actuator could not be reached, or it refused or failed the request (``status``, ``body``)."""

    def __init__(self, message: str, *, status: int = 0, body: Mapping[str, Any] | None = None):
        self.status = status
        self.body = dict(body or {})
        super().__init__(message)


class Unauthorized(LvsguardError):
    """No or a wrong bearer token (401)."""


class TooManyFailures(Unauthorized):
    """Too many wrong bearer tokens from one client address (429); ``retry_after`` in whole seconds."""

    def __init__(self, message: str, retry_after: int):
        self.retry_after = retry_after
        super().__init__(message)


class TokenFileError(LvsguardError):
    """A token file or LVSGUARD_TOKEN is unusable; the message names the file and line."""


class ClusterStoreError(LvsguardError):
    """The cluster store (etcd) cannot be reached or refused a request; ``endpoint`` is the last one tried.

    ``maybe_applied``: a member received the request and did not answer in time (or answered 5xx): a write
    may still be committed once etcd's quorum is back.
    """

    def __init__(self, message: str, *, endpoint: str = "", status: int = 0, maybe_applied: bool = False):
        self.endpoint = endpoint
        self.status = status
        self.maybe_applied = maybe_applied
        super().__init__(message)


class TableRefused(ClusterStoreError):
    """What etcd holds as the cluster's table is not a valid table; a director keeps the one it applied."""


class WebConfigError(LvsguardError):
    """A ``--web.config.file`` is unusable; the message names the file and the key."""
