"""Shared test helpers (they live in scale_tests.fleet, which the scenarios use too)."""

from scale_tests.fleet import (  # noqa: F401
    GAP_QUALITY,
    SimProcess,
    counting_check,
    counting_check_with_gaps,
    db_fetch,
    wait_for,
)
