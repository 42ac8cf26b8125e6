"""What the kernel tests share to talk to the lab's HTTP services and to wait for them.

The actuator, the exporter and keepalived act on clocks of their own (jobs,
probe intervals, VRRP adverts, the kernel's 2-second counters), so a test polls
until what it expects holds, and a timeout says what it waited for and, with
``detail``, what was there instead.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any


def json_request(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of one request; an HTTP error status is an answer too, not an exception."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float = 15.0,
    detail: Callable[[], str] | None = None,
    step: float = 0.05,
) -> Any:
    """Call ``check`` every ``step`` s until it returns something truthy, and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}" + (f"\n{detail()}" if detail else "")
            )
        time.sleep(step)
