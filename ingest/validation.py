"""Per-flush validation of readings: what to write, with which quality, and why the rest was not.

The writer calls ``check`` on each flush before the COPY and ``commit`` once that transaction has
committed. ``check`` reads the running state (duplicate memory, deadband references, z-score
statistics) and never changes it, so a failed flush that is retried gets the same outcome;
``commit`` folds in what was written. A check/commit pair must not interleave with another one.

Each row goes through these steps in order; the first step that removes a row names its one
rejection reason:

1. No rules for the tag: kept, counted "unknown_tag"; only step 3's NaN/Inf marking applies.
2. Duplicate: the same (tag, source timestamp) earlier in this call (the first occurrence wins),
   or written by a committed call and not older than the tag's newest committed source time minus
   ``dedup_window_s``. Removed, "duplicate". The first value wins, even if a resend differs.
3. NaN or +-Inf: kept, value unchanged (PostgreSQL float8 stores NaN and +-Infinity, and
   rewriting a value would hide what the device sent), quality Bad. Counted "nan" / "inf" only
   when the row was not Bad already: a Bad row (a gap marker, Bad_NoCommunication) is the
   source's own verdict, and it is never re-judged by steps 4-6 either.
4. Outside [valid_min, valid_max]: "reject" removes the row ("out_of_range_rejected"); "flag"
   keeps it with Bad_OutOfRange ("out_of_range_flagged").
5. |z| above the tag's threshold, z taken against the running EWMA mean/variance from before this
   call: a Good row becomes Uncertain ("anomaly"). Silent until ``zscore_min_samples`` values
   were folded in, and while the running spread is numerically zero (a flat line that moves is a
   change of state, not an outlier whose size can be scored).
6. Deadband, per tag in source-time order: a Good row whose value is within ``deadband`` of the
   last kept row of the same quality code is removed ("deadband"); any change of quality passes.
   A row not newer than the tag's committed reference (late data) is not deadbanded.

Invariant: ``outcome.keep.sum() + outcome.rejected == len(input)``. The flag reasons count kept
rows whose quality the validator changed (plus "unknown_tag"), so a kept row may be counted under
several of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from ingest.models import Quality, quality_as_int4

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.intp]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

BAD = int(quality_as_int4(Quality.BAD))
BAD_OUT_OF_RANGE = int(quality_as_int4(Quality.BAD_OUT_OF_RANGE))
UNCERTAIN = int(quality_as_int4(Quality.UNCERTAIN))  # the first non-Good code: Good is [0, this)

REJECT_REASONS = ("duplicate", "out_of_range_rejected", "deadband")
FLAG_REASONS = ("nan", "inf", "out_of_range_flagged", "anomaly", "unknown_tag")

# Duplicate memory keys pack (tag index, source time modulo 2**40 us = 12.7 days) into one int64.
# A tag's remembered times span at most the window, so keys are unique while the window is
# shorter than 2**40 us; the stored full time confirms every hit.
_TIME_BITS = 40
_TIME_MASK = (1 << _TIME_BITS) - 1
_MAX_TAGS = 1 << (63 - _TIME_BITS)
_MAX_WINDOW_S = 7 * 86_400.0
_NO_TIME = np.iinfo(np.int64).min


@dataclass(frozen=True)
class TagRules:
    tag_id: int
    valid_min: float | None = None
    valid_max: float | None = None
    out_of_range: Literal["flag", "reject"] = "flag"
    deadband: float | None = None  # absolute, in the tag's (already scaled) unit
    zscore_threshold: float | None = 4.0  # None disables anomaly flags for the tag

    def __post_init__(self) -> None:
        for name in ("valid_min", "valid_max", "deadband", "zscore_threshold"):
            x = getattr(self, name)
            if x is not None and math.isnan(x):
                raise ValueError(f"tag {self.tag_id}: {name} is NaN")
        lo, hi = self.valid_min, self.valid_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"tag {self.tag_id}: valid_min {lo} > valid_max {hi}")
        if self.out_of_range not in ("flag", "reject"):
            raise ValueError(f"tag {self.tag_id}: out_of_range must be 'flag' or 'reject'")
        if self.deadband is not None and self.deadband < 0:
            raise ValueError(f"tag {self.tag_id}: deadband {self.deadband} < 0")
        if self.zscore_threshold is not None and self.zscore_threshold <= 0:
            raise ValueError(f"tag {self.tag_id}: zscore_threshold must be > 0")


@dataclass(frozen=True)
class ValidationSettings:
    dedup_window_s: float = 60.0  # by source time, per tag; at most 7 days
    zscore_window: int = 500  # EWMA span: alpha = 2 / (span + 1)
    zscore_min_samples: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.dedup_window_s <= _MAX_WINDOW_S:
            raise ValueError(f"dedup_window_s must be within [0, {_MAX_WINDOW_S:.0f}]")
        if self.zscore_window < 1:
            raise ValueError("zscore_window must be >= 1")
        if self.zscore_min_samples < 0:
            raise ValueError("zscore_min_samples must be >= 0")


@dataclass
class ValidationOutcome:
    keep: Bools  # rows to write
    quality: I32  # the quality column to write (same length as the input)
    counts: dict[str, int]  # every reason of REJECT_REASONS + FLAG_REASONS, zeros included

    @property
    def rejected(self) -> int:
        return sum(self.counts[r] for r in REJECT_REASONS)


@dataclass
class _Plan:
    idx: Ints  # rule index of each row (meaningless where not known)
    known: Bools
    order: Ints  # known rows sorted by (tag, source time), equal keys in row order


class Validator:
    """Validates one tenant's flushes against its tag rules; state lives per rule index."""

    def __init__(
        self,
        rules: Iterable[TagRules],
        settings: ValidationSettings = ValidationSettings(),  # noqa: B008 (frozen, immutable)
    ) -> None:
        self.settings = settings
        self._alpha = 2.0 / (settings.zscore_window + 1)
        self._window_us = round(settings.dedup_window_s * 1e6)
        self._tags: I64 = np.empty(0, np.int64)
        self._lut: I32 | None = None
        self._horizon: I64 = np.empty(0, np.int64)  # oldest source time still remembered
        self._ref_time: I64 = np.empty(0, np.int64)  # deadband reference: newest kept row
        self._ref_value: F64 = np.empty(0, np.float64)
        self._ref_quality: I32 = np.empty(0, np.int32)
        self._z_mean: F64 = np.empty(0, np.float64)
        self._z_var: F64 = np.empty(0, np.float64)
        self._z_count: I64 = np.empty(0, np.int64)
        self._mem_key: I64 = np.empty(0, np.int64)  # sorted
        self._mem_time: I64 = np.empty(0, np.int64)
        self.update_rules(rules)

    def update_rules(self, rules: Iterable[TagRules]) -> None:
        """Replace the rules; tags that remain keep their running state, removed tags lose it."""
        by_id = sorted(rules, key=lambda r: r.tag_id)
        tags = np.array([r.tag_id for r in by_id], np.int64)
        if tags.size > 1 and bool(np.any(tags[1:] == tags[:-1])):
            dup = tags[1:][tags[1:] == tags[:-1]]
            raise ValueError(f"rules repeat tag_id {int(dup[0])}")
        if tags.size >= _MAX_TAGS:
            raise ValueError(f"at most {_MAX_TAGS - 1} tags per validator")
        n = tags.size
        # Old rule index -> new rule index, or -1. Both sides are sorted, so it is monotone.
        pos = np.searchsorted(tags, self._tags)
        stay = pos < n
        stay[stay] = tags[pos[stay]] == self._tags[stay]
        remap = np.where(stay, pos, -1)
        src, dst = np.flatnonzero(stay), remap[stay]

        self._horizon = _carry(self._horizon, n, src, dst, _NO_TIME)
        self._ref_time = _carry(self._ref_time, n, src, dst, _NO_TIME)
        self._ref_value = _carry(self._ref_value, n, src, dst, np.nan)
        self._ref_quality = _carry(self._ref_quality, n, src, dst, 0)
        self._z_mean = _carry(self._z_mean, n, src, dst, 0.0)
        self._z_var = _carry(self._z_var, n, src, dst, 0.0)
        self._z_count = _carry(self._z_count, n, src, dst, 0)
        if self._mem_key.size:
            new_idx = remap[self._mem_key >> _TIME_BITS]
            alive = new_idx >= 0
            self._mem_key = (new_idx[alive] << _TIME_BITS) | (self._mem_key[alive] & _TIME_MASK)
            self._mem_time = self._mem_time[alive]
        self._tags = tags
        # A dense lookup table beats a binary search when tag ids are compact (database serials).
        top = int(tags[-1]) if n else -1
        self._lut = None
        if n and int(tags[0]) >= 0 and top < max(1 << 20, 8 * n):
            self._lut = np.full(top + 1, -1, np.int32)
            self._lut[tags] = np.arange(n, dtype=np.int32)
        inf = math.inf
        self._vmin = np.array([-inf if r.valid_min is None else r.valid_min for r in by_id])
        self._vmax = np.array([inf if r.valid_max is None else r.valid_max for r in by_id])
        self._reject = np.array([r.out_of_range == "reject" for r in by_id], bool)
        self._deadband = np.array([np.nan if r.deadband is None else r.deadband for r in by_id])
        self._zthr = np.array([inf if r.zscore_threshold is None else r.zscore_threshold
                               for r in by_id])

    def check(
        self, time_us: npt.ArrayLike, tag_id: npt.ArrayLike, value: npt.ArrayLike,
        quality: npt.ArrayLike,
    ) -> ValidationOutcome:
        t, g, v, q = _columns(time_us, tag_id, value, quality)
        p = self._plan(t, g)
        idx, known, order = p.idx, p.known, p.order
        n = t.size
        counts = dict.fromkeys(REJECT_REASONS + FLAG_REASONS, 0)
        counts["unknown_tag"] = n - int(np.count_nonzero(known))
        keep = np.ones(n, bool)
        qual = q.copy()

        dup = np.zeros(n, bool)
        if order.size > 1:
            to, io = t[order], idx[order]
            same = (to[1:] == to[:-1]) & (io[1:] == io[:-1])
            dup[order[1:][same]] = True
        if self._mem_key.size and order.size:
            rows = order[~dup[order]]
            ri, rt = idx[rows], t[rows]
            recent = rt >= self._horizon[ri]
            rows, ri, rt = rows[recent], ri[recent], rt[recent]
            mk = (ri.astype(np.int64) << _TIME_BITS) | (rt & _TIME_MASK)
            at = np.minimum(np.searchsorted(self._mem_key, mk), self._mem_key.size - 1)
            hit = (self._mem_key[at] == mk) & (self._mem_time[at] == rt)
            dup[rows[hit]] = True
        keep &= ~dup
        counts["duplicate"] = int(np.count_nonzero(dup))

        finite = np.isfinite(v)
        marked = keep & ~finite & (q >= 0)
        qual[marked] = BAD
        counts["nan"] = int(np.count_nonzero(marked & np.isnan(v)))
        counts["inf"] = int(np.count_nonzero(marked)) - counts["nan"]

        if self._tags.size == 0:
            return ValidationOutcome(keep, qual, counts)
        judged = keep & known & finite & (q >= 0)  # steps 4-6 leave Bad rows alone
        out = judged & ((v < self._vmin[idx]) | (v > self._vmax[idx]))
        rejected = out & self._reject[idx]
        keep &= ~rejected
        flagged = out & ~rejected
        qual[flagged] = BAD_OUT_OF_RANGE
        counts["out_of_range_rejected"] = int(np.count_nonzero(rejected))
        counts["out_of_range_flagged"] = int(np.count_nonzero(flagged))

        rows = np.flatnonzero(judged & ~out & (q < UNCERTAIN))
        ri = idx[rows]
        sd = np.sqrt(self._z_var[ri])
        mean = self._z_mean[ri]
        ok = (self._z_count[ri] >= self.settings.zscore_min_samples) & (
            sd > 1e-9 * np.maximum(1.0, np.abs(mean)))
        rows, ri, sd, mean = rows[ok], ri[ok], sd[ok], mean[ok]
        spike = np.abs(v[rows] - mean) > self._zthr[ri] * sd
        qual[rows[spike]] = UNCERTAIN
        counts["anomaly"] = int(np.count_nonzero(spike))

        has_db = ~np.isnan(self._deadband)
        if has_db.any():
            cand = keep & known & has_db[idx]
            rows = order[cand[order]]
            dropped = self._deadband_drops(rows, idx[rows], t[rows], v[rows], qual[rows])
            keep[dropped] = False
            counts["deadband"] = int(dropped.size)
        return ValidationOutcome(keep, qual, counts)

    def commit(
        self, time_us: npt.ArrayLike, tag_id: npt.ArrayLike, value: npt.ArrayLike,
        quality: npt.ArrayLike, outcome: ValidationOutcome,
    ) -> None:
        """Fold a written flush into the running state: the same columns given to ``check``."""
        t, g, v, _ = _columns(time_us, tag_id, value, quality)
        if outcome.keep.shape != t.shape or outcome.quality.shape != t.shape:
            raise ValueError("outcome does not belong to these columns (length differs)")
        p = self._plan(t, g)
        rows = p.order[outcome.keep[p.order]]  # written rows of known tags, by (tag, time)
        if rows.size == 0:
            return
        ri, rt, rv, rq = p.idx[rows], t[rows], v[rows], outcome.quality[rows]
        edge = ri[1:] != ri[:-1]
        last = np.flatnonzero(np.append(edge, True))
        lt, ltime = ri[last], rt[last]

        newer = ltime > self._ref_time[lt]
        tags_n, at = lt[newer], last[newer]
        self._ref_time[tags_n] = rt[at]
        self._ref_value[tags_n] = rv[at]
        self._ref_quality[tags_n] = rq[at]

        w = self._window_us
        horizon = np.maximum(ltime, _NO_TIME + w) - w
        self._horizon[lt] = np.maximum(self._horizon[lt], horizon)
        recent = rt >= self._horizon[ri]
        mk = (ri[recent].astype(np.int64) << _TIME_BITS) | (rt[recent] & _TIME_MASK)
        mt = rt[recent]
        if self._mem_key.size and mk.size:  # a stray second commit must not double a key
            at_ = np.minimum(np.searchsorted(self._mem_key, mk), self._mem_key.size - 1)
            fresh = ~((self._mem_key[at_] == mk) & (self._mem_time[at_] == mt))
            mk, mt = mk[fresh], mt[fresh]
        keys = np.concatenate([self._mem_key, mk])
        times = np.concatenate([self._mem_time, mt])
        alive = times >= self._horizon[keys >> _TIME_BITS]
        keys, times = keys[alive], times[alive]
        # Two sorted runs (the memory, and this flush mostly in time order): timsort merges them
        # in about linear time.
        o = np.argsort(keys, kind="stable")
        self._mem_key, self._mem_time = keys[o], times[o]

        self._fold_stats(ri, rv, rq)

    def _plan(self, t: I64, g: I32) -> _Plan:
        n = t.size
        if self._lut is not None:
            inside = (g >= 0) & (g < self._lut.size)
            idx = self._lut[np.where(inside, g, 0)].astype(np.intp)
            known = inside & (idx >= 0)
            idx[~known] = 0
        elif self._tags.size:
            pos = np.minimum(np.searchsorted(self._tags, g), self._tags.size - 1)
            known = self._tags[pos] == g
            idx = pos.astype(np.intp)
        else:
            idx, known = np.zeros(n, np.intp), np.zeros(n, bool)
        rows = np.flatnonzero(known)
        if rows.size == 0:
            return _Plan(idx, known, rows)
        rt, ri = t[rows], idx[rows].astype(np.int64)
        lo = int(rt.min())
        if int(rt.max()) - lo <= _TIME_MASK:
            # One int64 key: flushes arrive mostly in time order, which a stable sort exploits.
            o = np.argsort((ri << _TIME_BITS) | (rt - lo), kind="stable")
        else:  # a flush spanning more than 12.7 days of source time
            o = np.lexsort((rt, ri))
        return _Plan(idx, known, rows[o])

    def _deadband_drops(self, rows: Ints, ri: Ints, rt: I64, rv: F64, rq: I32) -> Ints:
        """Rows removed by deadband; ``rows`` are sorted by (tag, time), duplicates already gone.

        Vectorised over all tags: for each Good row, a binary-lifting search over running max/min
        tables finds the next row that leaves its deadband (the next kept one if this one is
        kept); pointer doubling then marks the chains from every run start. O(n log n) with
        about 20 numpy passes, instead of a Python step per reading.
        """
        fresh = rt > self._ref_time[ri]  # late rows are not deadbanded
        rows, ri, rv, rq = rows[fresh], ri[fresh], rv[fresh], rq[fresh]
        if rows.size == 0:
            return rows
        # The committed reference goes in front of its tag's rows, as the first "kept" row.
        first = np.flatnonzero(np.concatenate(([True], ri[1:] != ri[:-1])))
        ref_tags = ri[first]
        has_ref = self._ref_time[ref_tags] != _NO_TIME
        at, rtag = first[has_ref], ref_tags[has_ref]
        sv = np.insert(rv, at, self._ref_value[rtag])
        sq = np.insert(rq, at, self._ref_quality[rtag])
        si = np.insert(ri, at, rtag)
        real = np.insert(np.ones(rows.size, bool), at, False)
        m = sv.size

        start = np.concatenate(([True], (si[1:] != si[:-1]) | (sq[1:] != sq[:-1])))
        starts = np.flatnonzero(start)
        run_len = np.diff(np.append(starts, m))
        run_end = np.repeat(np.append(starts[1:], m), run_len)
        good = (sq >= 0) & (sq < UNCERTAIN)
        levels = int(run_len.max()).bit_length()

        mx, mn = [sv], [sv]  # mx[k][i] = max(sv[i : i + 2**k])
        for k in range(1, levels):
            h = 1 << (k - 1)
            mx.append(np.maximum(mx[-1][:-h], mx[-1][h:]))
            mn.append(np.minimum(mn[-1][:-h], mn[-1][h:]))
        gi = np.flatnonzero(good)
        gv, gd, gend = sv[gi], self._deadband[si[gi]], run_end[gi]
        pos = gi + 1
        for k in reversed(range(levels)):
            step = 1 << k
            at_k = np.minimum(pos, mx[k].size - 1)
            # fl(a - b) is monotone in a, so testing the block max/min is exact per element.
            inside = (mx[k][at_k] - gv < gd) & (gv - mn[k][at_k] < gd) & (pos + step <= gend)
            pos = np.where(inside, pos + step, pos)
        jump = np.full(m + 1, m, np.intp)  # m is a sink: "no later kept row in this run"
        jump[gi] = np.where(pos < gend, pos, m)
        kept = np.zeros(m + 1, bool)
        kept[:m] = start
        for _ in range(levels):  # after round r, each chain's first 2**(r+1) rows are marked
            kept[jump[kept]] = True
            jump = jump[jump]
        drop = real & ~(kept[:m] | ~good)
        dropped: Ints = rows[drop[real]]
        return dropped

    def _fold_stats(self, ri: Ints, rv: F64, rq: I32) -> None:
        """EWMA mean/variance of kept, finite, non-Bad values; rows sorted by (tag, time).

        The n-th value of a tag is folded in with weight a_n = max(alpha, 1/n): a plain running
        mean/variance until n reaches the span, so the warm-up is not biased towards the first
        value, then exponential. Folding a tag's k values at once as a mixture (old state weighted
        prod(1 - a_j), value i weighted a_i * prod_{j>i}(1 - a_j)) equals the sequential update
        mean += a*d, var = (1-a) * (var + a*d**2) exactly, up to rounding.
        """
        use = np.isfinite(rv) & (rq >= 0)
        ri, x = ri[use], rv[use]
        if x.size == 0:
            return
        start = np.concatenate(([True], ri[1:] != ri[:-1]))
        gid = np.cumsum(start) - 1
        firsts = np.flatnonzero(start)
        size = np.diff(np.append(firsts, x.size))
        tags = ri[firsts]
        count0 = self._z_count[tags]
        nth = (np.arange(x.size) - np.repeat(firsts - count0, size) + 1).astype(np.float64)
        a = np.maximum(self._alpha, 1.0 / nth)
        # log(1 - a) is -inf for a tag's very first value (a = 1): take 0 there, and zero the old
        # state's weight through count0 instead.
        log_keep = np.log1p(-np.where(nth > 1, a, 0.0))
        csum = np.cumsum(log_keep)
        group_total = csum[firsts + size - 1]
        wts = a * np.exp(group_total[gid] - csum)
        old_w = np.exp(group_total - csum[firsts] + log_keep[firsts]) * (count0 > 0)
        m0, v0 = self._z_mean[tags], self._z_var[tags]
        mean = old_w * m0 + np.bincount(gid, wts * x, minlength=tags.size)
        dev = x - mean[gid]
        var = old_w * (v0 + (m0 - mean) ** 2) + np.bincount(gid, wts * dev * dev, tags.size)
        self._z_mean[tags] = mean
        self._z_var[tags] = var
        self._z_count[tags] = count0 + size


_S = TypeVar("_S", bound=np.generic)


def _carry(old: npt.NDArray[_S], n: int, src: Ints, dst: Ints, fill: object) -> npt.NDArray[_S]:
    new = np.full(n, fill, old.dtype)
    new[dst] = old[src]
    return new


def _columns(
    time_us: npt.ArrayLike, tag_id: npt.ArrayLike, value: npt.ArrayLike, quality: npt.ArrayLike,
) -> tuple[I64, I32, F64, I32]:
    t = np.asarray(time_us, np.int64)
    g = np.asarray(tag_id, np.int32)
    v = np.asarray(value, np.float64)
    q = np.asarray(quality, np.int32)
    if t.ndim != 1 or not t.shape == g.shape == v.shape == q.shape:
        raise ValueError(
            f"columns must be 1-D and of one length, got {t.shape} {g.shape} {v.shape} {q.shape}")
    return t, g, v, q
