"""How the exporter opens, reopens and falls back between readers (with plain stand-in readers)."""

from __future__ import annotations

import logging

import pytest

from lvsguard.errors import IPVSUnavailable, KernelError, NamespaceError, NotPermitted
from lvsguard.exporter.source import ExporterReader
from lvsguard.model import Table

NETLINK_TABLE = Table((), source="netlink")
PROCFS_TABLE = Table((), source="procfs")


class Stub:
    """A reader whose read() returns ``table`` or raises the next queued error."""

    def __init__(self, source: str, table: Table, errors: list[Exception] | None = None):
        self.source = source
        self.table = table
        self.errors = errors or []
        self.closed = False

    def read(self) -> Table:
        if self.errors:
            raise self.errors.pop(0)
        return self.table

    def close(self) -> None:
        self.closed = True


class Opener:
    """Stands in for lvsguard.ipvs.open_reader: hands out queued readers or errors, records the calls."""

    def __init__(self, *results: Stub | Exception):
        self.results = list(results)
        self.calls: list[tuple[str | None, str]] = []

    def __call__(self, netns: str | None, source: str) -> Stub:
        self.calls.append((netns, source))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_opens_on_first_read_not_at_construction() -> None:
    opener = Opener(Stub("netlink", NETLINK_TABLE))
    reader = ExporterReader("lvs-dir1", "auto", opener=opener)
    assert opener.calls == []
    assert reader.source == ""
    assert reader.read() is NETLINK_TABLE
    assert reader.read() is NETLINK_TABLE
    assert opener.calls == [("lvs-dir1", "auto")]
    assert reader.source == "netlink"


def test_auto_falls_back_to_procfs_when_netlink_read_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    netlink = Stub("netlink", NETLINK_TABLE, [NotPermitted("netlink IPVS needs CAP_NET_ADMIN", errno=1)])
    opener = Opener(netlink, Stub("procfs", PROCFS_TABLE))
    reader = ExporterReader(None, "auto", opener=opener)
    caplog.set_level(logging.WARNING, logger="lvsguard.exporter.source")
    assert reader.read() is PROCFS_TABLE
    assert reader.read() is PROCFS_TABLE
    assert opener.calls == [(None, "auto"), (None, "procfs")]
    assert netlink.closed
    assert reader.source == "procfs"
    assert [r.getMessage() for r in caplog.records] == [
        'ipvs_source_fallback source=procfs reason="netlink IPVS needs CAP_NET_ADMIN"'
    ]


def test_forced_netlink_does_not_fall_back() -> None:
    opener = Opener(Stub("netlink", NETLINK_TABLE, [NotPermitted("netlink IPVS needs CAP_NET_ADMIN")]))
    reader = ExporterReader(None, "netlink", opener=opener)
    with pytest.raises(NotPermitted):
        reader.read()
    assert reader.source == "netlink"
    assert opener.calls == [(None, "netlink")]


@pytest.mark.parametrize(
    "error",
    [
        IPVSUnavailable("the kernel has no IPVS"),
        NamespaceError("lvs-dir1", "cannot open /run/netns/lvs-dir1: No such file or directory"),
    ],
    ids=["no IPVS yet", "no namespace yet"],
)
def test_failed_open_is_retried_on_the_next_read(error: Exception) -> None:
    opener = Opener(error, Stub("netlink", NETLINK_TABLE))
    reader = ExporterReader("lvs-dir1", "auto", opener=opener)
    with pytest.raises(type(error)):
        reader.read()
    assert reader.read() is NETLINK_TABLE
    assert len(opener.calls) == 2


def test_reader_is_reopened_after_ipvs_went_away() -> None:
    first = Stub("netlink", NETLINK_TABLE, [IPVSUnavailable("the kernel has no IPVS")])
    opener = Opener(first, Stub("netlink", NETLINK_TABLE))
    reader = ExporterReader(None, "netlink", opener=opener)
    with pytest.raises(IPVSUnavailable):
        reader.read()
    assert first.closed
    assert reader.read() is NETLINK_TABLE
    assert len(opener.calls) == 2


def test_other_kernel_errors_keep_the_reader() -> None:
    first = Stub("netlink", NETLINK_TABLE, [KernelError("dump interrupted")])
    opener = Opener(first)
    reader = ExporterReader(None, "auto", opener=opener)
    with pytest.raises(KernelError, match="dump interrupted"):
        reader.read()
    assert reader.read() is NETLINK_TABLE
    assert not first.closed
    reader.close()
    assert first.closed


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown IPVS source 'sysfs' \\(one of auto, netlink, procfs\\)"):
        ExporterReader(None, "sysfs")
