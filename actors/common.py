"""Names and options shared by the actors, and the rule every actor's methods follow."""

from __future__ import annotations

COORDINATOR_NAME = "coordinator"


def writer_name(tenant_slug: str) -> str:
    return f"writer-{tenant_slug}"


# Health checks get their own concurrency group so a busy actor still answers them.
#
# THE CONCURRENCY RULE. Ray runs each concurrency group of an async actor on its own event loop,
# in its own thread. So:
# - A "health" method reads plain snapshots only: attributes holding numbers, strings, or dicts
#   the data loop replaces whole (never mutates in place). It awaits nothing and touches no
#   client, pool, lock, event or task; those belong to the loop that created them.
# - Everything that awaits I/O (PostgreSQL, Redis, other actors, devices), or uses an object
#   created on the data loop, is a "data" method. Clients, pools, locks and events are created
#   on the data loop, by data methods or tasks they start.
# - Where a health method must reach the data loop (the coordinator's `notify` waking its
#   reconcile loop), it crosses explicitly with `loop.call_soon_threadsafe`.
# Breaking this gave a 500 on the quarantine route ("got Future attached to a different loop")
# and lost wake-ups. tests/test_actor_concurrency.py calls every remote method of every actor on
# a fresh actor, health methods first.
CONCURRENCY_GROUPS = {"health": 2, "data": 64}
