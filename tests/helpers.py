"""Shared test helpers (most live with the simulators, in ingest.simulators.fleet, which the
benches and scenarios use too)."""

import asyncio
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from ingest.simulators.fleet import (  # noqa: F401
    GAP_QUALITY,
    SimProcess,
    counting_check,
    counting_check_with_gaps,
    db_fetch,
    wait_for,
)


async def wait_until(cond: Callable[[], Any], what: str, timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    """``wait_for`` for async tests: poll ``cond()`` on the event loop until it is truthy; fail
    after ``timeout_s`` (a guard against hanging, not a timed assert)."""
    deadline = time.monotonic() + timeout_s
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {timeout_s:.0f} s for: {what}")
        await asyncio.sleep(every_s)
    return v


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def quiet_ports(n: int, lo: int = 20000, hi: int = 30000) -> list[int]:
    """``n`` distinct ports, free now and outside the kernel's ephemeral range, for servers a test
    stops and starts again on the same port. A fixed port inside that range (Redis's 55902 once)
    can be taken meanwhile as the source port of any outgoing connection the busy suite opens."""
    e_lo, e_hi = _ephemeral_range()
    candidates = [p for p in range(lo, hi) if not (e_lo <= p <= e_hi)]
    random.shuffle(candidates)
    found: list[int] = []
    for port in candidates[:500]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no free port in {lo}..{hi} outside the ephemeral range {e_lo}..{e_hi}")
