"""Errors name the object they are about, the way an operator writes it."""

from __future__ import annotations

import pytest

from lvsguard.errors import ConfigError, ConfigProblem, KernelError, NamespaceError, NoSuchDestination, NoSuchService
from lvsguard.model import RealServerKey, ServiceKey

SVC = ServiceKey.parse("TCP 192.0.2.10:80")
RS = RealServerKey.parse("10.0.1.2:80")


@pytest.mark.parametrize(
    "exc, message",
    [
        (
            NoSuchDestination("no such destination", service=SVC, real_server=RS, errno=2),
            "real server 10.0.1.2:80 of TCP 192.0.2.10:80: no such destination",
        ),
        (NoSuchService("no such service", service=SVC, errno=3), "service TCP 192.0.2.10:80: no such service"),
        (KernelError("netlink socket closed"), "netlink socket closed"),
        (
            NamespaceError("lvs-dir9", "No such file or directory"),
            "network namespace 'lvs-dir9': No such file or directory",
        ),
    ],
    ids=["destination", "service", "no-object", "namespace"],
)
def test_message_names_the_object(exc: Exception, message: str) -> None:
    assert str(exc) == message


def test_kernel_error_keeps_its_objects() -> None:
    exc = NoSuchDestination("no such destination", service=SVC, real_server=RS, errno=2)
    assert (exc.service, exc.real_server, exc.errno, exc.reason) == (SVC, RS, 2, "no such destination")


def test_config_error_sorts_every_problem() -> None:
    exc = ConfigError(
        [
            ConfigProblem("a.yaml", 9, 3, "exporter.listen", "bad"),
            ConfigProblem("a.yaml", 2, 1, "services[0].name", "missing"),
        ]
    )
    assert str(exc).splitlines() == ["a.yaml:2:1: services[0].name: missing", "a.yaml:9:3: exporter.listen: bad"]


def test_every_error_is_in_the_tree_and_the_tree_names_only_errors() -> None:
    """The docstring's tree is the map of every public error: a class missing from it, or a name drawn there
    that is no class of the module, fails."""
    import inspect
    import re

    from lvsguard import errors

    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__ or "")) | {"LvsguardError"}
    assert sorted(classes ^ drawn) == []
    assert all(issubclass(getattr(errors, name), errors.LvsguardError) for name in classes)
