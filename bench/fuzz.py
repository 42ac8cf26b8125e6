"""Long fuzz run: every hostile-input property of the test suite, with many more cases.

    .venv/bin/python bench/fuzz.py [--examples 10000] [-k agent]

The suite runs each property a few hundred times; this runs the same pytest
tests with ``--examples`` cases each (hypothesis ``max_examples``, set on each
test here, so the suite's own small budgets do not cap it) and counts the
cases actually run per input surface: config files, netlink dump bytes,
procfs text, webhook payloads, the REST API (schemathesis over the OpenAPI
document, every endpoint, schema-valid and broken requests), API request
bodies, SNMP packets and agent-check replies. A property that finds a failing
input fails its test with hypothesis's minimal example, and the exit status
is 1. Results go to bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

SURFACES: tuple[tuple[str, str], ...] = (
    ("tests/unit/test_fuzz_inputs.py::test_config_", "config"),
    ("tests/unit/test_fuzz_inputs.py::test_netlink_", "netlink"),
    ("tests/unit/test_fuzz_inputs.py::test_procfs_", "procfs"),
    ("tests/unit/test_actuator_webhook_fuzz.py::test_generated_payloads", "webhook"),
    ("tests/unit/test_actuator_schemathesis.py::test_generated_requests", "rest (schemathesis)"),
    ("tests/unit/test_actuator_webhook_fuzz.py::test_generated_api_bodies", "rest bodies"),
    ("tests/unit/test_snmp_fuzz.py::test_any_bytes", "snmp"),
    ("tests/unit/test_snmp_fuzz.py::test_mutated_requests", "snmp"),
    ("tests/unit/test_agent_reply_fuzz.py::test_any_reply", "agent"),
    ("tests/unit/test_agent_reply_fuzz.py::test_parse_reply", "agent"),
)
"""Test node id prefix -> input surface; the tests named here are the ones this runs."""


class Budget:
    """A pytest plugin: ``examples`` cases for each fuzz test, and a count of the cases each one ran."""

    def __init__(self, examples: int, select: str) -> None:
        self.examples = examples
        self.select = select
        self.per_test: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []

    def surface(self, nodeid: str) -> str | None:
        return next((name for prefix, name in SURFACES if nodeid.startswith(prefix)), None)

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        from hypothesis import settings

        kept = []
        for item in items:
            surface = self.surface(item.nodeid)
            test = getattr(item, "obj", None)
            if surface is None or not hasattr(test, "hypothesis") or self.select not in f"{surface} {item.nodeid}":
                continue
            test._hypothesis_internal_use_settings = settings(
                test._hypothesis_internal_use_settings, max_examples=self.examples
            )
            test.hypothesis.inner_test = self._counting(item.nodeid, test.hypothesis.inner_test)
            kept.append(item)
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept

    def _counting(self, nodeid: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        """``inner``, counting the cases it ran; a draw hypothesis rejected (a filter, an assumption) is no case."""
        from hypothesis.errors import Frozen, StopTest, UnsatisfiedAssumption

        @functools.wraps(inner)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                result = inner(*args, **kwargs)
            except (UnsatisfiedAssumption, StopTest, Frozen):
                raise
            except BaseException:
                self.per_test[nodeid] += 1  # a failing case is a case
                raise
            self.per_test[nodeid] += 1
            return result

        return run

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call":
            self.seconds[report.nodeid] = report.duration
            if report.failed:
                self.failed.append(report.nodeid)

    def per_surface(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for nodeid, cases in self.per_test.items():
            counts[self.surface(nodeid) or "?"] += cases
        return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=10_000, help="hypothesis max_examples per property (default 10000)"
    )
    parser.add_argument(
        "-k", dest="select", default="", help="run only properties whose surface or test id contains this"
    )
    args = parser.parse_args(argv)
    import pytest

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    budget = Budget(args.examples, args.select)
    files = sorted({prefix.split("::")[0] for prefix, _ in SURFACES})
    started = time.monotonic()
    status = pytest.main(["-q", "-p", "no:cacheprovider", *files], plugins=[budget])
    print("\n| property | cases | seconds |\n|---|---:|---:|")
    for nodeid, cases in budget.per_test.items():
        print(f"| {nodeid.split('::', 1)[1]} | {cases} | {budget.seconds.get(nodeid, 0.0):.0f} |")
    surfaces = budget.per_surface()
    print("\n| surface | cases |\n|---|---:|")
    for surface, count in surfaces.items():
        print(f"| {surface} | {count} |")
    print(f"\n{sum(surfaces.values())} cases in {time.monotonic() - started:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(
        json.dumps(
            {
                "examples": args.examples,
                "surfaces": surfaces,
                "properties": dict(budget.per_test),
                "failed": budget.failed,
            },
            indent=2,
        )
    )
    if status != 0 or budget.failed:
        print(f"\nfuzz: failed: {', '.join(budget.failed) or f'pytest exit status {status}'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
