"""Cluster-wide drain jobs: one record per drained real server, one owner under an etcd lease (docs/cluster.md).

An operator's drain with ``cluster.store: etcd`` is a hold of the cluster
(``records``) and a *job* of the cluster, written in the hold's own
transaction (``DrainStore.starting``: no death between two writes leaves a
hold that no job ends): ``<root>drains/jobs/<service> <real
server>`` (``/lvsguard/dc1/drains/jobs/TCP 192.0.2.10:80 10.0.1.2:80``), a JSON
document with its deadline (the epoch second it times out, fixed when it
starts), whether it deletes the real server at the end, its state and who
owned it. Its owner is the key ``<root>drains/owners/<same>`` whose value is
``"<director> <lease>"``, put under that director's lease: the director that
starts the drain owns it at once; when it dies its lease expires, the key goes
with it, and every other director tries to claim the job in a transaction
that succeeds only while the key does not exist, so exactly one wins. The new
owner finishes the job from where it was: the deadline in the record is
kept, never restarted.

The owner decides the end from the fleet records (``fleet``): every director
reports the active connections of the real servers it drains (``draining``),
once the drain's weight 0 is applied in its kernel. When every announced
director reports 0 the drain is done; at the deadline it times out and the
real server stays at weight 0. A drain with ``delete`` then turns the
cluster's holds on the real server into a *deletion* in the same transaction
(``HoldStore.delete_drained``): every director's watch sees it and removes
the real server from its own kernel. Every end is a transaction that also
compares the owner key with this director's value: an owner that lost its
lease (etcd away longer than the TTL) and was replaced cannot end the job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lvsguard.cluster.etcd import Compare, EtcdClient, delete_op, put_op
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError
from lvsguard.model import RealServerKey, ServiceKey

TTL = 10  # seconds an owner's claim outlives its last renewal: the takeover delay after a kill -9
TXN_ITEMS = 64  # drains forgotten per transaction: two deletes each, within etcd's default --max-txn-ops (128)
RUNNING = "running"
ENDED = ("done", "timeout", "failed", "cancelled")


def job_id(service: ServiceKey, real_server: RealServerKey) -> str:
    """A drain's name in the cluster: ``TCP 192.0.2.10:80 10.0.1.2:80``."""
    return f"{service} {real_server}"


