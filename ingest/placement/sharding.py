"""Rendezvous (highest-random-weight) assignment of connections to connection-actor slots.

Each (connection, slot) pair gets a stable pseudo-random score; a connection goes to its best
slot. Adding or removing a slot moves only the connections whose best slot changed, which is the
minimum any scheme can move. Loads are kept in bounds by letting a connection fall to its next
best slot when the best one is already over ``(1 + slack)`` times the fair share; heavy connections
are placed first so the bound rarely bites.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


def score(connection_id: str, slot: str) -> int:
    h = hashlib.blake2b(f"{connection_id}|{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def preference(connection_id: str, slots: Sequence[str]) -> list[str]:
    return sorted(slots, key=lambda s: score(connection_id, s), reverse=True)


def assign_connections(
    weights: Mapping[str, float], slots: Sequence[str], slack: float | None = None
) -> dict[str, str]:
    """Map each connection id to a slot. ``slack=None`` is pure rendezvous (no load bound)."""
    if not slots:
        return {}
    if slack is None:
        return {c: preference(c, slots)[0] for c in weights}
    cap = (1.0 + slack) * sum(weights.values()) / len(slots)
    load = dict.fromkeys(slots, 0.0)
    out: dict[str, str] = {}
    for c in sorted(weights, key=lambda c: (-weights[c], c)):
        prefs = preference(c, slots)
        chosen = next((s for s in prefs if load[s] + weights[c] <= cap), prefs[0])
        out[c] = chosen
        load[chosen] += weights[c]
    return out
