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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lvsguard.cluster.etcd import Compare, EtcdClient, KeyValue, delete_op, put_op
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError, PolicyRefused
from lvsguard.model import RealServerKey, ServiceKey

CAS_ATTEMPTS = 20  # transactions lost to concurrent writers before giving up

HoldsOfService = dict[str, dict[str, dict[str, Any]]]
"""real server text -> holder -> {action, reason, director, at}: one service's key, decoded."""


@dataclass(frozen=True, slots=True)
class ClusterHold:
    """One hold of the cluster: a real server of a service, held by ``holder`` for ``action``."""

    service: ServiceKey
    real_server: RealServerKey
    holder: str  # "<director>/<source> <name>"
    action: str  # quarantine | drain
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

    def key(self, service: ServiceKey) -> str:
        return f"{self.prefix}{service}"

    def holder(self, who: str) -> str:
        """The holder of a hold this director takes for ``who`` (``api alice``)."""
        return f"{self.config.director_name}/{who}"

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
        kv = self.client.get(self.key(service), serializable=serializable)
        if kv is None:
            return {}, 0
        try:
            return _decode(kv.value), kv.mod_revision
        except ValueError as exc:
            raise ClusterStoreError(f"cluster record {kv.key!r} is not a record of holds: {exc}") from None

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
    ) -> bool:
        """Add ``holder``'s hold on the real server; False when it was there already.

        ``check(held)`` gets the real servers the cluster holds in the service
        (before this hold) and raises to refuse (the quorum: PolicyRefused);
        it runs again on every retry, against what the winning writer left.
        """
        for attempt in range(CAS_ATTEMPTS):
            fresh = attempt > 0  # the first attempt starts from the answering member's copy (serializable)
            holds, revision = self.service_holds(service, serializable=not fresh)
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
            if self._swap(service, revision, holds):
                return True
        raise ClusterStoreError(f"cluster record of {service}: {CAS_ATTEMPTS} concurrent writers won in a row")

    def release(
        self, service: ServiceKey, real_server: RealServerKey, which: Callable[[str], bool] = lambda holder: True
    ) -> list[str]:
        """Remove the holds on the real server whose holder ``which`` accepts; the holders removed."""
        for attempt in range(CAS_ATTEMPTS):
            fresh = attempt > 0
            holds, revision = self.service_holds(service, serializable=not fresh)
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
            if self._swap(service, revision, holds):
                return gone
        raise ClusterStoreError(f"cluster record of {service}: {CAS_ATTEMPTS} concurrent writers won in a row")

    def _swap(self, service: ServiceKey, revision: int, holds: Mapping[str, Any]) -> bool:
        key = self.key(service)
        compare = Compare(key, "mod", "=", revision) if revision else Compare(key, "create", "=", 0)
        op = put_op(key, json.dumps(holds, sort_keys=True)) if holds else delete_op(key)
        ok, _ = self.client.txn([compare], [op])
        return ok


def _decode(text: str) -> HoldsOfService:
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("expected {real server: {holder: {...}}}")
    return data
