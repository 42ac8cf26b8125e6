"""One label vocabulary for the exporter and the actuator, so their series and alerts join."""

from __future__ import annotations

import pytest

from lvsguard.labels import UnknownBackendLabels, mark_label, parse_backend_labels, parse_mark_label


@pytest.mark.parametrize("mark, text", [(1, "00000001"), (16, "00000010"), (10, "0000000A"), (2**32 - 1, "FFFFFFFF")])
def test_mark_label_round_trip(mark: int, text: str) -> None:
    assert mark_label(mark) == text
    assert parse_mark_label(text) == mark


@pytest.mark.parametrize("text", ["", "x", "00000000", "100000000", "0x10", " 10", "-1"])
def test_parse_mark_label_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a firewall mark"):
        parse_mark_label(text)


def test_backend_labels_error_lists_every_bad_value_sorted() -> None:
    with pytest.raises(UnknownBackendLabels) as info:
        parse_backend_labels("invalid_label,local_port,bad_label")
    assert str(info.value) == 'unknown IPVS backend labels: "bad_label, invalid_label"'


def test_backend_labels_keep_output_order() -> None:
    assert parse_backend_labels(["remote_port", "local_address"]) == ("local_address", "remote_port")
