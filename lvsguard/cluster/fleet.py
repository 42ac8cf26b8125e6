"""Every director's status in etcd: the fleet view (docs/cluster.md, "The fleet").

Each director's actuator announces itself under ``<root>directors/<name>``
(``/lvsguard/dc1/directors/lvs1``): its VRRP role, the VIPs it holds, whether
its kernel matches what it should (cluster holds applied, pending, table
drift), its exporter's and etcd's state, and the cluster holds it has
applied. It looks every ``INTERVAL`` seconds and right after each
convergence, and puts the record only when it changed (or every ``REFRESH``
seconds, so that ``at`` says it is alive): a put is a Raft write, which etcd
fsyncs. The record lives under one lease of ``TTL`` seconds, renewed once every
``INTERVAL`` (no Raft write; not at each look after a convergence, which
would add a request per director to every action), so a director that dies
leaves the view on its own; a
record older than ``STALE`` seconds (a director alive for etcd but whose
announcements stopped) is shown as stale.

The record is JSON, one object per director::

    {"director": "lvs1", "role": "master", "vips": ["192.0.2.10"], "actuator_url": "http://10.0.9.1:9911",
     "store_up": true, "exporter": "ok", "applied": [["TCP 192.0.2.10:80", "10.0.1.2:80", "lvs2/api alice"]],
     "pending": 0, "drift": 0, "draining": {"TCP 192.0.2.10:80 10.0.1.3:80": 12}, "at": 1765120000.0,
     "table_source": "cluster", "table_revision": 12, "table_pending": 0}

``draining``: the cluster's drain jobs (``drains``) whose weight 0 this
director has applied, with the real server's active connections in its kernel
(0 when its table lacks it): what a drain's owner decides the end from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lvsguard.cluster.etcd import EtcdClient
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError

TTL = 10  # seconds a director's record outlives its last renewal
INTERVAL = 2.0  # seconds between two looks (lease renewed, record put if changed)
REFRESH = 30.0  # seconds after which the record is put even if unchanged
STALE = 2.5 * REFRESH  # a record older than this is shown as stale

Applied = tuple[str, str, str]
"""(service, real server, holder): a cluster hold this director has applied."""


@dataclass(frozen=True, slots=True)
class DirectorStatus:
    """One director as the fleet view shows it."""

    director: str
    role: str = "unknown"  # its VRRP role: master, backup, fault, unknown
    vips: tuple[str, ...] = ()  # service addresses that are local addresses of the director
    actuator_url: str = ""  # where its API answers ("": not advertised)
    store_up: bool = False  # whether its last read of the cluster's holds succeeded
    exporter: str = "off"  # its probe state source: ok, unreachable, off
    applied: tuple[Applied, ...] = ()  # cluster holds taken out of its kernel
    pending: int = 0  # cluster holds it has not applied
    drift: int = 0  # managed entries changed by hand (its last drift check)
    draining: tuple[tuple[str, int], ...] = ()  # (drain job, active connections here) once weight 0 is applied
    at: float = 0.0  # epoch seconds of the announcement (its clock)
    table_source: str = "config"  # where its table comes from: config, or cluster (the cluster's record)
    table_revision: int = 0  # with table_source cluster: the revision of the cluster's table its kernel applied
    table_pending: int = 0  # services its last table apply left unfinished (refused, draining)

    @property
    def converged(self) -> bool:
        """Whether its kernel is what it should be: every cluster hold applied, no drift, its table finished."""
        return self.pending == 0 and self.drift == 0 and self.table_pending == 0

    def table_matches(self, revision: int) -> bool:
        """Whether its kernel has the cluster's table at ``revision`` (always, when it follows its own config)."""
        return self.table_source != "cluster" or self.table_revision == revision

    def to_json(self) -> dict[str, Any]:
        return {
            "director": self.director,
            "role": self.role,
            "vips": list(self.vips),
            "actuator_url": self.actuator_url,
            "store_up": self.store_up,
            "exporter": self.exporter,
            "applied": [list(a) for a in self.applied],
            "pending": self.pending,
            "drift": self.drift,
            "draining": dict(self.draining),
            "at": self.at,
            "table_source": self.table_source,
            "table_revision": self.table_revision,
            "table_pending": self.table_pending,
        }

    @classmethod
    def from_json(cls, doc: object) -> DirectorStatus:
        """The status in ``doc``; ClusterStoreError when it is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("director"), str):
            raise ClusterStoreError("a director record must be an object with a 'director' name")
        try:
            return cls(
                director=doc["director"],
                role=str(doc.get("role", "unknown")),
                vips=tuple(str(v) for v in doc.get("vips", ())),
                actuator_url=str(doc.get("actuator_url", "")),
                store_up=bool(doc.get("store_up", False)),
                exporter=str(doc.get("exporter", "off")),
                applied=tuple((str(s), str(r), str(h)) for s, r, h in doc.get("applied", ())),
                pending=int(doc.get("pending", 0)),
                drift=int(doc.get("drift", 0)),
                draining=tuple(sorted((str(j), int(n)) for j, n in dict(doc.get("draining", {})).items())),
                at=float(doc.get("at", 0.0)),
                table_source=str(doc.get("table_source", "config")),
                table_revision=int(doc.get("table_revision", 0)),
                table_pending=int(doc.get("table_pending", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ClusterStoreError(f"director record {doc.get('director')!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FleetView:
    """Every announced director at one read; ``problems`` names the records that could not be read."""

    directors: tuple[DirectorStatus, ...]
    read_at: float
    problems: tuple[str, ...] = field(default=())

    def stale(self, status: DirectorStatus) -> bool:
        return self.read_at - status.at > STALE

    def applied_by(self, service: str, real_server: str, holder: str) -> dict[str, bool]:
        """Director -> whether it has applied this cluster hold (stale directors included, as they said)."""
        return {d.director: (service, real_server, holder) in d.applied for d in self.directors}


class Fleet:
    """The directors' records of one cluster (``ClusterConfig.root``)."""

    def __init__(self, client: EtcdClient, config: ClusterConfig, *, clock: Callable[[], float] = time.time):
        self.client = client
        self.config = config
        self.clock = clock
        self.prefix = f"{config.root}directors/"
        self._lease = 0
        self._renewed = 0.0  # ``at`` of the lease's last renewal (or grant)
        self._last: DirectorStatus | None = None  # the record last put, ``at`` left out
        self._put_at = 0.0

    def key(self, director: str) -> str:
        return f"{self.prefix}{director}"

    def announce(self, status: DirectorStatus, *, force: bool = False) -> bool:
        """Keep this director's record: renew its lease when due, put it if it changed; whether it was put.

        ClusterStoreError if etcd is away. A lease found gone (etcd was away
        longer than ``TTL``) is granted anew and the record put again.
        """
        if self._lease and status.at - self._renewed >= INTERVAL:
            if self.client.lease_keepalive(self._lease) > 0:
                self._renewed = status.at
            else:
                self._lease = 0
        if not self._lease:
            self._grant(status.at)
            force = True
        same = replace(status, at=0.0) == self._last
        if same and not force and status.at - self._put_at < REFRESH:
            return False
        try:
            self._put(status)
        except ClusterStoreError as exc:
            if not 400 <= exc.status < 500:
                raise
            self._grant(status.at)  # the lease went since its renewal (etcd refuses a put on a lease it lacks)
            self._put(status)
        return True

    def _grant(self, now: float) -> None:
        self._lease, self._renewed = self.client.lease_grant(TTL), now

    def _put(self, status: DirectorStatus) -> None:
        self.client.put(self.key(status.director), json.dumps(status.to_json(), sort_keys=True), lease=self._lease)
        self._last, self._put_at = replace(status, at=0.0), status.at

    def withdraw(self, director: str) -> None:
        """Remove ``director``'s record (a clean stop); errors are the caller's to ignore."""
        self.client.delete(self.key(director))

    def view(self, *, serializable: bool = False) -> FleetView:
        """Every director's last announcement, by name (ClusterStoreError if etcd cannot be read).

        ``serializable``: the answering member's copy, without a Raft round (a
        poll that waits for the others' announcements needs no more).
        """
        kvs, _revision = self.client.range(self.prefix, serializable=serializable)
        found, problems = [], []
        for kv in kvs:
            try:
                found.append(DirectorStatus.from_json(json.loads(kv.value)))
            except (ValueError, ClusterStoreError) as exc:
                problems.append(f"{kv.key}: {exc}")
        return FleetView(tuple(sorted(found, key=lambda d: d.director)), self.clock(), tuple(problems))
