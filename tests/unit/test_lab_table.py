"""The lab's directors get their table from lvsguard's config: that config is the lab's services, exactly."""

from __future__ import annotations

import pytest

from lab.topology import Lab
from lvsguard import config
from lvsguard.model import VirtualService
from lvsguard.table.plan import plan


def essentials(svc: VirtualService) -> tuple[object, ...]:
    return (svc.key, svc.scheduler, svc.flags, tuple((rs.key, rs.weight, rs.forward) for rs in svc.real_servers))


@pytest.mark.parametrize("real_servers", [1, 3, 5])
def test_the_table_config_describes_every_service_and_weight_of_the_lab(real_servers: int) -> None:
    lab = Lab(real_servers)
    cfg = config.loads(lab.config_yaml(table=True), "lab.yaml")
    assert cfg.table.manage and cfg.table.prune == "owned"
    assert {essentials(svc) for svc in cfg.desired} == {essentials(s.config) for s in lab.services.values()}
    # A kernel holding exactly the lab's services is what the config asks for: nothing to do.
    assert plan(cfg.desired, [s.config for s in lab.services.values()], prune="owned").empty


def test_the_table_config_keeps_the_lab_names() -> None:
    lab = Lab()
    cfg = config.loads(lab.config_yaml(table=True), "lab.yaml")
    for service in lab.services.values():
        assert cfg.service_name(service.key) == service.name
        for key, node in service.backends:
            assert cfg.real_server_name(service.key, key) == node
