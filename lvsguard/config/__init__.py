"""The config file: YAML in, frozen validated objects out.

Everything is checked at load, before any socket opens, and every problem is
reported at once, sorted, in one ``ConfigError``; each names the file, line,
column and key::

    lvsguard.yaml:14:7: services[0].real_servers[2].adress: unknown key; did you mean 'address'?

One module per section (``director``, ``services``, ``exporter``,
``actuator``, ``snmp``, ``probes``, ``table``, ``passive``, ``cluster``), each a frozen dataclass and the
``Schema`` it is read with; ``schema`` is the one driver they all go through
and ``loader`` puts the sections together. Adding a section is a module, a
line in ``loader.SECTIONS`` and, when others need its names, a re-export
here. The YAML keys are the dataclass field names. Nothing reads raw YAML
after ``load``: the result is a ``Config`` of frozen dataclasses.
"""

from lvsguard.config.cluster import CLUSTER, ClusterConfig
from lvsguard.config.director import DIRECTOR, DirectorConfig
from lvsguard.config.exporter import DEFAULT_LISTEN, EXPORTER, ExporterConfig
from lvsguard.config.loader import SECTIONS, Config, load, loads
from lvsguard.config.probes import (
    CHECK,
    CHECK_COMMON,
    CHECK_KEYS,
    CHECK_REQUIRED,
    CHECK_TYPES,
    PROBES,
    PUBLISH,
    CheckConfig,
    ProbesConfig,
    PublishConfig,
    check_entry,
)
from lvsguard.config.schema import Invalid, Key, Parser, Schema, integer, text
from lvsguard.config.services import REAL_SERVER, SERVICE, RealServerConfig, ServiceConfig
from lvsguard.config.table import TABLE, TableSettings
from lvsguard.errors import ConfigError, ConfigProblem

__all__ = [
    "CHECK",
    "CLUSTER",
    "CHECK_COMMON",
    "CHECK_KEYS",
    "CHECK_REQUIRED",
    "CHECK_TYPES",
    "DEFAULT_LISTEN",
    "DIRECTOR",
    "EXPORTER",
    "PROBES",
    "PUBLISH",
    "REAL_SERVER",
    "SECTIONS",
    "SERVICE",
    "TABLE",
    "CheckConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DirectorConfig",
    "ExporterConfig",
    "Invalid",
    "Key",
    "Parser",
    "ProbesConfig",
    "PublishConfig",
    "RealServerConfig",
    "Schema",
    "ServiceConfig",
    "TableSettings",
    "check_entry",
    "integer",
    "load",
    "loads",
    "text",
]
