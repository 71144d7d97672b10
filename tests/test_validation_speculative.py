"""The writer folds a flush into the validator while its COPY runs; a failed transaction puts the
state back (ingest.write.speculative), so the retried flush is judged exactly as the first time.

Unit tests of the validator and its snapshot (no database); the writer tests cover the flush.
"""

from __future__ import annotations

import numpy as np

from ingest.write.rules import TagRules, ValidationSettings
from ingest.write.speculative import restore, snapshot
from ingest.write.validation import ValidationOutcome, Validator

T0 = 1_700_000_000_000_000
S = 1_000_000


def _rules() -> list[TagRules]:
    return [TagRules(tag_id=g, deadband=0.5, zscore_threshold=3.0) for g in range(1, 21)]


def _flush(seed: int, start_s: float, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (T0 + (start_s + np.arange(n) * 0.05) * S).astype(np.int64)
    g = rng.integers(1, 21, n).astype(np.int32)
    v = np.round(rng.normal(100, 2, n), 1)
    v[::37] = 500.0  # spikes for the anomaly step, once the statistics are warm
    return t, g, v, np.zeros(n, np.int32)


def _same(a: ValidationOutcome, b: ValidationOutcome) -> None:
    assert np.array_equal(a.keep, b.keep)
    assert np.array_equal(a.quality, b.quality)
    assert a.counts == b.counts


def test_a_failed_flush_leaves_the_validator_as_it_was() -> None:
    val = Validator(_rules(), ValidationSettings(zscore_min_samples=5))
    for i in range(5):  # running state: references, duplicate memory, statistics
        c = _flush(i, i * 20.0)
        val.commit(*c, val.check(*c))
    nxt = _flush(99, 100.0)
    first = val.check(*nxt)
    before = snapshot(val)
    val.commit(*nxt, first)  # the fold that ran beside a COPY that then failed
    # Folded: every row it wrote would now be a duplicate.
    assert val.check(*nxt).counts["duplicate"] == int(first.keep.sum()) > 0
    restore(val, before)
    _same(val.check(*nxt), first)  # the retry is judged as the first attempt was
    # ...and the state after committing it for real matches a validator that never failed.
    twin = Validator(_rules(), ValidationSettings(zscore_min_samples=5))
    for i in range(5):
        c = _flush(i, i * 20.0)
        twin.commit(*c, twin.check(*c))
    twin.commit(*nxt, twin.check(*nxt))
    val.commit(*nxt, val.check(*nxt))
    later = _flush(7, 200.0)
    _same(val.check(*later), twin.check(*later))


def test_a_rules_reload_in_between_forgets_the_running_state() -> None:
    val = Validator(_rules())
    c = _flush(1, 0.0)
    val.commit(*c, val.check(*c))
    before = snapshot(val)
    val.update_rules(_rules()[:10])  # a reload while the flush was in flight
    restore(val, before)
    # Like a restarted writer: no memory of written rows, so nothing is a duplicate.
    assert val.check(*c).counts["duplicate"] == 0
