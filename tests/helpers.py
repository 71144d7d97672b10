"""Shared test helpers (they live with the simulators, in ingest.simulators.fleet, which the
benches and scenarios use too)."""

from ingest.simulators.fleet import (  # noqa: F401
    GAP_QUALITY,
    SimProcess,
    counting_check,
    counting_check_with_gaps,
    db_fetch,
    wait_for,
)
