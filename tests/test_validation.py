"""Validation before the COPY: which readings are written, with which quality, and why not.

Unit tests of one class (no database): each asserts what the writer would write and count.
A slow reference model (one Python step per reading) checks the vectorised validator on random
flush sequences.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import pytest

from ingest.core.models import Quality, quality_as_int4
from ingest.write.rules import TagRules, ValidationSettings
from ingest.write.validation import FLAG_REASONS, REJECT_REASONS, ValidationOutcome, Validator

GOOD = 0
UNCERTAIN = int(quality_as_int4(Quality.UNCERTAIN))
BAD = int(quality_as_int4(Quality.BAD))
BAD_OUT_OF_RANGE = int(quality_as_int4(Quality.BAD_OUT_OF_RANGE))
BAD_NO_COMM = int(quality_as_int4(Quality.BAD_NO_COMMUNICATION))
T0 = 1_700_000_000_000_000  # a source time in us
S = 1_000_000

Row = tuple[float, int, float] | tuple[float, int, float, int]  # (seconds, tag, value[, quality])
Cols = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def cols(rows: Sequence[Row]) -> Cols:
    t = np.array([T0 + round(r[0] * S) for r in rows], np.int64)
    g = np.array([r[1] for r in rows], np.int32)
    v = np.array([r[2] for r in rows], np.float64)
    q = np.array([r[3] if len(r) == 4 else GOOD for r in rows], np.int32)
    return t, g, v, q


def flush(val: Validator, rows: Sequence[Row]) -> ValidationOutcome:
    """What the writer does: check, write, then commit."""
    c = cols(rows)
    out = val.check(*c)
    val.commit(*c, out)
    return out


def assert_invariant(out: ValidationOutcome, n: int) -> None:
    assert set(out.counts) == set(REJECT_REASONS + FLAG_REASONS)
    assert int(out.keep.sum()) + out.rejected == n
    assert out.keep.shape == out.quality.shape == (n,)
    assert out.quality.dtype == np.int32


def test_out_of_range_flag_keeps_the_value_and_marks_it_bad() -> None:
    val = Validator([TagRules(1, valid_min=0.0, valid_max=100.0)])
    out = flush(val, [(0, 1, 50.0), (1, 1, 150.0), (2, 1, -1.0), (3, 1, 100.0)])
    assert out.keep.tolist() == [True, True, True, True]
    assert out.quality.tolist() == [GOOD, BAD_OUT_OF_RANGE, BAD_OUT_OF_RANGE, GOOD]
    assert out.counts["out_of_range_flagged"] == 2
    assert_invariant(out, 4)


def test_out_of_range_reject_removes_the_row() -> None:
    val = Validator([TagRules(1, valid_max=10.0, out_of_range="reject"), TagRules(2)])
    out = flush(val, [(0, 1, 5.0), (1, 1, 11.0), (1, 2, 1e9)])
    assert out.keep.tolist() == [True, False, True]
    assert out.counts["out_of_range_rejected"] == 1
    assert out.counts["out_of_range_flagged"] == 0
    assert_invariant(out, 3)


def test_a_row_the_source_already_marked_bad_is_not_judged_again() -> None:
    val = Validator([TagRules(1, valid_max=10.0, out_of_range="reject", deadband=100.0)])
    out = flush(val, [(0, 1, 5.0, BAD_NO_COMM), (1, 1, 50.0, BAD_NO_COMM)])
    assert out.keep.tolist() == [True, True]
    assert out.quality.tolist() == [BAD_NO_COMM, BAD_NO_COMM]
    assert out.rejected == 0


def test_nan_and_inf_are_kept_marked_bad_and_counted() -> None:
    val = Validator([TagRules(1, valid_min=0.0, valid_max=1.0, out_of_range="reject")])
    rows: list[Row] = [
        (0, 1, math.nan),
        (1, 1, math.inf),
        (2, 1, -math.inf),
        (3, 1, math.nan, UNCERTAIN),
        (4, 1, math.nan, BAD_NO_COMM),  # a gap marker: the source's own verdict stands
        (5, 99, math.nan),  # a tag without rules is still not written as a Good NaN
    ]
    c = cols(rows)
    out = val.check(*c)
    assert out.keep.all()  # never dropped, not even by the range rule
    assert out.quality.tolist() == [BAD, BAD, BAD, BAD, BAD_NO_COMM, BAD]
    assert out.counts["nan"] == 3 and out.counts["inf"] == 2
    assert out.counts["unknown_tag"] == 1
    assert np.isnan(c[2][0]) and np.isinf(c[2][1])  # values go to float8 as they came
    assert_invariant(out, len(rows))


def test_readings_of_a_tag_without_rules_are_kept_as_they_are() -> None:
    val = Validator([TagRules(1, deadband=10.0)])
    out = flush(val, [(0, 7, 1.0), (0, 7, 1.0), (1, 7, 1.5, UNCERTAIN)])
    assert out.keep.all()
    assert out.quality.tolist() == [GOOD, GOOD, UNCERTAIN]
    assert out.counts["unknown_tag"] == 3 and out.rejected == 0


def test_deadband_follows_source_time_not_row_order() -> None:
    val = Validator([TagRules(1, deadband=1.0), TagRules(2)])
    # source order: 10.0, 10.5, 11.2, 11.5, 12.1, 12.3; rows arrive shuffled, tag 2 mixed in
    rows: list[Row] = [
        (4, 1, 12.1),
        (0, 1, 10.0),
        (2, 1, 11.2),
        (0, 2, 10.0),
        (1, 1, 10.5),
        (5, 1, 12.3),
        (3, 1, 11.5),
        (1, 2, 10.1),
    ]
    out = flush(val, rows)
    kept = sorted(r[0] for r, k in zip(rows, out.keep, strict=True) if k and r[1] == 1)
    assert kept == [0, 2, 5]  # 10.0, then 11.2 (1.2 from 10.0), then 12.3 (1.1 from 11.2)
    assert out.counts["deadband"] == 3
    assert out.keep[3] and out.keep[7]  # tag 2 has no deadband
    assert_invariant(out, len(rows))


def test_deadband_carries_across_flushes_and_a_quality_change_passes() -> None:
    val = Validator([TagRules(1, deadband=1.0, zscore_threshold=None)])
    flush(val, [(0, 1, 10.0)])
    out = flush(val, [(1, 1, 10.5), (2, 1, 10.6, UNCERTAIN), (3, 1, 10.7), (4, 1, 10.8)])
    # 10.5 is within 1.0 of the committed 10.0; the Uncertain row is a quality change, and so is
    # the Good row after it; 10.8 is within 1.0 of 10.7.
    assert out.keep.tolist() == [False, True, True, False]
    out = flush(val, [(5, 1, 11.6), (6, 1, 11.8)])
    assert out.keep.tolist() == [False, True]  # measured from 10.7, the last row written


def test_deadband_reference_is_the_last_kept_value() -> None:
    val = Validator([TagRules(1, deadband=1.0, zscore_threshold=None)])
    out = flush(val, [(0, 1, 0.0), (1, 1, 0.6), (2, 1, 1.2), (3, 1, 1.8), (4, 1, 2.4)])
    # A ramp in 0.6 steps: compared with the last kept value, not the previous reading.
    assert out.keep.tolist() == [True, False, True, False, True]
    # A late reading (older than the committed reference) is written, not deadbanded.
    out = flush(val, [(0.5, 1, 0.1), (5, 1, 2.5)])
    assert out.keep.tolist() == [True, False]


def test_duplicates_within_one_flush_keep_the_first_occurrence() -> None:
    val = Validator([TagRules(1), TagRules(2)])
    out = flush(val, [(1, 1, 5.0), (0, 1, 4.0), (1, 1, 6.0), (1, 2, 7.0), (0, 1, 4.5)])
    assert out.keep.tolist() == [True, True, False, True, False]
    assert out.counts["duplicate"] == 2
    assert_invariant(out, 5)


def test_duplicates_across_flushes_within_and_beyond_the_window() -> None:
    val = Validator([TagRules(1), TagRules(2)], ValidationSettings(dedup_window_s=10.0))
    flush(val, [(0, 1, 1.0), (5, 1, 2.0), (5, 2, 3.0)])
    out = flush(val, [(0, 1, 1.0), (5, 1, 2.5), (5, 2, 3.0), (6, 1, 4.0)])
    assert out.keep.tolist() == [False, False, False, True]  # a resend with another value too
    assert out.counts["duplicate"] == 3
    # Tag 1 moves on to t=20 s; t=5 s is now beyond its 10 s window, while tag 2 still holds it.
    flush(val, [(20, 1, 5.0)])
    out = flush(val, [(5, 1, 2.0), (5, 2, 3.0), (10, 1, 6.0), (20, 1, 5.0)])
    assert out.keep.tolist() == [True, False, True, False]
    assert_invariant(out, 4)


def test_rows_dropped_by_a_rule_are_not_remembered_as_written() -> None:
    val = Validator([TagRules(1, valid_max=10.0, out_of_range="reject")])
    flush(val, [(0, 1, 50.0)])
    out = flush(val, [(0, 1, 5.0)])  # a corrected resend of a rejected reading is written
    assert out.keep.tolist() == [True]


def test_check_without_commit_leaves_state_alone_so_a_retried_flush_gets_the_same_outcome() -> None:
    rules = [TagRules(1, deadband=1.0, zscore_threshold=3.0), TagRules(2, valid_max=5.0)]
    settings = ValidationSettings(zscore_min_samples=5)
    val = Validator(rules, settings)
    flush(val, [(i, 1, 2.0 * (i % 2)) for i in range(20)])  # mean 1, sd 1, all written
    retry: list[Row] = [(20, 1, 9.0), (20, 2, 6.0), (21, 1, 1.5), (5, 1, 2.0), (22, 1, 1.6)]
    c = cols(retry)
    first = val.check(*c)  # the COPY fails: no commit
    second = val.check(*c)
    assert first.keep.tolist() == second.keep.tolist() == [True, True, True, False, False]
    assert first.quality.tolist() == second.quality.tolist()
    assert first.quality.tolist()[:3] == [UNCERTAIN, BAD_OUT_OF_RANGE, GOOD]
    assert first.counts == second.counts
    assert first.counts["anomaly"] == 1 and first.counts["duplicate"] == 1
    assert first.counts["deadband"] == 1 and first.counts["out_of_range_flagged"] == 1
    val.commit(*c, second)  # the retry lands
    again = val.check(*c)  # a third send: what was written is now a duplicate
    assert not again.keep.any()
    assert again.counts["duplicate"] == 4 and again.counts["deadband"] == 1


def test_zscore_flags_a_spike_after_warm_up_but_not_before() -> None:
    settings = ValidationSettings(zscore_window=100, zscore_min_samples=30)
    val = Validator([TagRules(1, zscore_threshold=4.0)], settings)
    rng = np.random.default_rng(1)
    early = flush(val, [(i, 1, float(rng.normal(50, 1))) for i in range(10)] + [(10, 1, 80.0)])
    assert early.counts["anomaly"] == 0  # 11 samples: no statistics yet
    flush(val, [(11 + i, 1, float(rng.normal(50, 1))) for i in range(40)])
    out = flush(val, [(60, 1, 80.0), (61, 1, 50.5), (62, 1, 20.0, BAD_NO_COMM)])
    assert out.quality.tolist() == [UNCERTAIN, GOOD, BAD_NO_COMM]
    assert out.keep.all()  # flagged, not dropped
    assert out.counts["anomaly"] == 1


def test_bad_and_nan_values_never_enter_the_statistics() -> None:
    settings = ValidationSettings(zscore_window=50, zscore_min_samples=10)
    val = Validator([TagRules(1, valid_max=1000.0)], settings)
    rng = np.random.default_rng(2)
    rows: list[Row] = [(i, 1, float(rng.normal(10, 1))) for i in range(40)]
    rows += [(40 + i, 1, 1e6, BAD_NO_COMM) for i in range(5)] + [(50, 1, math.nan)]
    rows += [(60 + i, 1, 5000.0) for i in range(5)]  # flagged out of range: Bad
    flush(val, rows)
    out = flush(val, [(70, 1, 10.5), (71, 1, 30.0)])
    assert out.quality.tolist() == [GOOD, UNCERTAIN]


def test_a_flat_signal_that_moves_is_not_scored() -> None:
    val = Validator([TagRules(1)], ValidationSettings(zscore_min_samples=5))
    flush(val, [(i, 1, 3.0) for i in range(50)])
    out = flush(val, [(50, 1, 4.0)])
    assert out.quality.tolist() == [GOOD]


def test_update_rules_keeps_the_state_of_remaining_tags() -> None:
    settings = ValidationSettings(zscore_window=50, zscore_min_samples=10)
    val = Validator([TagRules(1, deadband=1.0), TagRules(2, deadband=1.0), TagRules(3)], settings)
    rng = np.random.default_rng(3)
    flush(val, [(i, 3, float(rng.normal(0, 1))) for i in range(30)] + [(30, 1, 10.0), (30, 2, 10.0)])
    # Tag 2 is removed, tag 4 added, tag 1 edited (a range now), tag 3 unchanged.
    val.update_rules([TagRules(4), TagRules(3), TagRules(1, deadband=1.0, valid_max=100.0)])
    out = flush(val, [(30, 1, 10.0), (31, 1, 10.2), (30, 2, 10.0), (31, 2, 10.2), (31, 3, 25.0), (31, 4, 1.0)])
    assert out.keep.tolist() == [False, False, True, True, True, True]
    assert out.counts["duplicate"] == 1 and out.counts["deadband"] == 1
    assert out.counts["unknown_tag"] == 2  # tag 2 is gone and so is its state
    assert out.quality[4] == UNCERTAIN  # tag 3 kept its statistics
    # Re-adding tag 2 starts it from scratch.
    val.update_rules([TagRules(1), TagRules(2, deadband=1.0), TagRules(3)])
    out = flush(val, [(30, 2, 10.0), (32, 2, 10.3)])
    assert out.keep.tolist() == [True, False]


def test_rules_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match="valid_min"):
        TagRules(1, valid_min=5.0, valid_max=1.0)
    with pytest.raises(ValueError, match="deadband"):
        TagRules(1, deadband=-1.0)
    with pytest.raises(ValueError, match="repeat"):
        Validator([TagRules(1), TagRules(1)])
    with pytest.raises(ValueError, match="dedup_window_s"):
        ValidationSettings(dedup_window_s=-1)
    val = Validator([TagRules(1)])
    with pytest.raises(ValueError, match="one length"):
        val.check([1, 2], [1], [1.0], [0])


def test_empty_flushes_and_no_rules() -> None:
    val = Validator([])
    out = flush(val, [(0, 1, 1.0), (0, 1, math.nan)])
    assert out.keep.all() and out.counts["unknown_tag"] == 2
    assert out.quality.tolist() == [GOOD, BAD]
    val = Validator([TagRules(1, deadband=1.0)])
    out = val.check(*cols([]))
    assert out.keep.size == 0 and out.rejected == 0


def test_sparse_tag_ids_are_looked_up_too() -> None:
    big = 2_000_000_000
    val = Validator([TagRules(big, valid_max=1.0), TagRules(3)])
    out = flush(val, [(0, big, 2.0), (0, 3, 2.0), (0, -5, 2.0)])
    assert out.quality.tolist() == [BAD_OUT_OF_RANGE, GOOD, GOOD]
    assert out.counts["unknown_tag"] == 1


def test_a_flush_spanning_weeks_is_ordered_correctly() -> None:
    val = Validator([TagRules(1, deadband=1.0)])
    day = 86_400
    out = flush(val, [(30 * day, 1, 5.0), (0, 1, 1.0), (30 * day, 1, 9.0), (1, 1, 1.5)])
    assert out.keep.tolist() == [True, True, False, False]
    assert out.counts["duplicate"] == 1 and out.counts["deadband"] == 1


class Reference:
    """The rules of ingest/write/validation.py, one Python step per reading, for comparison."""

    def __init__(self, rules: Sequence[TagRules], settings: ValidationSettings) -> None:
        self.rules = {r.tag_id: r for r in rules}
        self.s = settings
        self.window_us = round(settings.dedup_window_s * S)
        self.written: dict[int, set[int]] = {}  # tag -> source times within the window
        self.horizon: dict[int, int] = {}
        self.ref: dict[int, tuple[int, float, int]] = {}  # tag -> (time, value, quality)
        self.stats: dict[int, tuple[int, float, float]] = {}  # tag -> (count, mean, var)

    def update_rules(self, rules: Sequence[TagRules]) -> None:
        self.rules = {r.tag_id: r for r in rules}
        for state in (self.written, self.horizon, self.ref, self.stats):
            for tag in [x for x in state if x not in self.rules]:
                del state[tag]  # type: ignore[attr-defined]

    def check(
        self,
        t: np.ndarray,
        g: np.ndarray,
        v: np.ndarray,
        q: np.ndarray,
    ) -> tuple[list[bool], list[int], dict[str, int], list[bool]]:
        n = len(t)
        keep, qual = [True] * n, [int(x) for x in q]
        counts = dict.fromkeys(REJECT_REASONS + FLAG_REASONS, 0)
        borderline = [False] * n
        seen: set[tuple[int, int]] = set()
        for i in range(n):
            tag, ti, x = int(g[i]), int(t[i]), float(v[i])
            if not math.isfinite(x) and qual[i] >= 0:
                qual[i] = BAD
            rule = self.rules.get(tag)
            if rule is None:
                counts["unknown_tag"] += 1
                if qual[i] == BAD and q[i] >= 0:
                    counts["nan" if math.isnan(x) else "inf"] += 1
                continue
            recent = ti >= self.horizon.get(tag, -(2**63))
            if (tag, ti) in seen or (recent and ti in self.written.get(tag, ())):
                keep[i], qual[i] = False, int(q[i])
                counts["duplicate"] += 1
                continue
            seen.add((tag, ti))
            if q[i] < 0:
                continue
            if not math.isfinite(x):
                counts["nan" if math.isnan(x) else "inf"] += 1
                continue
            lo = -math.inf if rule.valid_min is None else rule.valid_min
            hi = math.inf if rule.valid_max is None else rule.valid_max
            if x < lo or x > hi:
                if rule.out_of_range == "reject":
                    keep[i] = False
                    counts["out_of_range_rejected"] += 1
                else:
                    qual[i] = BAD_OUT_OF_RANGE
                    counts["out_of_range_flagged"] += 1
                continue
            count, mean, var = self.stats.get(tag, (0, 0.0, 0.0))
            sd = math.sqrt(var)
            thr = rule.zscore_threshold
            if (
                q[i] < UNCERTAIN
                and thr is not None
                and count >= self.s.zscore_min_samples
                and sd > 1e-9 * max(1.0, abs(mean))
            ):
                z = abs(x - mean) / (thr * sd)
                borderline[i] = abs(z - 1) < 1e-6
                if z > 1:
                    qual[i] = UNCERTAIN
                    counts["anomaly"] += 1
        for tag, rule in self.rules.items():
            if rule.deadband is None:
                continue
            ref_time, ref_v, ref_q = self.ref.get(tag, (-(2**63), math.nan, -1))
            last = None if ref_time == -(2**63) else (ref_v, ref_q)
            rows = sorted((int(t[i]), i) for i in range(n) if keep[i] and g[i] == tag)
            for ti, i in rows:
                if ti <= ref_time:
                    continue
                x, qi = float(v[i]), qual[i]
                if last is not None and 0 <= qi < UNCERTAIN and last[1] == qi and abs(x - last[0]) < rule.deadband:
                    keep[i] = False
                    counts["deadband"] += 1
                else:
                    last = (x, qi)
        return keep, qual, counts, borderline

    def commit(self, t: np.ndarray, g: np.ndarray, v: np.ndarray, keep: list[bool], qual: list[int]) -> None:
        alpha = 2.0 / (self.s.zscore_window + 1)
        rows = sorted((int(g[i]), int(t[i]), i) for i in range(len(t)) if keep[i] and int(g[i]) in self.rules)
        for tag, ti, i in rows:
            x = float(v[i])
            if ti > self.ref.get(tag, (-(2**63), 0.0, 0))[0]:
                self.ref[tag] = (ti, x, qual[i])
            self.horizon[tag] = max(self.horizon.get(tag, -(2**63)), ti - self.window_us)
            self.written.setdefault(tag, set()).add(ti)
            if math.isfinite(x) and qual[i] >= 0:
                count, mean, var = self.stats.get(tag, (0, 0.0, 0.0))
                count += 1
                a = max(alpha, 1.0 / count)
                d = x - mean
                self.stats[tag] = (count, mean + a * d, (1 - a) * (var + a * d * d))
        for tag, times in self.written.items():
            h = self.horizon.get(tag, -(2**63))
            self.written[tag] = {x for x in times if x >= h}


def compare_with_reference(
    rules: list[TagRules], settings: ValidationSettings, steps: Sequence[list[Row] | tuple[TagRules, ...]]
) -> None:
    """Run flushes (lists of rows) and rules updates (tuples of rules) through both."""
    val, ref = Validator(rules, settings), Reference(rules, settings)
    for step in steps:
        if isinstance(step, tuple):
            val.update_rules(step)
            ref.update_rules(step)
            continue
        rows = step
        c = cols(rows)
        out = val.check(*c)
        keep, qual, counts, borderline = ref.check(*c)
        assert_invariant(out, len(rows))
        if any(borderline):  # |z| within rounding of the threshold: either answer is right
            ok = ~np.array(borderline, bool)
            assert out.keep[ok].tolist() == np.array(keep)[ok].tolist()
            keep, qual = out.keep.tolist(), out.quality.tolist()
        else:
            assert out.keep.tolist() == keep
            assert out.quality.tolist() == qual
            assert out.counts == counts
        again = val.check(*c)  # check is pure
        assert again.keep.tolist() == out.keep.tolist() and again.counts == out.counts
        val.commit(*c, out)
        ref.commit(c[0], c[1], c[2], keep, qual)


def test_matches_the_reference_on_a_fixed_random_workload() -> None:
    rng = np.random.default_rng(11)
    rules = [
        TagRules(1, deadband=0.5, valid_min=-3.0, valid_max=3.0),
        TagRules(2, deadband=1.0, out_of_range="reject", valid_max=2.0, zscore_threshold=2.0),
        TagRules(3, zscore_threshold=1.5),
        TagRules(5, deadband=0.0),
    ]
    settings = ValidationSettings(dedup_window_s=20.0, zscore_window=10, zscore_min_samples=5)
    flushes = []
    clock = 0.0
    for _ in range(40):
        k = int(rng.integers(0, 60))
        ts = clock + rng.integers(-30, 15, k).astype(float)
        clock += 10
        tags = rng.choice([1, 2, 3, 4, 5], k)
        vals = np.round(rng.normal(0, 1.5, k), 1)
        vals[rng.random(k) < 0.03] = math.nan
        vals[rng.random(k) < 0.02] = math.inf
        quals = rng.choice([GOOD, GOOD, GOOD, GOOD, UNCERTAIN, BAD_NO_COMM, 0x00960000], k)
        flushes.append(
            [(float(a), int(b), float(x), int(y)) for a, b, x, y in zip(ts, tags, vals, quals, strict=True)]
        )
    compare_with_reference(rules, settings, flushes)


def test_matches_the_reference_over_many_small_flushes_rule_changes_and_a_clock_jump() -> None:
    """Long enough for the duplicate memory to merge segments and to forget by the window."""
    rng = np.random.default_rng(12)
    rules = [TagRules(tag, deadband=0.3 * (tag % 3), valid_max=4.0) for tag in range(1, 9)]
    settings = ValidationSettings(dedup_window_s=300.0, zscore_window=20, zscore_min_samples=8)
    steps: list[list[Row] | tuple[TagRules, ...]] = []
    sent: list[list[Row]] = []
    clock = 0.0
    for i in range(80):
        if i == 40:
            clock += 3 * 86_400  # a source clock jumps three days
        if i == 50:  # tag 8 removed, tag 9 added, tag 1 edited
            steps.append((*rules[1:7], TagRules(1, deadband=1.0), TagRules(9)))
        k = int(rng.integers(1, 12))
        rows: list[Row] = [
            (clock + float(x), int(tag), float(np.round(val, 1)), GOOD)
            for x, tag, val in zip(
                rng.integers(0, 4, k), rng.integers(1, 10, k), rng.normal(1, 1.5, k), strict=True
            )
        ]
        clock += 3
        if sent and rng.random() < 0.3:
            rows += sent[int(rng.integers(max(0, len(sent) - 120), len(sent)))]  # a resend
        sent.append(rows)
        steps.append(rows)
    compare_with_reference(rules, settings, steps)


# Hypothesis keeps a cache; keep it out of the checkout.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "scada-ingest-hypothesis")
)
try:
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    _value = st.one_of(st.integers(-6, 6).map(lambda x: x / 2), st.sampled_from([math.nan, math.inf, -math.inf]))
    _row = st.tuples(
        st.integers(0, 30).map(float),
        st.sampled_from([1, 2, 3, 9]),
        _value,
        st.sampled_from([GOOD, GOOD, GOOD, UNCERTAIN, BAD_NO_COMM]),
    )
    _rules = st.tuples(
        st.sampled_from([None, 0.0, 0.5, 1.0]),
        st.sampled_from(["flag", "reject"]),
        st.sampled_from([None, 1.0, 2.0]),
        st.sampled_from([None, -2.0]),
        st.sampled_from([None, 2.5]),
    )

    @hsettings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ in the checkout
    @given(
        rule_draws=st.lists(_rules, min_size=3, max_size=3),
        flushes=st.lists(st.lists(_row, max_size=25), max_size=8),
        window=st.sampled_from([0.0, 5.0, 60.0]),
        min_samples=st.sampled_from([0, 3]),
    )
    def test_property_outcome_matches_reference_and_counts_add_up(
        rule_draws: list[tuple[float | None, str, float | None, float | None, float | None]],
        flushes: list[list[Row]],
        window: float,
        min_samples: int,
    ) -> None:
        rules = [
            TagRules(
                tag,
                deadband=db,
                out_of_range=oor,
                zscore_threshold=z,  # type: ignore[arg-type]
                valid_min=lo,
                valid_max=hi,
            )
            for tag, (db, oor, z, lo, hi) in zip([1, 2, 3], rule_draws, strict=True)
        ]
        settings = ValidationSettings(dedup_window_s=window, zscore_window=4, zscore_min_samples=min_samples)
        compare_with_reference(rules, settings, flushes)


def test_timing_20k_rows_across_1000_tags() -> None:
    """Prints the cost of check + commit per flush (run with -s); no timed assert."""
    tags, per = 1000, 20
    rules = [
        TagRules(i, valid_min=-50.0, valid_max=150.0, deadband=0.05 if i % 2 else None) for i in range(1, tags + 1)
    ]
    val = Validator(rules)
    rng = np.random.default_rng(5)

    def flush_cols(b: int) -> Cols:
        k = np.repeat(np.arange(per), tags) + b * per  # a reading a second, rows in time order
        g = np.tile(np.arange(1, tags + 1, dtype=np.int32), per)
        t = (T0 + k * S).astype(np.int64)
        v = 50 + 10 * np.sin(k / 10.0 + g) + rng.normal(0, 1, k.size)
        v[rng.random(k.size) < 0.001] = math.nan
        return t, g, v, np.zeros(k.size, np.int32)

    flushes = [flush_cols(b) for b in range(45)]
    wall, cpu, checks = [], [], []
    for i, c in enumerate(flushes):
        t0, p0 = time.perf_counter(), time.process_time()
        out = val.check(*c)
        t1 = time.perf_counter()
        val.commit(*c, out)
        t2, p2 = time.perf_counter(), time.process_time()
        assert_invariant(out, c[0].size)
        if i >= 5:  # steady state: the duplicate memory holds a full 60 s window
            checks.append(t1 - t0)
            wall.append(t2 - t0)
            cpu.append(p2 - p0)
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    print(
        f"\nvalidation, {c[0].size} rows / {tags} tags, {len(ms)} consecutive flushes:"
        f" check+commit wall median {np.median(ms):.2f} ms (mean {ms.mean():.2f}, min"
        f" {ms.min():.2f}, max {ms.max():.2f}); CPU mean {cpu_ms.mean():.2f} ms;"
        f" check alone median {np.median(checks) * 1e3:.2f} ms; last counts {out.counts}"
    )
