"""Concurrent conflicting actions from three directors, property-based, on three real IPVS kernels.

All real: Debian's etcd 3.4 in three namespaces (lab.etcd), three
``lvsguard actuator`` processes each in its director's namespace with its own
IPVS table (lab.cluster), every request sent to a director's HTTP API, every
kernel read back through netlink and ``ipvsadm -Sn``.

The service has three real servers and ``min_healthy`` 1 (the default): at
most two may be out at once. Hypothesis draws rounds; in a round each
director gets a different real server and an action on it (quarantine,
drain, a bulk quarantine of one, or restore), and the three requests leave
together (a barrier), so that three takes at once must lose one to the
quorum, whichever director wrote first. While the rounds run, a thread reads
the three kernels in a loop: no kernel may ever have fewer than
``min_healthy`` real servers in rotation, not even between two writes. After
each round: the cluster holds exactly the real servers whose take was
accepted and not restored since (no hold lost, none made up), every director
shows each of them applied, each kernel has exactly those at weight 0, and
the three ``ipvsadm -Sn`` are the same.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import Phase, event, given, note, settings
from hypothesis import strategies as st

from lab.cluster import REAL_SERVERS, ClusterLab, running

pytestmark = pytest.mark.kernel

NAMES = ("dir1", "dir2", "dir3")
FULL = {rs: weight for rs, (_address, weight) in REAL_SERVERS.items()}
ADDRESS = {rs: address for rs, (address, _weight) in REAL_SERVERS.items()}
MIN_HEALTHY = 1  # the actuator's default: of the three real servers, two may be out
TAKES = ("quarantine", "drain", "bulk quarantine")  # three ways to take a real server out, each with its own CAS path
ACTIONS = (*TAKES, "restore")
EXAMPLES = 6  # each round is three API calls and a convergence of three actuators under UML: seconds, not ms

Round = tuple[list[str], tuple[str, str, str]]
"""The real server each director acts on (all different), and the action each one sends."""

ROUNDS = st.lists(
    st.tuples(st.permutations(sorted(REAL_SERVERS)), st.tuples(*[st.sampled_from(ACTIONS)] * 3)),
    min_size=1,
    max_size=3,
)


class Sampler:
    """Reads the three kernels in a loop, in a thread of its own; keeps every read with too few real servers in."""

    def __init__(self, cluster: ClusterLab):
        self.cluster = cluster
        self.samples = 0
        self.broken: list[tuple[str, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in NAMES:
                weights = self.cluster.weights(name)
                if sum(1 for weight in weights.values() if weight > 0) < MIN_HEALTHY:
                    self.broken.append((name, weights))
                self.samples += 1
            self._stop.wait(0.01)  # the actuators share the VM's CPU and this process's GIL

    def __enter__(self) -> Sampler:
        # A first read here, before the thread: pyroute2, imported on the first read, fails with a circular
        # ImportError when two threads import it at once (the sampler's and the test's own reads).
        self.cluster.weights(NAMES[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def check(self) -> bool:
        """True; AssertionError as soon as a kernel was seen with too few real servers in, or the thread died."""
        assert self.broken == [], f"a kernel below min_healthy {MIN_HEALTHY}: {self.broken[:5]}"
        assert self._thread.is_alive(), "the sampler stopped reading the kernels"
        return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterLab]:
    with running(3, actuator={"rate_limit": {"actions": 0}}) as lab:  # rounds come faster than 60 takes a minute
        yield lab


def api_request(action: str, rs: str) -> tuple[str, dict[str, Any]]:
    """The API path and body of ``action`` on real server ``rs`` of the ``web`` service."""
    item = {"service": "web", "real_server": rs}
    if action == "bulk quarantine":
        return "/api/v1/bulk/quarantine", {"targets": [item], "reason": "property"}
    if action == "drain":  # no connections: the drain is done at once, the hold stays
        return "/api/v1/drain", {**item, "reason": "property", "timeout": 3600}
    return f"/api/v1/{action}", {**item, "reason": "property"}


def result_of(reply: dict[str, Any]) -> tuple[str, str]:
    """``(result, reason)`` of a reply; a bulk reply's one item."""
    if "results" in reply:
        [reply] = reply["results"]
    return reply.get("result", ""), reply.get("reason") or ""


def send_at_once(cluster: ClusterLab, requests: list[tuple[str, str, str]]) -> list[tuple[int, dict[str, Any]]]:
    """``(director, action, real server)`` each to its director's API, all released by one barrier; the replies."""
    barrier = threading.Barrier(len(requests))
    replies: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(requests)

    def send(i: int, name: str, action: str, rs: str) -> None:
        path, body = api_request(action, rs)
        barrier.wait()
        replies[i] = cluster.call(name, path, body)

    threads = [threading.Thread(target=send, args=(i, *request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def settled(cluster: ClusterLab, out: set[str]) -> bool:
    """Whether the cluster holds exactly ``out``, applied by every director, and every kernel has exactly those out."""
    expected = {rs: 0 if rs in out else weight for rs, weight in FULL.items()}
    if any(cluster.weights(name) != expected for name in NAMES):
        return False
    status, doc = cluster.call("dir1", "/api/v1/cluster")
    assert status == 200, doc
    holds = doc["holds"]
    return {h["real_server"] for h in holds} == {ADDRESS[rs] for rs in out} and all(
        h["applied"] == dict.fromkeys(NAMES, True) for h in holds
    )


def restore_all(cluster: ClusterLab) -> None:
    """Every real server back in, on every director: the next example starts from the full table."""
    targets = [{"service": "web", "real_server": rs} for rs in sorted(FULL)]
    status, reply = cluster.call("dir1", "/api/v1/bulk/restore", {"targets": targets})
    assert status == 200, reply
    cluster.wait(lambda: settled(cluster, set()), "every real server restored")


@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=(Phase.explicit, Phase.generate))
@given(plan=ROUNDS)
def test_concurrent_conflicting_actions_keep_the_quorum_and_one_state(cluster: ClusterLab, plan: list[Round]) -> None:
    """No shrinking (``phases``): one example is tens of seconds of lab; a failure shows the plan as drawn."""
    out: set[str] = set()
    with Sampler(cluster) as sampler:
        try:
            for targets, actions in plan:
                before = sampler.samples
                requests = list(zip(NAMES, actions, targets, strict=True))
                note(f"round: {requests}, out before: {sorted(out)}")
                refused = 0
                for (name, action, rs), (status, reply) in zip(requests, send_at_once(cluster, requests), strict=True):
                    result, reason = result_of(reply)
                    if action in TAKES and result in ("applied", "recorded", "noop"):
                        out.add(rs)
                    elif action in TAKES:
                        assert (result, reason) == ("refused", "quorum"), (name, rs, status, reply)
                        refused += 1
                    else:
                        assert result in ("applied", "noop"), (name, rs, status, reply)
                        out.discard(rs)
                event(f"takes refused for the quorum in a round: {refused}")
                assert len(out) <= len(FULL) - MIN_HEALTHY, (out, requests)
                cluster.wait(
                    lambda: sampler.check() and settled(cluster, out),
                    f"the cluster and every kernel with {sorted(out)} out",
                )
                saved = {name: cluster.saved(name) for name in NAMES}
                assert len(set(saved.values())) == 1, saved
                assert sampler.samples > before and sampler.check()  # the kernels were read during the round
        finally:
            restore_all(cluster)
    print(f"{len(plan)} rounds, {sampler.samples} kernel reads")
