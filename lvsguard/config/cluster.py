"""Section ``cluster``: where the state shared by several directors lives (docs/cluster.md).

``store: local`` (the default) is one director with its SQLite ledger, as
without the section. ``store: etcd`` shares the holds through an etcd cluster:
``endpoints`` (its members' client URLs), TLS files, the key ``prefix``, the
cluster's ``name`` (several clusters can share one etcd) and this
``director``'s name (default: the host name), and the URL of its actuator
that the fleet view shows (``advertise_url``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import Node

from lvsguard.config.schema import (
    Context,
    Invalid,
    Key,
    Schema,
    choice,
    file_path,
    http_url,
    list_of,
    name,
    scalar_text,
)

STORES = ("local", "etcd")
SHARES = ("operator", "alertmanager", "passive")
"""What ``share`` may name: operators' holds (api, cli, ui) and the alert sources (``actuator.states.Source``)."""
DEFAULT_PREFIX = "/lvsguard/"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Section ``cluster``."""

    store: str = "local"
    endpoints: tuple[str, ...] = ()
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    prefix: str = DEFAULT_PREFIX
    name: str = "default"
    director: str = ""  # "": this host's name (``director_name``)
    advertise_url: str = ""  # this director's actuator as the fleet view links it ("": not shown)
    share: tuple[str, ...] = ("operator",)  # whose holds go through the cluster store (``SHARES``)

    @property
    def shared(self) -> bool:
        """Whether the holds are shared through etcd."""
        return self.store == "etcd"

    def shares(self, who: str) -> bool:
        """Whether the holds of ``who`` (``operator``, ``alertmanager``, ``passive``) go through the cluster store."""
        return self.shared and who in self.share

    @property
    def director_name(self) -> str:
        return self.director or socket.gethostname()

    @property
    def root(self) -> str:
        """The key prefix of this cluster's records: ``/lvsguard/<name>/``."""
        return f"{self.prefix}{self.name}/"


def key_prefix(node: Node, path: str, ctx: Context) -> str:
    value = scalar_text(node)
    if not (value.startswith("/") and value.endswith("/")) or len(value) < 2 or "//" in value:
        raise Invalid(f"must start and end with '/' (like /lvsguard/), got {value!r}")
    return value


def _check(cfg: ClusterConfig) -> Iterable[tuple[str, str]]:
    if cfg.store == "etcd" and not cfg.endpoints:
        yield "endpoints", "store: etcd needs at least one endpoint (http://10.0.9.1:2379)"
    if bool(cfg.cert_file) != bool(cfg.key_file):
        yield ("key_file" if cfg.cert_file else "cert_file"), "cert_file and key_file go together"
    if (cfg.ca_file or cfg.cert_file) and any(e.startswith("http://") for e in cfg.endpoints):
        yield "endpoints", "TLS files are set but an endpoint is http://: use https:// endpoints"


CLUSTER = Schema(
    ClusterConfig,
    {
        "store": Key(
            choice(STORES),
            doc="`local`: this director's holds live in its own ledger (one director, nothing else to run). `etcd`: "
            "the holds are shared by every director through etcd and each director converges its own kernel "
            "(docs/cluster.md).",
        ),
        "endpoints": Key(
            list_of(http_url),
            doc="The etcd members' client URLs (`https://10.0.9.1:2379`), tried in order; needed with `store: etcd`.",
        ),
        "ca_file": Key(file_path, doc="CA certificate that signed the etcd members' certificates (PEM)."),
        "cert_file": Key(file_path, doc="Client certificate for etcd's `--client-cert-auth` (PEM); with `key_file`."),
        "key_file": Key(file_path, doc="The client certificate's private key (PEM)."),
        "prefix": Key(key_prefix, doc="The etcd key prefix of lvsguard's records."),
        "name": Key(
            name,
            doc="This cluster's name: its records are under `PREFIX/NAME/`, so several clusters can share one etcd.",
        ),
        "director": Key(
            name,
            doc='This director\'s name in the cluster (who took a hold, who converged); `""`: the host name.',
        ),
        "share": Key(
            list_of(choice(SHARES)),
            doc="Whose holds go through the cluster store with `store: etcd`: `operator` (quarantines, drains and "
            "restores from the console, the API or the CLI), `alertmanager` (alert-driven holds from the webhook, "
            "probe verdicts published to it included) and `passive` (the exporter's passive verdicts, "
            "`lvsguard_source=passive`). A source left out stays on the director that got it; an alert's shared "
            "hold is one per fingerprint, released when any director gets it resolved (docs/cluster.md).",
        ),
        "advertise_url": Key(
            http_url,
            doc="This director's actuator URL as the fleet view shows it to the other directors "
            '(`http://10.0.9.1:9911`); `""`: not shown.',
        ),
    },
    check=_check,
)
