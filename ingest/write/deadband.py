"""Deadband over a flush, vectorised: which rows stay within the band of the last kept row.

Step 6 of the validator (``ingest.write.validation``): per tag in source-time order, a Good row
within ``deadband`` of the last kept row, when that row has the same quality code, is removed; a
quality change passes. No Python step per reading: O(n + s log n) for n rows of which s are slow.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ingest.core.models import Quality, quality_as_int4

Ints = npt.NDArray[np.intp]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

UNCERTAIN = int(quality_as_int4(Quality.UNCERTAIN))  # the first non-Good code: Good is [0, this)
NO_TIME = int(np.iinfo(np.int64).min)  # a tag's reference time before its first written row


def deadband_drops(
    cg: Ints,
    cv: F64,
    cq: I32,
    cd: F64,
    ref_time: I64,
    ref_value: F64,
    ref_quality: I32,
) -> Ints:
    """Indices of the rows deadband removes; rows by (tag, time), strictly newer in time.

    ``cg``, ``cv``, ``cq``, ``cd``: rule index, value, quality and deadband of each row; ``ref_*``:
    per rule index, the tag's committed reference (the newest written row; time NO_TIME when none).

        A run is a stretch of one tag's rows with one quality code. In a Good run the row kept
        after a kept row i is the first later one that leaves i's deadband, so most rows pass
        because they leave the previous row's band at once. Only the others ("slow" rows, and a
        committed reference the first row stays within) need a search: binary lifting over
        running max/min tables. Pointer doubling over slow rows then finds those that are kept,
        and the rows each one skips are removed. All vectorised over tags: O(n + s log n).
    """
    k = cg.size
    new_tag = np.ones(k, bool)
    new_tag[1:] = cg[1:] != cg[:-1]
    start = new_tag.copy()
    start[1:] |= cq[1:] != cq[:-1]
    good = (cq >= 0) & (cq < UNCERTAIN)
    firsts = np.flatnonzero(new_tag)
    ft = cg[firsts]
    rq, rv = ref_quality[ft], ref_value[ft]
    with np.errstate(invalid="ignore"):  # inf - inf in Bad rows, which are never slow
        slow = np.flatnonzero(good[:-1] & ~start[1:] & (np.abs(cv[1:] - cv[:-1]) < cd[:-1]))
        held = (
            (ref_time[ft] != NO_TIME)
            & (rq == cq[firsts])
            & (rq >= 0)
            & (rq < UNCERTAIN)
            & (np.abs(cv[firsts] - rv) < cd[firsts])
        )
    if slow.size == 0 and not held.any():
        return slow
    # A node skips rows [skip, stop): a slow row i skips from i + 1, a reference held by its
    # tag's first row f skips from f (it sits at f - 1/2, before f, hence ranks 2i and 2f-1).
    skip = np.concatenate([slow + 1, firsts[held]])
    base = np.concatenate([cv[slow], rv[held]])
    rank = np.concatenate([2 * slow, 2 * firsts[held] - 1])
    by_rank = np.argsort(rank, kind="stable")
    skip, base, rank = skip[by_rank], base[by_rank], rank[by_rank]
    band = cd[skip]
    run_starts = np.flatnonzero(start)
    run_end = np.append(run_starts[1:], k)
    node_run = np.searchsorted(run_starts, skip, "right") - 1
    end = run_end[node_run]
    s = skip.size
    # Binary lifting over sparse tables (level j: max and min of cv[i : i + 2**j]) finds how
    # far each node's band holds. fl(a - b) is monotone in a, so testing a block's max and
    # min against the base is exact.
    stop = skip + 1  # row `skip` is within the band: that is why the node exists
    mx, mn = cv, cv
    tables = [(mx, mn)]
    for j in range(1, int((end - stop).max()).bit_length()):
        h = 1 << (j - 1)
        mx, mn = np.maximum(mx[:-h], mx[h:]), np.minimum(mn[:-h], mn[h:])
        tables.append((mx, mn))
    nodes = np.arange(s)
    for j in reversed(range(len(tables))):
        mx, mn = tables[j]
        nodes = nodes[stop[nodes] < end[nodes]]  # settled once at the end of its run
        st = stop[nodes]
        at = np.minimum(st, mx.size - 1)
        b, d = base[nodes], band[nodes]
        inside = (mx[at] - b < d) & (b - mn[at] < d) & (st + (1 << j) <= end[nodes])
        stop[nodes[inside]] += 1 << j
    nxt = np.searchsorted(rank, 2 * stop)  # the first slow row not skipped
    ok = nxt < s
    ok[ok] = node_run[nxt[ok]] == node_run[ok]
    jump = np.append(np.where(ok, nxt, s), s)  # s is a sink
    kept = np.zeros(s + 1, bool)
    kept[:s] = np.append(True, node_run[1:] != node_run[:-1])  # a run's first node is kept
    marked = 0
    while True:  # after r rounds, each chain's first 2**r nodes are marked
        kept[jump[kept]] = True
        now = int(np.count_nonzero(kept))
        if now == marked:  # no chain is longer than what is marked
            break
        marked, jump = now, jump[jump]
    kept = kept[:s]
    lo, hi = skip[kept], stop[kept]  # disjoint intervals: list their rows
    length = hi - lo
    dropped: Ints = np.arange(int(length.sum())) + np.repeat(lo - np.cumsum(length) + length, length)
    return dropped
