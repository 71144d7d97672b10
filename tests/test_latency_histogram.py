"""The writer's source-to-commit histogram: small flushes are counted one by one, large ones in a
single pass over the buckets; both give the counts a plain tally gives."""

from __future__ import annotations

import numpy as np

from ingest.write.stats import SMALL, LatencyHistogram


def test_small_and_large_adds_count_like_a_plain_tally() -> None:
    rng = np.random.default_rng(3)
    h = LatencyHistogram(max_ms=1000)
    expected = np.zeros(1001, np.int64)
    for n in (1, 20, 20, SMALL - 1, SMALL, 3 * SMALL):
        us = rng.integers(-5_000, 2_000_000, n)  # below zero and past the top are clipped
        us[:3] = 7_999  # repeats within one add count each time
        h.add(us)
        for ms in np.clip(us // 1000, 0, 1000):
            expected[ms] += 1
    assert np.array_equal(h.counts, expected)
    cum = np.cumsum(expected)
    assert h.percentile(50) == float(np.searchsorted(cum, 0.5 * cum[-1]))
