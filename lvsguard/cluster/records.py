"""The cluster records of holds in etcd, and the compare-and-swap that keeps the quorum across directors.

One key per virtual service, ``<prefix><name>/holds/<service>``
(``/lvsguard/dc1/holds/TCP 192.0.2.10:80``), whose value is JSON::

    {"10.0.1.2:80": {"lvs1/api alice": {"action": "quarantine", "reason": "disk", "director": "lvs1", "at": 1.7e9}}}

real server -> holder -> what the hold is. A holder is ``<director>/<source> <name>``:
the operator who took it and where. One key per service, not per hold, so
that the quorum check of a new hold and its write are one transaction: the
hold is written only if the service's key still has the revision the check
read (``Compare(key, "mod", "=", revision)``, or ``create = 0`` for a key not
there yet). Two directors taking out the last two spare real servers of a
service at once both read revision r; one transaction wins, the other finds
revision r+1, reads again, sees the first hold and is refused by the quorum.

A compare-and-swap starts from the director's cluster watch's copy of the
key (``follow``, ``seen``) when one is kept: no request before the
transaction. A copy that is behind fails the compare like any other loser,
and the next attempt reads linearizably. Without a watch (the CLI, a watch
down), the first attempt reads the answering member's copy (serializable).

Many holds at once (an operator's bulk action) are one transaction: one
compare per service key they touch, one put per key they change
(``take_many``, ``release_many``). etcd refuses a transaction of more than
``--max-txn-ops`` (128 by default) compares or operations, so more services
than ``TXN_KEYS`` are written ``TXN_KEYS`` at a time, each group a
transaction of its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from lvsguard.cluster.etcd import Compare, EtcdClient, KeyValue, delete_op, put_op
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError, PolicyRefused
from lvsguard.model import RealServerKey, ServiceKey

DELETE = "delete"  # the action of a hold whose drain ended with a deletion: every director removes the real server
CAS_ATTEMPTS = 20  # transactions lost to concurrent writers before giving up
TXN_KEYS = 128  # service keys in one transaction (etcd's default --max-txn-ops)

HoldsOfService = dict[str, dict[str, dict[str, Any]]]
"""real server text -> holder -> {action, reason, director, at}: one service's key, decoded."""

Item = tuple[ServiceKey, RealServerKey]
"""One real server of a service, as a bulk action names it."""


@dataclass(frozen=True, slots=True)
class ClusterHold:
    """One hold of the cluster: a real server of a service, held by ``holder`` for ``action``."""

    service: ServiceKey
    real_server: RealServerKey
    holder: str  # "<director>/<source> <name>"
    action: str  # quarantine | drain | delete (a drain that ended deleting it: every director removes it)
    reason: str = ""
    director: str = ""  # where it was taken
    at: float = 0.0  # epoch seconds of the write (the origin's clock)


