"""ingest.core.backoff.Backoff: the one retry delay policy (no services)."""

from __future__ import annotations

import random

import pytest

from ingest.core.backoff import Backoff


def test_delays_double_from_initial_up_to_the_cap() -> None:
    b = Backoff(0.5, 4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.failures == 6


def test_reset_starts_again_from_initial() -> None:
    b = Backoff(0.2, 10.0, jitter=0.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.failures == 0
    assert b.next_delay() == 0.2


def test_jitter_stays_within_its_fraction_below_the_base() -> None:
    random.seed(7)
    b = Backoff(1.0, 8.0, jitter=0.5)
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        d = b.next_delay()
        assert 0.5 * base <= d <= base
    many = []
    for _ in range(200):
        b.reset()
        many.append(b.next_delay())
    assert min(many) >= 0.5 and max(many) <= 1.0
    # Spread, not one value: clients failing together do not retry in lockstep.
    assert max(many) - min(many) > 0.25


def test_a_long_outage_never_overflows_the_cap() -> None:
    b = Backoff(0.1, 30.0, jitter=0.0)
    for _ in range(2000):  # 2**2000 would overflow a float without the cap
        d = b.next_delay()
    assert d == 30.0


@pytest.mark.parametrize(
    ("initial", "cap", "jitter"),
    [
        (0.0, 1.0, 0.5),
        (-1.0, 1.0, 0.5),
        (2.0, 1.0, 0.5),
        (0.1, 1.0, 1.0),
        (0.1, 1.0, -0.1),
    ],
)
def test_bad_arguments_are_refused_up_front(initial: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, cap, jitter=jitter)
