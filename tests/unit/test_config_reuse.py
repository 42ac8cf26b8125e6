"""A reload reuses the parse of the ``services`` entries whose text did not change, and gives what a whole load gives.

Each case loads a first config with a ``Reuse``, then a second one with the
same ``Reuse``, and compares the result (or every problem, with its
file:line:column and key) with a load of the second config alone.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lvsguard import config
from lvsguard.config import ConfigError
from lvsguard.config.loader import Config
from lvsguard.config.reuse import Reuse, cut

FILE = "lvsguard.yaml"


def entry(i: int, weight: int = 1, indent: str = "") -> str:
    return (
        f"{indent}- name: svc{i}\n"
        f"{indent}  service: TCP 192.0.2.{i}:80\n"
        f"{indent}  scheduler: wrr\n"
        f"{indent}  forward: masq\n"
        f"{indent}  real_servers:\n"
        f"{indent}  - {{name: rs1, address: '10.0.{i}.1:80', weight: {weight}}}\n"
        f"{indent}  - name: rs2\n"
        f"{indent}    address: 10.0.{i}.2:80\n"
    )


def table(entries: list[str], head: str = "table: {manage: true, prune: exact}\n", tail: str = "") -> str:
    return head + "services:\n" + "".join(entries) + tail


BASE = [entry(i) for i in range(1, 6)]
FIRST = table(BASE, tail="actuator:\n  quorum: {svc1: 1}\n")


def outcome(load: Callable[[], Config]) -> tuple[str, object]:
    try:
        cfg = load()
    except ConfigError as exc:
        return "refused", [str(p) for p in exc.problems]
    return "loaded", (cfg, cfg.desired)


def reloaded(second: str, first: str = FIRST) -> tuple[Reuse, Config | None, tuple[str, object]]:
    """(the Reuse, the first load, the outcome of the second load with it)."""
    reuse = Reuse()
    before = config.loads(first, FILE, reuse=reuse)
    return reuse, before, outcome(lambda: config.loads(second, FILE, reuse=reuse))


def alone(text: str) -> tuple[str, object]:
    return outcome(lambda: config.loads(text, FILE))


CHANGES = {
    "one weight": table([entry(1), entry(2, weight=7), *BASE[2:]], tail="actuator:\n  quorum: {svc1: 1}\n"),
    "the last entry": table([*BASE[:4], entry(5, weight=9)], tail="actuator:\n  quorum: {svc1: 1}\n"),
    "an entry added": table([*BASE, entry(6)], tail="actuator:\n  quorum: {svc1: 1}\n"),
    "an entry removed": table(BASE[1:], tail="actuator:\n  quorum: {svc2: 1}\n"),
    "entries reordered": table(BASE[::-1], tail="actuator:\n  quorum: {svc1: 1}\n"),
    "lines added above": "# a comment\n\n" + FIRST,
    "another section": table(BASE, tail="actuator:\n  quorum: {svc3: 2}\n"),
    "comments between": table([BASE[0], "# rs of svc2 below\n\n", *BASE[1:]], tail="actuator: {quorum: {svc1: 1}}\n"),
    "services last": "actuator:\n  quorum: {svc1: 1}\n" + table(BASE),
    "nothing": FIRST,
    "a flow list": "services: [{name: svc1, service: TCP 192.0.2.1:80}]\n",
    "indented entries": table([entry(i, indent="  ") for i in range(1, 6)]),
    "an anchor and an alias": table(
        [*BASE[:4], entry(5).replace("- name: svc5", "- &five\n  name: svc5"), "- <<: *five\n  name: svc6\n"]
        + ["  service: TCP 192.0.2.6:80\n"]
    ),
    "a string across entries": table([*BASE[:2], "- name: 'svc\n- 9'\n  service: TCP 192.0.2.9:80\n", *BASE[2:]]),
}


@pytest.mark.parametrize("second", CHANGES.values(), ids=CHANGES.keys())
def test_a_reload_gives_what_a_whole_load_gives(second: str) -> None:
    _, _, got = reloaded(second)
    assert got == alone(second)


def test_an_indented_list_is_reused_too() -> None:
    first = table([entry(i, indent="  ") for i in range(1, 4)], tail="actuator: {}\n")
    second = table([entry(1, indent="  "), entry(2, 5, indent="  "), entry(3, indent="  ")], tail="actuator: {}\n")
    reuse, before, got = reloaded(second, first)
    assert got == alone(second)
    assert got[0] == "loaded" and before is not None
    assert isinstance(got[1], tuple)
    after = got[1][0]
    assert [a is b for a, b in zip(before.services, after.services, strict=True)] == [True, False, True]


def test_the_unchanged_entries_are_not_parsed_again() -> None:
    reuse, before, _ = reloaded(FIRST)
    assert before is not None
    second = table([entry(1), entry(2, weight=7), *BASE[2:]], head="# moved down a line\ntable: {manage: true}\n")
    after = config.loads(second, FILE, reuse=reuse)
    kept = [a is b for a, b in zip(before.services, after.services, strict=True)]
    assert kept == [True, False, True, True, True]
    assert [a is b for a, b in zip(before.desired, after.desired, strict=True)] == kept
    assert after.desired.services[1].real_servers[0].weight == 7
    assert len(reuse) == 5, "the memory is the last load's entries"


BAD = {
    "a bad weight": table([entry(1), entry(2, weight=-1), *BASE[2:]]),
    "a name taken by an unchanged entry": table([entry(1), entry(2).replace("svc2", "svc4", 1), *BASE[2:]]),
    "a service taken by an unchanged entry": table([entry(1), *BASE[1:], entry(6).replace("192.0.2.6", "192.0.2.3")]),
    "a later section naming no service": table(BASE, tail="actuator:\n  quorum: {svc9: 1}\n"),
    "a placeholder's text as an entry": table([*BASE[:2], "- lvsguard-reused 2\n", *BASE[3:]]),
    "a control character": table([entry(1), entry(2).replace("wrr", "w\x07rr"), *BASE[2:]]),
    "a YAML error": table([*BASE[:2], "- name: [svc\n", *BASE[3:]]),
    "lines added above a bad entry": "# one\n# two\n" + table([*BASE[:3], "- name: svc9\n  sevrice: x\n"]),
}


@pytest.mark.parametrize("second", BAD.values(), ids=BAD.keys())
def test_a_bad_config_at_reload_has_every_problem_where_a_whole_load_finds_it(second: str) -> None:
    _, _, got = reloaded(second)
    assert got[0] == "refused"
    assert got == alone(second)


def test_a_placeholder_written_by_hand_is_no_placeholder() -> None:
    second = table([*BASE[:2], "- !lvsguard-reused 2\n", *BASE[3:]])
    reuse = Reuse()
    config.loads(FIRST, FILE, reuse=reuse)
    with pytest.raises(Exception) as reloaded:
        config.loads(second, FILE, reuse=reuse)
    with pytest.raises(Exception) as whole:
        config.loads(second, FILE)
    assert (type(reloaded.value), str(reloaded.value)) == (type(whole.value), str(whole.value))


def test_a_refused_reload_leaves_what_the_next_one_reuses_sound() -> None:
    reuse, before, refused = reloaded(BAD["a bad weight"])
    assert refused[0] == "refused" and before is not None
    second = CHANGES["one weight"]
    assert outcome(lambda: config.loads(second, FILE, reuse=reuse)) == alone(second)


def test_the_cut_follows_the_list_not_a_look_alike() -> None:
    text = table(BASE, head="director: {netns: x}\n", tail="probes:\n  checks: []\n# services:\n")
    found = cut(text)
    assert found is not None
    assert found.entries == tuple(BASE)
    assert text[found.end :] == "probes:\n  checks: []\n# services:\n"
    assert cut("services: []\n") is None
    assert cut(table(BASE) + "services:\n- x\n") is None, "a duplicate key is the whole load's to report"