@dataclass(frozen=True, slots=True)
class DrainJob:
    """One cluster-wide drain, as its record says."""

    service: ServiceKey
    real_server: RealServerKey
    holder: str  # the cluster hold that drains it ("lvs1/api alice")
    deadline: float  # epoch seconds (the starting director's clock): it times out then
    timeout: float
    delete: bool = False
    director: str = ""  # where it was started
    started_at: float = 0.0
    state: str = RUNNING  # running, done, timeout, failed, cancelled
    message: str = ""
    owners: tuple[str, ...] = ()  # every director that owned it, in order
    ended_at: float = 0.0
    revision: int = field(default=0, compare=False)  # the record's mod_revision when read

    @property
    def id(self) -> str:
        return job_id(self.service, self.real_server)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def to_json(self) -> dict[str, Any]:
        return {
            "service": str(self.service),
            "real_server": str(self.real_server),
            "holder": self.holder,
            "deadline": self.deadline,
            "timeout": self.timeout,
            "delete": self.delete,
            "director": self.director,
            "started_at": self.started_at,
            "state": self.state,
            "message": self.message,
            "owners": list(self.owners),
            "ended_at": self.ended_at,
        }

    @classmethod
    def from_json(cls, text: str, revision: int = 0) -> DrainJob:
        try:
            doc = json.loads(text)
            return cls(
                service=ServiceKey.parse(doc["service"]),
                real_server=RealServerKey.parse(doc["real_server"]),
                holder=str(doc.get("holder", "")),
                deadline=float(doc["deadline"]),
                timeout=float(doc.get("timeout", 0.0)),
                delete=bool(doc.get("delete", False)),
                director=str(doc.get("director", "")),
                started_at=float(doc.get("started_at", 0.0)),
                state=str(doc.get("state", RUNNING)),
                message=str(doc.get("message", "")),
                owners=tuple(str(o) for o in doc.get("owners", ())),
                ended_at=float(doc.get("ended_at", 0.0)),
                revision=revision,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ClusterStoreError(f"not a drain job record: {exc}") from None


@dataclass(frozen=True, slots=True)
class DrainsView:
    """Every drain job of the cluster at one read, and who owns each (director name; absent: nobody)."""

    jobs: tuple[DrainJob, ...] = ()
    owners: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def job(self, name: str) -> DrainJob | None:
        return next((j for j in self.jobs if j.id == name), None)


class DrainStore:
    """The drain jobs of one cluster (``ClusterConfig.root``) and this director's lease for owning them."""

    def __init__(
        self,
        client: EtcdClient,
        config: ClusterConfig,
        *,
        clock: Callable[[], float] = time.time,
        ttl: int | None = None,
    ):
        self.client = client
        self.config = config
        self.clock = clock
        self.ttl = ttl or TTL
        self.prefix = f"{config.root}drains/"
        self.director = config.director_name
        self._lease = 0
        self._lock = threading.Lock()

    def job_key(self, name: str) -> str:
        return f"{self.prefix}jobs/{name}"

    def owner_key(self, name: str) -> str:
        return f"{self.prefix}owners/{name}"

    # --- this director's lease --------------------------------------------------------

    def lease(self) -> int:
        """This director's lease, renewed (granted anew when it expired); ClusterStoreError if etcd is away."""
        with self._lock:
            if self._lease and self.client.lease_keepalive(self._lease) <= 0:
                self._lease = 0  # expired while etcd was away: whatever it owned is someone else's now
            if not self._lease:
                self._lease = self.client.lease_grant(self.ttl)
            return self._lease

    def revoke(self) -> None:
        """Give up every claim at once (a clean stop: another director takes over without waiting for the TTL)."""
        with self._lock:
            lease, self._lease = self._lease, 0
        if lease:
            self.client.call("lease/revoke", {"ID": str(lease)})

    def _mine(self, lease: int) -> str:
        return f"{self.director} {lease}"

    # --- reading ------------------------------------------------------------------------

    def view(self, *, serializable: bool = False) -> DrainsView:
        """Every drain job and its owner."""
        kvs, _revision = self.client.range(self.prefix, serializable=serializable)
        jobs, owners, problems = [], {}, []
        for kv in kvs:
            rest = kv.key.removeprefix(self.prefix)
            if rest.startswith("owners/"):
                owners[rest.removeprefix("owners/")] = kv.value.split(" ", 1)[0]
            elif rest.startswith("jobs/"):
                try:
                    jobs.append(DrainJob.from_json(kv.value, kv.mod_revision))
                except ClusterStoreError as exc:
                    problems.append(f"{kv.key}: {exc}")
        return DrainsView(tuple(sorted(jobs, key=lambda j: j.id)), owners, tuple(problems))

    def get(self, name: str) -> DrainJob | None:
        kv = self.client.get(self.job_key(name))
        return DrainJob.from_json(kv.value, kv.mod_revision) if kv is not None else None

    # --- writing --------------------------------------------------------------------------

    def start(
        self, service: ServiceKey, real_server: RealServerKey, holder: str, *, timeout: float, delete: bool
    ) -> tuple[DrainJob, bool]:
        """Start a drain of the real server owned by this director; (the job, whether it is new).

        A drain already running on it is joined as it is (its deadline and
        owner stay); one that ended is replaced.
        """
        for _attempt in range(20):
            job, new, compare, ops = self.starting(service, real_server, holder, timeout=timeout, delete=delete)
            if not new:
                return job, False
            ok, revision = self.client.txn(compare, ops)
            if ok:
                return replace(job, revision=revision), True
        raise ClusterStoreError(f"drain job {job_id(service, real_server)}: 20 concurrent writers won in a row")

    def starting(
        self, service: ServiceKey, real_server: RealServerKey, holder: str, *, timeout: float, delete: bool
    ) -> tuple[DrainJob, bool, list[Compare], list[dict[str, Any]]]:
        """What starting a drain writes: (the job, whether it is new, the transaction's compares and writes).

        The writes go into the transaction of the drain's hold
        (``HoldStore.take``), so that no death between two writes leaves a
        hold without the job that ends it. A running drain is joined: no
        write, and a compare that it is still as read.
        """
        name = job_id(service, real_server)
        key = self.job_key(name)
        current = self.get(name)
        if current is not None and current.running:
            return current, False, [Compare(key, "mod", "=", current.revision)], []
        lease = self.lease()
        now = self.clock()
        job = DrainJob(
            service,
            real_server,
            holder,
            deadline=now + timeout,
            timeout=timeout,
            delete=delete,
            director=self.director,
            started_at=now,
            owners=(self.director,),
        )
        compare = Compare(key, "mod", "=", current.revision) if current else Compare(key, "create", "=", 0)
        ops = [put_op(key, _dump(job)), put_op(self.owner_key(name), self._mine(lease), lease)]
        return job, True, [compare], ops

    def claim(self, job: DrainJob) -> bool:
        """Take an ownerless running job: True for the one director whose transaction wins."""
        lease = self.lease()
        owner = self.owner_key(job.id)
        taken = replace(job, owners=(*job.owners, self.director))
        ok, _revision = self.client.txn(
            [Compare(owner, "create", "=", 0), Compare(self.job_key(job.id), "mod", "=", job.revision)],
            [put_op(owner, self._mine(lease), lease), put_op(self.job_key(job.id), _dump(taken))],
        )
        return ok

    def finish(
        self,
        job: DrainJob,
        state: str,
        message: str,
        *,
        compare: Sequence[Compare] = (),
        also: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """End a job this director owns (with ``also`` in the same transaction); False when it is not its own now."""
        ok, _revision = self.client.txn([*self.owned(job), *compare], [*self.finish_ops(job, state, message), *also])
        return ok

    def finish_ops(self, job: DrainJob, state: str, message: str) -> list[dict[str, Any]]:
        """The writes that end ``job``: its record with the end, its owner key gone."""
        ended = replace(job, state=state, message=message, ended_at=self.clock())
        return [put_op(self.job_key(job.id), _dump(ended)), delete_op(self.owner_key(job.id))]

    def owned(self, job: DrainJob) -> list[Compare]:
        """The conditions under which this director still owns ``job`` as it was read."""
        with self._lock:
            lease = self._lease
        return [
            Compare(self.owner_key(job.id), "value", "=", self._mine(lease)),
            Compare(self.job_key(job.id), "mod", "=", job.revision),
        ]

    def remove(self, items: Sequence[tuple[ServiceKey, RealServerKey]]) -> None:
        """Forget the drains of the real servers (a restore): their records and owners, 64 per transaction."""
        ops = self.remove_ops(items)
        for start in range(0, len(ops), 2 * TXN_ITEMS):
            self.client.txn([], ops[start : start + 2 * TXN_ITEMS])

    def remove_ops(self, items: Sequence[tuple[ServiceKey, RealServerKey]]) -> list[dict[str, Any]]:
        """The writes that forget the drains of the real servers: two per real server."""
        names = [job_id(service, real_server) for service, real_server in items]
        return [op for n in names for op in (delete_op(self.job_key(n)), delete_op(self.owner_key(n)))]


def _dump(job: DrainJob) -> str:
    return json.dumps(job.to_json(), sort_keys=True)
