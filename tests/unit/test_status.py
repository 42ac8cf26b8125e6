"""`lvsguard status`: the table as an operator reads it."""

from __future__ import annotations

import pytest

from lvsguard import config
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, SyncDaemon, Table, VirtualService
from lvsguard.status import human, render

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS1 = RealServer(
    RealServerKey.parse("10.0.1.2:8080"),
    3,
    Forward.MASQ,
    active_connections=2,
    inactive_connections=5,
    stats=Stats(30, 276, 204, 19_272, 1_904_800),
)
RS2 = RealServer(RealServerKey.parse("10.0.1.3:8080"), 0, Forward.ROUTE, stats=Stats(10, 1, 0, 60, 0))
TABLE = Table(
    services=(
        VirtualService(
            WEB, "wrr", flags=1, timeout=300, stats=Stats(40, 277, 204, 19_332, 1_904_800), real_servers=(RS1, RS2)
        ),
    ),
    sync_daemons=(SyncDaemon("master", "eth1", 7),),
)
CONFIG = config.loads(
    "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - {name: web1, address: 10.0.1.2:8080}\n",
    "a.yaml",
)


@pytest.mark.parametrize(
    "n, unit, text",
    [
        (999, "", "999"),
        (1000, "", "1.0K"),
        (19_272, "B", "19.3KB"),
        (1_904_800, "B", "1.9MB"),
        (2**64 - 1, "", "18.4E"),
    ],
)
def test_human_units(n: int, unit: str, text: str) -> None:
    assert human(n, unit=unit) == text


def test_render_with_names_and_human_units() -> None:
    lines = render(TABLE, CONFIG).splitlines()
    assert lines[0].split()[:5] == ["SERVICE", "/", "REAL", "SERVER", "NAME"]
    assert lines[1].split() == [
        "TCP",
        "192.0.2.10:80",
        "web",
        "wrr",
        "persistent",
        "300s",
        "2",
        "5",
        "40",
        "277",
        "204",
        "19.3KB",
        "1.9MB",
    ]
    assert lines[2].split() == [
        "->",
        "10.0.1.2:8080",
        "web1",
        "masq",
        "3",
        "2",
        "5",
        "30",
        "276",
        "204",
        "19.3KB",
        "1.9MB",
    ]
    assert lines[3].split() == ["->", "10.0.1.3:8080", "route", "0", "0", "0", "10", "1", "0", "60B", "0B"]  # no name
    assert lines[4] == "sync master on eth1 id 7"


def test_render_exact_numbers_and_aligned_columns() -> None:
    lines = render(TABLE, exact=True).splitlines()
    assert lines[1].split()[-2:] == ["19332", "1904800"]
    weight_column = lines[0].index("WEIGHT") + len("WEIGHT")  # right-aligned under its header
    assert lines[2][weight_column - 1] == "3" and lines[3][weight_column - 1] == "0"


def test_render_says_when_there_is_nothing_or_no_counters() -> None:
    assert render(Table(services=())).endswith("(no virtual services)\n")
    procfs = render(Table(services=TABLE.services, source="procfs"))
    assert "(read from procfs: no traffic counters; netlink needs CAP_NET_ADMIN)" in procfs
