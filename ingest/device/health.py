"""A connection's health as a plant engineer reads it, from what its host saw of the session.

CONNECTING   no session yet, or the first connect is under way and has not failed
CONNECTED    the session is up (every monitored item created)
DEGRADED     up, but some items the server refused; or it streamed before and is reconnecting
             (for less than ``RECONNECT_GRACE_S``)
FAILED       it cannot start (its reason in ``error``), or cannot connect and is retrying
DISABLED     the connection is switched off (the API knows this; a host never runs it)
IDLE         it has no tags: nothing to read, so no session and nothing that can fail
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Health = Literal["CONNECTING", "CONNECTED", "DEGRADED", "FAILED", "DISABLED", "IDLE"]
RECONNECT_GRACE_S = 60.0


def session_health(
    state: str, error: str | None, stats: Mapping[str, Any], ever_connected: bool, down_for_s: float
) -> Health:
    """``state``: the host's (connecting / connected / disconnected / failed / idle); ``error``:
    the newest error since the session was last connected; ``down_for_s``: since it was."""
    if state == "failed":
        return "FAILED"
    if state == "idle":
        return "IDLE"
    if state == "connected":
        return "DEGRADED" if stats.get("failed_items", 0) else "CONNECTED"
    if error is None:
        return "CONNECTING"
    return "DEGRADED" if ever_connected and down_for_s < RECONNECT_GRACE_S else "FAILED"
