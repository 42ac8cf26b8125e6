"""The whole config: its sections, in the order they are parsed, and ``load``/``loads``."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from os import PathLike
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from lvsguard.config.actuator import SECTION as ACTUATOR_SECTION
from lvsguard.config.actuator import ActuatorSettings
from lvsguard.config.cluster import CLUSTER, ClusterConfig
from lvsguard.config.director import DIRECTOR, DirectorConfig
from lvsguard.config.exporter import EXPORTER, ExporterConfig
from lvsguard.config.passive import PASSIVE, PassiveConfig
from lvsguard.config.probes import PROBES, ProbesConfig
from lvsguard.config.reuse import Reuse, Shortened, cut, entry_lines, matches, remember, services_node, shorten
from lvsguard.config.schema import Context, Key, Schema, is_null, kind_of, record, records, section
from lvsguard.config.services import SERVICE, NameIndex, ServiceConfig, named_services, reused_entry
from lvsguard.config.snmp import SECTION as SNMP_SECTION
from lvsguard.config.snmp import AgentSettings
from lvsguard.config.table import TABLE, TableSettings
from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.model import RealServerKey, ServiceKey
from lvsguard.table.desired import DesiredTable


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config. ``Config()`` is the config of no file: every default, no names."""

    director: DirectorConfig = DirectorConfig()
    table: TableSettings = TableSettings()
    exporter: ExporterConfig = ExporterConfig()
    services: tuple[ServiceConfig, ...] = ()
    actuator: ActuatorSettings | None = None  # section ``actuator`` (lvsguard.config.actuator); None: defaults
    probes: ProbesConfig = ProbesConfig()
    snmp: AgentSettings | None = None  # section ``snmp`` (lvsguard.config.snmp); None: no SNMP agent
    passive: PassiveConfig = PassiveConfig()
    cluster: ClusterConfig = ClusterConfig()
    file: str = ""  # where it was loaded from ("" for Config())
    desired: DesiredTable = field(
        default=DesiredTable(), compare=False
    )  # derived from `services`; used with table.manage
    _names: NameIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        services = self.services
        index = NameIndex(
            lambda: ((s.name, s.service) for s in services),
            lambda: ((s.service, rs.name, rs.address) for s in services for rs in s.real_servers),
        )
        object.__setattr__(self, "_names", index)

    def service_name(self, key: ServiceKey) -> str:
        """The configured name of service ``key``; "" when it has none."""
        return self._names.service_name(key)

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        """The configured name of real server ``key`` of ``service``; "" when it has none."""
        return self._names.real_server_name(service, key)


SECTIONS: Mapping[str, Key] = {
    "director": Key(section(DIRECTOR), doc="Which IPVS table this director is."),
    "table": Key(
        section(TABLE),
        doc="Whether lvsguard owns the IPVS table: off by default, `services` only name what the kernel has "
        "(docs/table.md).",
    ),
    "services": Key(
        named_services(records(SERVICE, reused_entry)),
        doc="Names for virtual services and their real servers (labels, status, actuator targets).",
    ),  # before `exporter`, whose allow-list names them
    "exporter": Key(section(EXPORTER), doc="The Prometheus exporter, `lvsguard exporter` (docs/metrics.md)."),
    "actuator": ACTUATOR_SECTION,  # after `services`, whose names it resolves
    "snmp": SNMP_SECTION,
    "probes": Key(
        section(PROBES), doc="Health checks of the real servers (docs/probes.md)."
    ),  # after `services`, whose names its checks use
    "passive": Key(section(PASSIVE), doc="Passive detection of failed handshakes in the exporter (docs/probes.md)."),
    "cluster": Key(
        section(CLUSTER),
        doc="Where the state shared by several directors lives: `local` (default) or etcd (docs/cluster.md).",
    ),
}
"""The top-level sections, in the order they are parsed (a section may refer to one parsed before it)."""


# --- loading -----------------------------------------------------------------------


if TYPE_CHECKING:
    _Composer = yaml.SafeLoader
