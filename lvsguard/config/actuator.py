"""Section ``actuator``: the actuator's settings (docs/actuator.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from yaml.nodes import MappingNode, Node

from lvsguard.config.schema import Context, Invalid, Recorded, is_text, join, kind_of, node_at, suggest

if TYPE_CHECKING:
    from actuator.settings import ActuatorSettings


def actuator_section(node: Node, path: str, ctx: Context) -> ActuatorSettings:
    """Section ``actuator``: validated by the actuator's own settings module.

    ``actuator.settings.from_mapping`` owns the keys (docs/actuator.md); this
    hands it the section as plain data with the names of ``services``, and puts
    each of its problems back at its position in the file.
    """
    from actuator.settings import Names, SettingsError, from_mapping  # the actuator owns its section

    if not isinstance(node, MappingNode):
        raise Invalid(f"must be a mapping, got {kind_of(node)}")
    data = ctx.loader.construct_document(node)
    names = Names(
        services=dict(ctx.service_names),
        real_servers={s.service: {rs.name: rs.address for rs in s.real_servers} for s in ctx.services},
    )
    allowed = {s.service: frozenset(rs.address for rs in s.real_servers) for s in ctx.services if s.real_servers}
    try:
        return from_mapping(data, names=names, real_servers_allowed=allowed)
    except SettingsError as exc:
        for key_path, message in exc.problems:
            unknown = message.startswith("unknown key")
            target = node_at(node, key_path, key=unknown)
            if unknown:
                known = [k.value for k, _ in node.value if is_text(k)]
                message += suggest(key_path.rsplit(".", 1)[-1], _settings_keys()) if key_path in known else ""
            ctx.problem(target, join(path, key_path), message)
        raise Recorded() from None


def _settings_keys() -> tuple[str, ...]:
    from actuator.settings import KEYS

    return KEYS
