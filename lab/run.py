"""``python lab/run.py demo`` / ``python lab/run.py test``: run the demo or the kernel tests in the lab VM.

The lab is not a command of the installed ``lvsguard``: it needs a checkout (lab/vm.sh, tests/).

The VM shares the current directory read-write, so this changes to the
checkout's root first; the guest runs this same Python interpreter.

    python lab/run.py demo
    python lab/run.py test [PYTEST ARGS...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VM = ROOT / "lab" / "vm.sh"


def command(argv: list[str]) -> list[str] | None:
    """The lab/vm.sh command line for ``argv``; None when it is not demo or test."""
    if argv[:1] == ["demo"] and len(argv) == 1:
        return [str(VM), sys.executable, "lab/demo.py"]
    if argv[:1] == ["test"]:
        return [
            str(VM),
            "env",
            "LVSGUARD_REQUIRE_KERNEL=1",
            sys.executable,
            "-m",
            "pytest",
            "tests/integration",
            "-m",
            "kernel",
            "-q",
            *argv[1:],
        ]
    return None


def main(argv: list[str]) -> int:
    cmd = command(argv)
    if cmd is None:
        print(__doc__.strip().split("\n\n")[-1], file=sys.stderr)
        return 2
    os.chdir(ROOT)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
