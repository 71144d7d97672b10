"""Moves between live slots, and the order the coordinator tells the slots about them.

A connection that moves from one live slot to another is passed on: the old slot lets it go
first (an OPC UA session leaves its subscription on the server once what it delivered is
committed, ``ingest.device.host``), then the new slot takes it over. Slots taking over nothing
from a live slot (a lost node's connections, new ones) are told at once, so a node loss waits for
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MovePlan", "Round", "apply_rounds", "plan_moves"]

Round = list[tuple[str, list[str], list[str]]]  # (slot, connections it runs, those it passes on)


@dataclass(frozen=True)
class MovePlan:
    """How live slots let go of the connections that move away from them."""

    # slot -> (connections it keeps, connections it passes on to another live slot)
    leave: dict[str, tuple[list[str], list[str]]]
    # slot -> {connection: fingerprint} it runs once it has let go
    have_after: dict[str, dict[str, str]]
    # slots taking over a connection another live slot passes on: they apply after those
    waiting: set[str]


def plan_moves(
    fingerprints: Mapping[str, str], assignment: Mapping[str, str], have: Mapping[str, Mapping[str, str]]
) -> MovePlan:
    """``fingerprints``: every connection wanted; ``assignment``: where each goes; ``have``: what
    each live slot runs now (connection -> fingerprint). A connection moves between live slots
    (and is passed on) when a slot runs it unedited but it is assigned elsewhere. Deleted or
    edited connections are not passed on: the slot running them stops them while letting go."""
    leave: dict[str, tuple[list[str], list[str]]] = {}
    for slot, conns in have.items():
        passing = [c for c, fp in conns.items() if assignment.get(c, slot) != slot and fingerprints.get(c) == fp]
        if passing:
            keep = [c for c, fp in conns.items() if assignment.get(c) == slot and fingerprints.get(c) == fp]
            leave[slot] = (keep, passing)
    have_after = {slot: {c: have[slot][c] for c in keep} for slot, (keep, _) in leave.items()}
    waiting = {assignment[c] for _, passing in leave.values() for c in passing}
    return MovePlan(leave, have_after, waiting)


def apply_rounds(
    fingerprints: Mapping[str, str],
    assignment: Mapping[str, str],
    have: Mapping[str, Mapping[str, str]],
    slots: Sequence[str],
) -> tuple[Round, Round]:
    """What to tell which slot, in two rounds: first the slots letting connections go (and those
    taking over nothing from them), then the slots taking over what the first round let go.
    ``slots``: the healthy slots connections are assigned to; a slot is told only when what it
    should run differs from what it runs (or will run, once it has let go)."""
    plan = plan_moves(fingerprints, assignment, have)
    wanted: dict[str, list[str]] = {s: [] for s in slots}
    for c, s in assignment.items():
        wanted[s].append(c)
    after_first = plan.waiting | plan.leave.keys()
    first: Round = [(slot, keep, passing) for slot, (keep, passing) in plan.leave.items()]
    later: Round = []
    for slot, conns in wanted.items():
        if {c: fingerprints[c] for c in conns} == plan.have_after.get(slot, have.get(slot)):
            continue
        (later if slot in after_first else first).append((slot, conns, []))
    return first, later
