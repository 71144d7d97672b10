"""Sizing and naming the connection-actor pool from the nodes Ray reports and the load to carry."""

from __future__ import annotations

import math
from collections.abc import Sequence


def actors_per_node(total_tags: int, nodes: int, tags_per_actor: int, max_per_node: int) -> int:
    """Enough actors that none carries more than ``tags_per_actor`` tags, within the cap."""
    if nodes <= 0:
        return 0
    need = math.ceil(total_tags / max(1, tags_per_actor))
    return max(1, min(max_per_node, math.ceil(need / nodes)))


def slot_name(node_id: str, index: int) -> str:
    # The node's id prefix keeps a slot on its node: a node that leaves takes its slots along,
    # a node that joins brings new ones, and rendezvous hashing moves only what must move.
    return f"conn-{node_id[:8]}-{index}"


def desired_slots(node_ids: Sequence[str], per_node: int) -> dict[str, str]:
    """slot name -> node id."""
    return {slot_name(n, i): n for n in sorted(node_ids) for i in range(per_node)}
