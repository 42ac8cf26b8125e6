"""docs/install.md's code blocks: each is a step that the lab test runs, or says what else it is.

tests/integration/test_install_doc_kernel.py runs every ```sh block, in order, on a
clean director of the lab. A block that is not run says so in its fence: a kind of
text (``text``, ``yaml``, ``nginx``), or ``sh TAG`` with a TAG of ``NOT_RUN``, which
gives the reason. A new command block with a plain fence, or an unknown tag, fails
here, so that no step of the doc goes untested by accident.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
NOT_RUN = {
    "rhel9": "another distribution's packages: the lab is Debian 12",
    "ubuntu2204": "another distribution's packages: the lab is Debian 12",
    "build-host": "run on the build machine: the host builds the wheel (make wheelhouse), the VM has no network",
    "deb": "the Debian package: tests/integration/test_deb_kernel.py",
    "real-server": "a real server's unit, not a director's",
    "netns": "a director in a named namespace: the test runs the steps inside the lab director's namespace instead",
    "upgrade": "needs a newer release than the one installed",
}
NOT_STEPS = {"text", "yaml", "nginx"}


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(section, fence info, body)`` of every fenced block, in order; the section is the last ``## `` heading."""
    found = []
    section = ""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            found.append((section, line[3:].strip(), "\n".join(body) + "\n"))
    return found


def steps(text: str) -> list[tuple[str, str]]:
    """``(section, body)`` of the blocks the lab test runs."""
    return [(section, body) for section, info, body in blocks(text) if info == "sh"]


def test_every_block_is_a_step_or_says_what_else_it_is() -> None:
    unknown = [
        (section, info)
        for section, info, _ in blocks(DOC.read_text())
        if not (info == "sh" or info in NOT_STEPS or (info.startswith("sh ") and info[3:] in NOT_RUN))
    ]
    assert unknown == []


def test_the_steps_install_configure_start_check_and_uninstall() -> None:
    sections = [section for section, _ in steps(DOC.read_text())]
    assert sections == [
        "Install",
        "Install",
        "User, config and tokens",
        "User, config and tokens",
        "The units",
        "Check the director: `lvsguard doctor`",
        "Uninstall",
    ]


def test_a_plain_fence_or_an_unknown_tag_is_caught() -> None:
    text = "## A\n```sh\nls\n```\n```\nrm -rf /x\n```\n```sh someday\nx\n```\n"
    assert [info for _, info, _ in blocks(text)] == ["sh", "", "sh someday"]
    assert steps(text) == [("A", "ls\n")]
    assert re.search(r"^```$", text, re.M)
