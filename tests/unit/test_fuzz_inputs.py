"""Hostile input: config files, netlink dump bytes and procfs text never raise anything but their own error.

Property-based (hypothesis): random input, and random edits of the real
inputs (the shipped example configs, the dumps a 6.1 kernel sent, the procfs
files captured in the lab), because random bytes alone rarely get past the
first header. Each surface may raise exactly one kind of error, the one its
callers turn into a clear message: ``ConfigError`` for a config,
``KernelError`` (``MalformedReply``) or an untranslated kernel errno for
netlink, ``ProcfsFormatError`` for procfs. An IndexError, struct.error or
UnicodeDecodeError is a bug.

The test suite runs a few hundred cases per property; ``bench/fuzz.py`` runs
the same properties with ``LVSGUARD_FUZZ_EXAMPLES`` (10 000 by default) and
reports the counts in ``CASES``.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property-based tests need the hypothesis package")
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsguard.config import SECTIONS, Config, load, loads
from lvsguard.errors import ConfigError, KernelError, ProcfsFormatError
from lvsguard.ipvs._genl import NetlinkErrno
from lvsguard.ipvs.netlink import parse_daemons, parse_dests, parse_services
from lvsguard.ipvs.procfs import parse_ip_vs, parse_ip_vs_stats

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = int(os.environ.get("LVSGUARD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
CASES: Counter[str] = Counter()
"""Cases run per surface in this process (bench/fuzz.py prints them)."""


def _edits(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes replaced, inserted or deleted, and maybe cut short."""
    size = max(len(seed), 1)
    edit = st.tuples(st.sampled_from("rid"), st.integers(0, size - 1), st.integers(0, 255))

    def apply(edits: list[tuple[str, int, int]], cut: int | None) -> bytes:
        data = bytearray(seed)
        for kind, at, byte in edits:
            at = min(at, len(data))
            if kind == "r" and at < len(data):
                data[at] = byte
            elif kind == "i":
                data.insert(at, byte)
            elif kind == "d" and at < len(data):
                del data[at]
        return bytes(data[:cut] if cut is not None else data)

    return st.builds(apply, st.lists(edit, min_size=1, max_size=8), st.none() | st.integers(0, size))


# --- config files -------------------------------------------------------------------

CONFIG_SEEDS = [(ROOT / "examples" / name).read_bytes() for name in ("lvsguard.yaml", "minimal.yaml")]
YAML_CHARS = st.sampled_from(list(":-[]{},&*!|>'\"#%@`?\n\t ") + list("abcdefxyz0129.") + ["\u00e9", "\x00", "\ufeff"])
KEYS = [
    *SECTIONS,
    "name",
    "service",
    "real_servers",
    "address",
    "listen",
    "ipvs_source",
    "backend_labels",
    "services",
    "netns",
    "ledger",
    "rules",
    "quorum",
    "min_healthy",
    "rate_limit",
    "hold_down",
    "actions",
    "per",
    "match",
    "action",
    "<<",
    "bogus",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "TCP 192.0.2.10:80",
            "UDP [2001:db8::10]:53",
            "FWM 1",
            "10.0.1.2:80",
            "[::1]:9910",
            ":9910",
            "auto",
            "netlink",
            "50%",
            "30s",
            "web",
        ]
    )
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


