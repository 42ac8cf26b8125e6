"""Enter a named network namespace for the current thread only.

A socket (netlink or inet) and a /proc/thread-self/net file stay bound to the
namespace they were opened in, so a reader opens them inside the namespace once
and uses them from any thread afterwards. ``setns(2)`` on a network namespace
changes only the calling thread, which is why this is a context manager that
always switches back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

from lvsguard.errors import NamespaceError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add NAME` bind-mounts the namespace

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int, name: str) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        try:
            os.setns(fd, CLONE_NEWNET)
        except OSError as exc:
            raise NamespaceError(name, exc.strerror or str(exc)) from None
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(name, os.strerror(err))


def netns_path(name: str) -> str:
    """A bare name means /run/netns/NAME (as `ip netns`); a path is used as it is."""
    return name if "/" in name else os.path.join(NETNS_RUN_DIR, name)


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name`` (None: stay where we are)."""
    if not name:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(name, f"cannot open {netns_path(name)}: {exc.strerror}") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(target)
        raise NamespaceError(name, f"cannot open this thread's namespace: {exc.strerror}") from None
    try:
        _setns(target, name)
        try:
            yield
        finally:
            _setns(home, "(original)")
    finally:
        os.close(target)
        os.close(home)


def proc_net_path(name: str) -> str:
    """Path of a /proc/net file as this thread sees it (valid inside ``entered``)."""
    return os.path.join("/proc/thread-self/net", name)