class HoldStore:
    """The holds of one cluster (``ClusterConfig.root``) in etcd."""

    def __init__(self, client: EtcdClient, config: ClusterConfig, *, clock: Callable[[], float] = time.time):
        self.client = client
        self.config = config
        self.clock = clock
        self.prefix = f"{config.root}holds/"
        self.written = 0
        """The cluster's revision after this director's last write of holds (the watch must have seen it)."""
        self._copy: dict[str, KeyValue] | None = None
        """The cluster watch's copy of every service's key (``follow``); None while no watch keeps one."""
        self._copy_lock = threading.Lock()

    def key(self, service: ServiceKey) -> str:
        return f"{self.prefix}{service}"

    def holder(self, who: str) -> str:
        """The holder of a hold this director takes for ``who`` (``api alice``)."""
        return f"{self.config.director_name}/{who}"

    # --- the watch's copy --------------------------------------------------------------

    def follow(self, kvs: Iterable[KeyValue]) -> None:
        """The cluster watch read every key: its copy is these, kept up to date by ``seen``."""
        copy = {kv.key: kv for kv in kvs}
        with self._copy_lock:
            self._copy = copy

    def seen(self, kv: KeyValue, *, deleted: bool = False) -> None:
        """A change of one key (the watch's, or this director's own write); an older one than the copy's is ignored."""
        with self._copy_lock:
            if self._copy is None:
                return
            old = self._copy.get(kv.key)
            if old is not None and old.mod_revision > kv.mod_revision:
                return
            if deleted:
                self._copy.pop(kv.key, None)
            else:
                self._copy[kv.key] = kv

    def unfollow(self) -> None:
        """No watch keeps the copy any more (etcd away, the watch stopped): reads start from etcd again."""
        with self._copy_lock:
            self._copy = None

    def _start(self, service: ServiceKey) -> tuple[HoldsOfService, int]:
        """Where a compare-and-swap of one service starts: the watch's copy, else the answering member's."""
        with self._copy_lock:
            copy = self._copy
            kv = copy.get(self.key(service)) if copy is not None else None
        if copy is None:
            return self.service_holds(service, serializable=True)
        return _holds_of(kv)

    # --- reading --------------------------------------------------------------------

    def snapshot(self) -> tuple[list[ClusterHold], int]:
        """Every hold of the cluster (a linearizable read) and the revision it was read at."""
        kvs, revision = self.client.range(self.prefix)
        return [hold for kv in kvs for hold in self.decode(kv)], revision

    def decode(self, kv: KeyValue) -> list[ClusterHold]:
        """The holds in one service's key; a key that is not lvsguard's JSON is skipped (ClusterStoreError)."""
        try:
            service = ServiceKey.parse(kv.key.removeprefix(self.prefix))
            data = _decode(kv.value)
            return [
                ClusterHold(
                    service,
                    RealServerKey.parse(rs),
                    holder,
                    str(info.get("action", "quarantine")),
                    str(info.get("reason", "")),
                    str(info.get("director", "")),
                    float(info.get("at", 0.0)),
                )
                for rs, holders in data.items()
                for holder, info in holders.items()
            ]
        except (ValueError, AttributeError, TypeError) as exc:
            raise ClusterStoreError(f"cluster record {kv.key!r} is not a record of holds: {exc}") from None

    def service_holds(self, service: ServiceKey, *, serializable: bool = False) -> tuple[HoldsOfService, int]:
        """One service's holds and its key's ``mod_revision`` (0: no key yet).

        ``serializable``: the answering member's copy, without a Raft round. A
        compare-and-swap may start from it: a copy that is behind fails the
        transaction's compare and the next attempt reads linearizably.
        """
        return _holds_of(self.client.get(self.key(service), serializable=serializable))

    # --- writing, each a compare-and-swap on the service's key ----------------------------

    def take(
        self,
        service: ServiceKey,
        real_server: RealServerKey,
        holder: str,
        *,
        action: str,
        reason: str = "",
        check: Callable[[frozenset[RealServerKey]], None] = lambda held: None,
        extra: Callable[[], tuple[Sequence[Compare], Sequence[dict[str, Any]]]] | None = None,
    ) -> bool:
        """Add ``holder``'s hold on the real server; False when it was there already.

        ``check(held)`` gets the real servers the cluster holds in the service
        (before this hold) and raises to refuse (the quorum: PolicyRefused);
        it runs again on every retry, against what the winning writer left.
        ``extra()`` gives more compares and writes for the same transaction (a
        drain's job: ``DrainStore.starting``); it is asked again on every
        retry, so a compare of its own that failed is made again on a fresh read.
        """
        for attempt in range(CAS_ATTEMPTS):
            fresh = attempt > 0  # the first attempt starts from a copy (``_start``): it may be behind
            holds, revision = self.service_holds(service) if fresh else self._start(service)
            rs = str(real_server)
            if holder in holds.get(rs, {}):
                if fresh:
                    return False
                continue  # maybe a copy that is behind: confirm with a linearizable read
            try:
                check(frozenset(RealServerKey.parse(r) for r, holders in holds.items() if holders))
            except PolicyRefused:
                if fresh:
                    raise
                continue  # a refusal from a copy that may be behind: confirm with a linearizable read
            info = {"action": action, "reason": reason, "director": self.config.director_name, "at": self.clock()}
            holds.setdefault(rs, {})[holder] = info
            compare, also = extra() if extra is not None else ((), ())
            if self._swap(service, revision, holds, compare=compare, also=also):
                return True
        raise ClusterStoreError(f"cluster record of {service}: {CAS_ATTEMPTS} concurrent writers won in a row")

    def release(
        self,
        service: ServiceKey,
        real_server: RealServerKey,
        which: Callable[[str], bool] = lambda holder: True,
        *,
        also: Sequence[dict[str, Any]] = (),
    ) -> list[str]:
        """Remove the holds on the real server whose holder ``which`` accepts; the holders removed.

        ``also``: more writes for the same transaction (the real server's drain job forgotten with its holds).
        """
        for attempt in range(CAS_ATTEMPTS):
            fresh = attempt > 0
            holds, revision = self.service_holds(service) if fresh else self._start(service)
            rs = str(real_server)
            gone = [h for h in holds.get(rs, {}) if which(h)]
            if not gone:
                if fresh:
                    return []
                continue  # maybe a copy that is behind: confirm with a linearizable read
            for h in gone:
                del holds[rs][h]
            if not holds[rs]:
                del holds[rs]
            if self._swap(service, revision, holds, also=also):
                return gone
        raise ClusterStoreError(f"cluster record of {service}: {CAS_ATTEMPTS} concurrent writers won in a row")

    def take_many(
        self,
        items: Sequence[Item],
        holder: str,
        *,
        action: str,
        reason: str = "",
        check: Callable[[ServiceKey, RealServerKey, AbstractSet[RealServerKey]], None] = lambda s, r, held: None,
    ) -> dict[Item, bool | PolicyRefused | ClusterStoreError]:
        """``holder``'s hold on every item, in one transaction per ``TXN_KEYS`` services; each item's fate.

        True: held now; False: ``holder`` held it already; a PolicyRefused:
        ``check(service, real_server, held)`` refused it, ``held`` being what
        the cluster holds in the service with the items before it in this
        call (so the quorum counts them). ``held`` is one live set per
        service and attempt, which grows by each item whose check passed:
        read it during the call, do not keep or change it. A ClusterStoreError: etcd could not
        be reached for the item's group (and every later one; the earlier
        groups are written).
        """
        fates: dict[Item, bool | PolicyRefused | ClusterStoreError] = {}
        failed: ClusterStoreError | None = None
        for group in _groups(items):
            if failed is not None:
                fates.update(dict.fromkeys(group, failed))
                continue

            def plan(records: dict[ServiceKey, HoldsOfService], group: list[Item] = group) -> set[ServiceKey]:
                changed: set[ServiceKey] = set()
                held: dict[ServiceKey, set[RealServerKey]] = {}  # parsed once per service, then kept up to date
                for service, real_server in group:
                    holds, rs = records[service], str(real_server)
                    if holder in holds.get(rs, {}):
                        fates[(service, real_server)] = False
                        continue
                    if service not in held:
                        held[service] = {RealServerKey.parse(r) for r, holders in holds.items() if holders}
                    try:
                        check(service, real_server, held[service])
                    except PolicyRefused as exc:
                        fates[(service, real_server)] = exc
                        continue
                    info = {"action": action, "reason": reason, "director": self.config.director_name}
                    holds.setdefault(rs, {})[holder] = {**info, "at": self.clock()}
                    held[service].add(real_server)
                    fates[(service, real_server)] = True
                    changed.add(service)
                return changed

            try:
                self._swap_many({service for service, _rs in group}, plan)
            except ClusterStoreError as exc:
                failed = exc
                fates.update(dict.fromkeys(group, exc))
        return fates

    def release_many(
        self, items: Sequence[Item], which: Callable[[str], bool] = lambda holder: True
    ) -> dict[Item, list[str]]:
        """Remove the holds on the items whose holder ``which`` accepts, one transaction per ``TXN_KEYS`` services.

        The holders removed, per item. ClusterStoreError when etcd cannot be reached (the earlier groups are written).
        """
        gone: dict[Item, list[str]] = {}
        for group in _groups(items):

            def plan(records: dict[ServiceKey, HoldsOfService], group: list[Item] = group) -> set[ServiceKey]:
                changed: set[ServiceKey] = set()
                for service, real_server in group:
                    holds, rs = records[service], str(real_server)
                    gone[(service, real_server)] = [h for h in holds.get(rs, {}) if which(h)]
                    for h in gone[(service, real_server)]:
                        del holds[rs][h]
                        changed.add(service)
                    if rs in holds and not holds[rs]:
                        del holds[rs]
                return changed

            self._swap_many({service for service, _rs in group}, plan)
        return gone

    def _swap_many(
        self, services: set[ServiceKey], plan: Callable[[dict[ServiceKey, HoldsOfService]], set[ServiceKey]]
    ) -> None:
        """Read the services' keys, ``plan`` the changes (the services it changed), write them in one transaction.

        The transaction compares every key read, changed or not, so that a
        decision made on a copy that is behind (the first attempt reads the
        answering member's copy) or that another writer overtook is made again
        on a linearizable read. A plan that changes nothing made from a copy
        that may be behind is confirmed the same way.
        """
        for attempt in range(CAS_ATTEMPTS):
            fresh = attempt > 0
            records, revisions = self._read_services(services, serializable=not fresh)
            changed = plan(records)
            if not changed:
                if fresh:
                    return
                continue
            compare = [self._compare(service, revisions[service]) for service in sorted(services, key=str)]
            ops = [self._op(service, records[service]) for service in sorted(changed, key=str)]
            ok, revision = self.client.txn(compare, ops)
            if ok:
                self.written = max(self.written, revision)
                for service in changed:
                    self._wrote(service, records[service], revision)
                return
        raise ClusterStoreError(f"cluster records of {len(services)} services: {CAS_ATTEMPTS} concurrent writers won")

    def _read_services(
        self, services: set[ServiceKey], *, serializable: bool
    ) -> tuple[dict[ServiceKey, HoldsOfService], dict[ServiceKey, int]]:
        """The services' holds and their keys' revisions (0: no key): one request for one, a range for more."""
        if len(services) == 1:
            (service,) = services
            holds, revision = self.service_holds(service, serializable=serializable)
            return {service: holds}, {service: revision}
        kvs, _revision = self.client.range(self.prefix, serializable=serializable)
        records: dict[ServiceKey, HoldsOfService] = {service: {} for service in services}
        revisions = dict.fromkeys(services, 0)
        keys = {self.key(service): service for service in services}
        for kv in kvs:
            found = keys.get(kv.key)
            if found is None:
                continue
            try:
                records[found], revisions[found] = _decode(kv.value), kv.mod_revision
            except ValueError as exc:
                raise ClusterStoreError(f"cluster record {kv.key!r} is not a record of holds: {exc}") from None
        return records, revisions

    def _compare(self, service: ServiceKey, revision: int) -> Compare:
        key = self.key(service)
        return Compare(key, "mod", "=", revision) if revision else Compare(key, "create", "=", 0)

    def _op(self, service: ServiceKey, holds: Mapping[str, Any]) -> dict[str, Any]:
        key = self.key(service)
        return put_op(key, json.dumps(holds, sort_keys=True)) if holds else delete_op(key)

    def delete_drained(
        self,
        service: ServiceKey,
        real_server: RealServerKey,
        *,
        check: Callable[[frozenset[RealServerKey]], None],
        compare: Sequence[Compare] = (),
        also: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Turn the holds on a drained real server into a deletion (action ``delete``): every director removes it.

        ``check(held)`` is the quorum, as for ``take``; ``compare`` and ``also``
        go into the same transaction (a drain job's owner ends its job with it).
        False when a ``compare`` of the caller's failed (the job is not its own
        any more); a concurrent write to the service's key is read again.
        """
        for _attempt in range(CAS_ATTEMPTS):
            holds, revision = self.service_holds(service)
            check(frozenset(RealServerKey.parse(r) for r, holders in holds.items() if holders))
            info = {"action": DELETE, "reason": "drained", "director": self.config.director_name, "at": self.clock()}
            rs = str(real_server)
            holds[rs] = {holder: {**old, **info} for holder, old in holds.get(rs, {}).items()}
            if not holds[rs]:
                del holds[rs]
            if self._swap(service, revision, holds, compare=compare, also=also):
                return True
            if compare and not self.client.txn(list(compare), [])[0]:
                return False
        raise ClusterStoreError(f"cluster record of {service}: {CAS_ATTEMPTS} concurrent writers won in a row")

    def _swap(
        self,
        service: ServiceKey,
        revision: int,
        holds: Mapping[str, Any],
        *,
        compare: Sequence[Compare] = (),
        also: Sequence[dict[str, Any]] = (),
    ) -> bool:
        ok, written = self.client.txn([self._compare(service, revision), *compare], [self._op(service, holds), *also])
        if ok:
            self.written = max(self.written, written)
            self._wrote(service, holds, written)
        return ok

    def _wrote(self, service: ServiceKey, holds: Mapping[str, Any], revision: int) -> None:
        """This director wrote ``holds`` at ``revision``: its copy has them before its watch says so."""
        key = self.key(service)
        self.seen(KeyValue(key, json.dumps(holds, sort_keys=True), revision), deleted=not holds)


def _groups(items: Sequence[Item]) -> list[list[Item]]:
    """The items in groups of at most ``TXN_KEYS`` services, each service's items together, in their order."""
    by_service: dict[ServiceKey, list[Item]] = {}
    for item in items:
        by_service.setdefault(item[0], []).append(item)
    services = list(by_service)
    return [
        [item for service in services[i : i + TXN_KEYS] for item in by_service[service]]
        for i in range(0, len(services), TXN_KEYS)
    ]


def _holds_of(kv: KeyValue | None) -> tuple[HoldsOfService, int]:
    """One service's key decoded, and its ``mod_revision`` (None, no key: none, 0)."""
    if kv is None:
        return {}, 0
    try:
        return _decode(kv.value), kv.mod_revision
    except ValueError as exc:
        raise ClusterStoreError(f"cluster record {kv.key!r} is not a record of holds: {exc}") from None


def _decode(text: str) -> HoldsOfService:
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("expected {real server: {holder: {...}}}")
    return data
