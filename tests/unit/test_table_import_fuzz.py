"""Hostile input to the importers and the table loader: nothing but ConfigError, never a traceback.

Random edits of the real fixtures (a keepalived.conf, an ldirectord.cf, an
ipvsadm-save dump, a managed config), with characters that matter to each
format (braces, quotes, ``=``, ``:``, ``-``, digits); and what parses must
print a config that loads back with no problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property-based tests need the hypothesis package")
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsguard.errors import ConfigError
from lvsguard.table.importers import Imported, ipvsadm, keepalived, ldirectord, render
from lvsguard.table.load import load_table, load_table_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "import"
EXAMPLES = int(os.environ.get("LVSGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALPHABET = "{}\"'=:-[]/#!.,0123456789 \tabcdefTUNDRNATgue\n"


def _edited(seed: str) -> st.SearchStrategy[str]:
    edit = st.tuples(st.sampled_from("rid"), st.integers(0, max(len(seed) - 1, 0)), st.sampled_from(ALPHABET))

    def apply(edits: list[tuple[str, int, str]]) -> str:
        text = list(seed)
        for kind, at, char in edits:
            at = min(at, len(text))
            if kind == "r" and at < len(text):
                text[at] = char
            elif kind == "i":
                text.insert(at, char)
            elif at < len(text):
                del text[at]
        return "".join(text)

    return st.lists(edit, min_size=1, max_size=8).map(apply)


def _holds(parse: Callable[[str, str], Imported], text: str) -> None:
    try:
        result = parse(text, "fuzzed")
    except ConfigError as exc:
        assert str(exc)  # a message, each line naming the file
        return
    _, _, problems = load_table(yaml.safe_load(render(result)))
    assert problems == [], problems


@FUZZ
@given(_edited((FIXTURES / "keepalived" / "tunnel-fwmark.conf").read_text()))
def test_keepalived_conf_edits(text: str) -> None:
    _holds(keepalived.parse, text)


@FUZZ
@given(_edited((FIXTURES / "ldirectord" / "ldirectord.cf").read_text()))
def test_ldirectord_cf_edits(text: str) -> None:
    _holds(ldirectord.parse, text)


@FUZZ
@given(_edited((FIXTURES / "ipvsadm-all-options.save").read_text()))
def test_ipvsadm_save_edits(text: str) -> None:
    _holds(ipvsadm.parse, text)


@FUZZ
@given(_edited(render(ipvsadm.parse((FIXTURES / "ipvsadm-all-options.save").read_text()))))
def test_table_config_edits(text: str) -> None:
    try:
        load_table_text(text, "fuzzed.yaml")
    except ConfigError as exc:
        assert all(line.startswith("fuzzed.yaml") for line in str(exc).splitlines())