def _config(text: str) -> None:
    CASES["config"] += 1
    try:
        result = loads(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(str(p).startswith("fuzz.yaml:") for p in exc.problems)
    else:
        assert isinstance(result, Config)


@FUZZ
@given(st.text(YAML_CHARS, max_size=200))
def test_config_any_text(text: str) -> None:
    _config(text)


@FUZZ
@given(DOCUMENTS)
def test_config_any_document(document: Any) -> None:
    _config(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(st.sampled_from(CONFIG_SEEDS).flatmap(_edits))
def test_config_edited_examples(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".yaml") as fh:  # load() also meets bytes that are not UTF-8
        fh.write(data)
        fh.flush()
        CASES["config"] += 1
        try:
            assert isinstance(load(fh.name), Config)
        except ConfigError as exc:
            assert all(str(p).startswith(f"{fh.name}:") for p in exc.problems)


# --- netlink dump bytes ----------------------------------------------------------------

NETLINK = FIXTURES / "netlink"
DECODERS: dict[str, tuple[Callable[[bytes], object], list[bytes]]] = {
    "services": (parse_services, [(NETLINK / "services.bin").read_bytes()]),
    "dests": (
        parse_dests,
        [p.read_bytes() for p in sorted(NETLINK.glob("dests-0*.bin")) if parse_dests(p.read_bytes())],
    ),
    "daemons": (parse_daemons, [(NETLINK / "daemons.bin").read_bytes()]),
}


def _decode(kind: str, data: bytes) -> None:
    CASES["netlink"] += 1
    try:
        DECODERS[kind][0](data)
    except (KernelError, NetlinkErrno):  # MalformedReply, or an errno the caller translates
        pass


@FUZZ
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=600))
def test_netlink_any_bytes(kind: str, data: bytes) -> None:
    _decode(kind, data)


@FUZZ
@given(
    st.sampled_from([(kind, seed) for kind, (_, seeds) in sorted(DECODERS.items()) for seed in seeds]).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), _edits(pair[1]))
    )
)
def test_netlink_edited_kernel_dumps(case: tuple[str, bytes]) -> None:
    _decode(*case)


def test_the_netlink_seeds_decode_unedited() -> None:
    """Guards the seeds: edits of bytes the decoder already refuses would test nothing."""
    for kind, (decode, seeds) in DECODERS.items():
        for seed in seeds:
            assert decode(seed), kind


# --- procfs text ------------------------------------------------------------------------

PROC = FIXTURES / "proc"
PROC_SEEDS = {
    "ip_vs": (parse_ip_vs, [p.read_bytes() for p in sorted(PROC.glob("*.ip_vs")) if p.stat().st_size > 150]),
    "ip_vs_stats": (parse_ip_vs_stats, [p.read_bytes() for p in sorted(PROC.glob("*.ip_vs_stats"))]),
}


def _procfs(kind: str, data: bytes) -> None:
    CASES["procfs"] += 1
    try:
        PROC_SEEDS[kind][0](data.decode("utf-8", "replace"))
    except ProcfsFormatError as exc:
        assert exc.lineno >= 0


@FUZZ
@given(
    st.sampled_from([(kind, seed) for kind, (_, seeds) in sorted(PROC_SEEDS.items()) for seed in seeds]).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), _edits(pair[1]))
    )
)
def test_procfs_edited_captures(case: tuple[str, bytes]) -> None:
    _procfs(*case)


@FUZZ
@given(
    st.sampled_from(sorted(PROC_SEEDS)),
    st.text(st.sampled_from(list("0123456789ABCDEF:->[] \nTCPUDFWMRouteMasqLocalInActConn")), max_size=300),
)
def test_procfs_any_text(kind: str, text: str) -> None:
    header = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    _procfs(kind, (header + text).encode() if kind == "ip_vs" else text.encode())


def test_the_procfs_seeds_parse_unedited() -> None:
    for kind, (parse, seeds) in PROC_SEEDS.items():
        for seed in seeds:
            assert parse(seed.decode()) is not None, kind


def test_a_control_character_is_a_config_error_at_its_line() -> None:
    """Found by the fuzzer: PyYAML refused a NUL before parsing, and the ReaderError was a traceback."""
    with pytest.raises(ConfigError) as info:
        loads("services:\n  - name: w\x00\n", "nul.yaml")
    assert (
        str(info.value) == "nul.yaml:2:12: character U+0000 is not allowed in YAML (special characters are not allowed)"
    )


def test_a_persistence_netmask_wider_than_32_bits_is_a_format_error_at_its_line() -> None:
    """Found by the fuzzer: an edited IPv6 mask of 9 hex digits overflowed int.to_bytes (an OverflowError)."""
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  [20010DB8000000000000000000000010]:0050 wlc persistent 300 1FFFFFFFF\n"
    )
    with pytest.raises(ProcfsFormatError, match=r":4: persistence netmask '1FFFFFFFF' is wider than 32 bits"):
        parse_ip_vs(text)