else:
    _Composer = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Composer):
    """libyaml's composer where PyYAML has it: its nodes keep the same marks, 6-9x faster (3 s to 0.5 s for a
    table of 10 000 real servers, which the actuator loads again on each reload).

    The tag of a plain scalar is remembered per text: a big table repeats its keys (``address``,
    ``weight``) thousands of times, and PyYAML's resolver tries its regular expressions on each.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[str, tuple[bool, bool]], str] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        resolve: Callable[[type[Node], Any, tuple[bool, bool]], str] = super().resolve
        if kind is not ScalarNode or self.resolver_exact_paths:
            return resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = resolve(kind, value, implicit)
        return tag


def loads(text: str, filename: str = "<string>", *, reuse: Reuse | None = None) -> Config:
    """Parse and validate a config; raises ConfigError with every problem found.

    ``reuse`` (a daemon's, kept across its reloads): the ``services`` entries
    whose text the last load that went through had are not parsed again
    (``lvsguard.config.reuse``); the result and the problems are the same.
    """
    found = cut(text) if reuse is not None else None
    short = shorten(text, found, reuse) if found is not None and reuse is not None else None
    # The remembered entries passed this check in the load that took them: their placeholders' text is enough.
    _check_characters(short.text if short is not None else text, text, filename)
    with collector_paused():
        if reuse is None:
            return _loads(text, filename)[0]
        config = _loads_shortened(short, filename) if short is not None else None
        if config is None:
            config, root = _loads(text, filename)
            if found is None or not matches(services_node(root), entry_lines(text, found), {}):
                reuse.entries = {}
                return config
        assert found is not None
        remember(reuse, found, config.services, config.desired.services)
        return config


def _check_characters(checked: str, text: str, filename: str) -> None:
    """Refuse control characters before any parsing (``checked`` is ``text`` or its shortened copy)."""
    try:
        yaml.reader.Reader(checked)
    except yaml.reader.ReaderError as exc:
        if checked is not text:
            _check_characters(text, text, filename)  # the same character, at its place in the file
        raise ConfigError([_reader_problem(filename, text, exc)]) from None


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a config loads.

    A load makes hundreds of thousands of objects (nodes, then the table), none
    of them garbage, and each few hundred trigger a collection that walks every
    live object: half of the load of a table of 10 000 real servers, more in an
    actuator that holds the running table. Refcounting still frees as usual; a
    collection runs after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loads(text: str, filename: str) -> tuple[Config, Node | None]:
    """The config and the root node of its text."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError:
            root = _compose_slowly(text, filename)  # raises the error in PyYAML's words
    finally:
        loader.dispose()
    if root is None or is_null(root):
        return Config(file=filename), root
    ctx = Context(filename)
    if isinstance(root, MappingNode):
        config = _sections(root, filename, ctx)
    else:
        ctx.problem(root, "", f"a config is a mapping of sections ({', '.join(SECTIONS)}), got {kind_of(root)}")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config, root


def _sections(root: MappingNode, filename: str, ctx: Context) -> Config:
    build = partial(_build, file=filename, ctx=ctx)
    config: Config = record(root, "", Schema(build, SECTIONS, check=_check_sections), ctx)[0]
    return config


def _loads_shortened(short: Shortened, filename: str) -> Config | None:
    """The config of a text whose unchanged ``services`` entries are placeholders; None: load the whole text.

    None when the parse does not give the entries as they were cut, or on any
    problem: the whole load then reports it in its own words and places.
    """
    loader = _Loader(short.text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    if not isinstance(root, MappingNode) or not matches(services_node(root), short.lines, short.reused):
        return None
    ctx = Context(filename)
    ctx.reused = short.reused
    config = _sections(root, filename, ctx)
    return None if ctx.problems else config


def _compose_slowly(text: str, filename: str) -> Node | None:
    """PyYAML's own composer: a file libyaml refused gets the error text the docs show, with its line and column."""
    loader = yaml.SafeLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(filename, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(filename, 0, 0, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()


def _build(*, file: str, ctx: Context, **sections: Any) -> Config:
    """The Config of the parsed sections, with the desired table ``services`` left in the load's context."""
    return Config(file=file, desired=ctx.desired or DesiredTable(), **sections)


def _check_sections(config: Config) -> Iterator[tuple[str, str]]:
    """Problems between sections: the cluster's table needs the cluster store and management."""
    if config.table.source == "cluster":
        if not config.cluster.shared:
            yield "table.source", "cluster needs cluster.store: etcd (the cluster's table lives in etcd)"
        if not config.table.manage:
            yield "table.source", "cluster needs table.manage: true (the cluster's table is applied to the kernel)"


def _reader_problem(filename: str, text: str, exc: yaml.reader.ReaderError) -> ConfigProblem:
    """A character YAML does not allow (NUL, other control characters), at its line and column."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - text.rfind("\n", 0, exc.position)
    shown = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
    return ConfigProblem(filename, line, column, "", f"character {shown} is not allowed in YAML ({exc.reason})")


def _syntax_problem(filename: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    return ConfigProblem(filename, line, column, "", message)


def load(path: str | PathLike[str], *, reuse: Reuse | None = None) -> Config:
    """Read and validate the config file at ``path``; every failure is a ConfigError naming the file.

    ``reuse``: what the last load parsed, for a daemon's reload (``loads``).
    """
    filename = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([ConfigProblem(filename, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigProblem(filename, line, 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None
    return loads(text, filename, reuse=reuse)
