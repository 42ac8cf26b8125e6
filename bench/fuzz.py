"""Long fuzz run: the properties of tests/unit/test_fuzz_inputs.py with many more cases.

    .venv/bin/python bench/fuzz.py [--examples 10000] [-k netlink]

The test suite runs each property a few hundred times; this runs each one
``--examples`` times (hypothesis ``max_examples``) and prints the cases run
per surface (config, netlink, procfs) and per property. A property that finds
a failing input stops the run with hypothesis's minimal example, and the exit
status is 1. Results go to bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load_properties(examples: int) -> ModuleType:
    os.environ["LVSGUARD_FUZZ_EXAMPLES"] = str(examples)  # read when the module is imported
    sys.path.insert(0, str(ROOT))
    path = ROOT / "tests" / "unit" / "test_fuzz_inputs.py"
    spec = importlib.util.spec_from_file_location("test_fuzz_inputs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="hypothesis max_examples per property (default 10000)")
    parser.add_argument("-k", dest="select", default="", help="run only properties whose name contains this")
    args = parser.parse_args(argv)
    module = load_properties(args.examples)
    properties = [(name, fn) for name, fn in vars(module).items() if name.startswith("test_") and hasattr(fn, "hypothesis") and args.select in name]
    per_property: dict[str, int] = {}
    failed = ""
    started = time.monotonic()
    print(f"| property | cases | seconds |\n|---|---:|---:|", flush=True)
    for name, fn in properties:
        before = sum(module.CASES.values())
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - hypothesis re-raises the minimal failing case: report it and stop
            failed = f"{name}: {type(exc).__name__}: {exc}"
            print(f"| {name} | FAILED | {time.monotonic() - t0:.1f} |")
            break
        per_property[name] = sum(module.CASES.values()) - before
        print(f"| {name} | {per_property[name]} | {time.monotonic() - t0:.1f} |", flush=True)
    surfaces = dict(sorted(module.CASES.items()))
    print("\n| surface | cases |\n|---|---:|")
    for surface, count in surfaces.items():
        print(f"| {surface} | {count} |")
    print(f"\n{sum(surfaces.values())} cases in {time.monotonic() - started:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps({"examples": args.examples, "surfaces": surfaces, "properties": per_property, "failed": failed}, indent=2))
    if failed:
        print(f"\nfuzz: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
