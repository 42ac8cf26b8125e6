"""Section ``table`` and the table keys of ``services``: whether lvsguard owns the IPVS table, and what it holds.

The ``table`` section (``manage``, ``prune``) is read by the driver like
every other. The table keys of a ``services`` entry (``scheduler``,
``persistence``, ``weight``, ``tunnel``...) are declared in the services'
schemas so that the driver knows them (an unknown key is still an error, the
reference documents them), but their values are checked once, by
``lvsguard.table.load``, which turns the whole ``services`` list into the
desired table. ``check_table`` runs it over the ``services`` node and records
each of its (path, message) problems at its node, as a ``ConfigProblem`` with
file and line, unless the driver already reported one at that path.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lvsguard.config.reuse import TAG as REUSED
from lvsguard.config.schema import Context, Invalid, Key, Schema, boolean, choice, duration_range, is_null
from lvsguard.table.desired import DesiredTable
from lvsguard.table.load import DRIFT_POLICIES, TABLE_SOURCES, TableSettings, load_table
from lvsguard.table.plan import PRUNE_POLICIES

__all__ = [
    "TABLE",
    "TableSettings",
    "check_table",
    "forward_method",
    "persistence_spec",
    "scheduler_flag_list",
    "scheduler_name",
    "threshold",
    "tunnel_spec",
    "weight_value",
]

TABLE = Schema(
    TableSettings,
    {
        "manage": Key(
            boolean,
            doc="`true`: `services` describe the kernel's IPVS table and the actuator makes the kernel match them "
            "(docs/table.md). `false`: `services` only name what the kernel has.",
        ),
        "prune": Key(
            choice(PRUNE_POLICIES),
            doc="A kernel entry not in the config: `owned` removes it only when lvsguard created it (recorded in "
            "the ledger); `exact` removes it whoever made it.",
        ),
        "drift": Key(
            choice(DRIFT_POLICIES),
            doc="A hand change (`ipvsadm`) to a managed entry: `report` leaves it as it is and reports it (a log "
            "line, `lvsguard_table_drift`); `correct` also puts the config's back at once (docs/table.md).",
        ),
        "drift_interval": Key(
            duration_range(86400.0, zero=True),
            doc="How often the actuator compares the managed services in the kernel with the config; 0: never.",
        ),
        "source": Key(
            choice(TABLE_SOURCES),
            doc="Where the table comes from: `config`: this file's `services`; `cluster`: the cluster's desired "
            "table in etcd (`lvsguard apply --cluster`), with `cluster.store: etcd`; this file's `services` then "
            "only give names and probes (docs/cluster.md).",
        ),
    },
)


_STR, _INT, _BOOL, _NULL = (f"tag:yaml.org,2002:{name}" for name in ("str", "int", "bool", "null"))
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_SCALARS = yaml.constructor.SafeConstructor()
"""Only its stateless scalar constructors are used (int, bool): shared by every load."""


class _Unbuildable(Invalid):
    """A value YAML cannot build, with the position of the node at fault (which may lie below the key's)."""

    def __init__(self, message: str, mark: Any):
        super().__init__(message)
        self.node = ScalarNode(_STR, "", start_mark=mark)


class _Unusual(Exception):
    """A node ``_plain`` leaves to PyYAML's constructor: another tag, a merge key, a key that is not a scalar."""


def _data(node: Node) -> Any:
    """The Python value of a node, as ``yaml.safe_load`` gives it; ``lvsguard.table.load`` checks it.

    Plain mappings, lists, strings, integers, booleans and nulls (a whole table of
    10 000 real servers) are built directly, 4x faster than PyYAML's constructor,
    which builds the rest (and raises its errors).
    """
    try:
        return _plain(node, 0)
    except _Unusual:
        pass
    try:
        return yaml.constructor.SafeConstructor().construct_document(node)
    except yaml.constructor.ConstructorError as exc:  # a tag PyYAML's safe loader does not know (`!foo`)
        raise _Unbuildable(exc.problem or "a value YAML cannot build", exc.problem_mark or node.start_mark) from None
    except Exception as exc:  # an explicit tag on a value that is not one (`!!float abc`): PyYAML raises anything
        raise Invalid(f"a value YAML cannot build: {exc}") from None


def _plain(node: Node, depth: int) -> Any:
    tag = node.tag
    if tag == _STR and isinstance(node, ScalarNode):
        return node.value
    if depth > 64:  # an alias of a node that contains it: PyYAML's constructor knows those
        raise _Unusual
    if tag == _MAP and isinstance(node, MappingNode):
        out = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or key.tag not in (_STR, _INT, _BOOL, _NULL):
                raise _Unusual  # a merge key (<<), or a key PyYAML may refuse
            out[_plain(key, depth + 1)] = _plain(value, depth + 1)
        return out
    if tag == _SEQ and isinstance(node, SequenceNode):
        return [_plain(item, depth + 1) for item in node.value]
    if tag == _INT and isinstance(node, ScalarNode):
        try:
            return _SCALARS.construct_yaml_int(node)
        except (ValueError, IndexError):  # `!!int abc`, `!!int ''`: the tag forced a string that is no integer
            raise Invalid(f"{node.value!r} is not an integer") from None
    if tag == _BOOL and isinstance(node, ScalarNode):
        try:
            return _SCALARS.construct_yaml_bool(node)
        except KeyError:  # `!!bool maybe`
            raise Invalid(f"must be true or false, got {node.value!r}") from None
    if tag == _NULL and isinstance(node, ScalarNode):
        return None
    raise _Unusual


# One parser per table key, each only carrying the value to ``check_table``; their names give the
# reference its type column (``lvsguard.configdoc.PARSER_TYPES``).


def scheduler_name(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def scheduler_flag_list(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def persistence_spec(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def forward_method(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def weight_value(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def threshold(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def tunnel_spec(node: Node, path: str, ctx: Context) -> Any:
    return _data(node)


def check_table(node: Node, path: str, ctx: Context) -> DesiredTable:
    """The desired table of the ``services`` node; its problems recorded in ``ctx`` at their nodes.

    A problem at a path where the driver already recorded one (a bad address,
    a duplicate service, an unknown key) is the same problem seen twice: it is
    dropped.
    """
    if is_null(node):
        return DesiredTable()
    try:
        data = _data(node) if not ctx.reused else [_entry_data(item, ctx) for item in node.value]
    except Invalid as exc:  # a value YAML cannot build: its key's own parser recorded it, unless it had none
        if not ctx.problems:
            ctx.problem(exc.node if isinstance(exc, _Unbuildable) else node, path, str(exc))
        return DesiredTable()
    _, desired, problems = load_table({"services": data})
    reported = {p.key for p in ctx.problems}
    for key, message in problems:
        if key in reported or message.startswith("unknown key"):
            continue
        ctx.problem(_node_at(node, key.removeprefix(path)), key, message)
    return desired


def _entry_data(item: Node, ctx: Context) -> Any:
    """An entry's data, or its desired service when it is a placeholder of ``lvsguard.config.reuse``."""
    return ctx.reused[int(item.value)].desired if item.tag == REUSED else _data(item)


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _node_at(root: Node, path: str) -> Node:
    """The deepest node ``path`` (``[0].real_servers[2].weight``) reaches from ``root``."""
    node = root
    for name, index in _SEGMENT.findall(path):
        nxt: Node | None = None
        if name and isinstance(node, MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == name), None)
        elif index and isinstance(node, SequenceNode) and int(index) < len(node.value):
            nxt = node.value[int(index)]
        if nxt is None:
            return node
        node = nxt
    return node
