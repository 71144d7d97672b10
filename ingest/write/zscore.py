"""Per-tag EWMA mean and variance of written values: what the validator's anomaly step
(``ingest.write.validation``, step 5) measures a new value against."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.intp]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class ZScoreStats:
    """EWMA statistics per rule index; ``mean``, ``var`` and ``count`` are read by the check."""

    def __init__(self, window: int) -> None:
        self.alpha = 2.0 / (window + 1)
        self.warmup = (window + 1) // 2  # max(alpha, 1/n) is 1/n up to here
        self.mean: F64 = np.empty(0, np.float64)
        self.var: F64 = np.empty(0, np.float64)
        self.count: I64 = np.empty(0, np.int64)

    def carry(self, n: int, src: Ints, dst: Ints) -> None:
        """Follow a rules change: rule ``src[i]`` becomes ``dst[i]`` of ``n``; new tags start empty."""
        self.mean = _carry(self.mean, n, src, dst, 0.0)
        self.var = _carry(self.var, n, src, dst, 0.0)
        self.count = _carry(self.count, n, src, dst, 0)

    def fold(self, kg: Ints, x: F64, kq: I32) -> None:
        """EWMA mean/variance of written, finite, non-Bad values; rows by (tag, time).

        The n-th value of a tag enters with weight a_n = max(alpha, 1/n): a plain running mean
        and variance while n <= span/2, so the warm-up is not biased to the first value, then
        exponential. Folding a tag's values at once as a mixture, the old state weighted
        prod(1 - a_j) and each value a_i * prod_{j>i}(1 - a_j), equals the sequential update
        mean += a*d, var = (1-a) * (var + a*d**2) up to rounding. With J = span/2 the product
        from n+1 to N is min(n, J) / min(N, J) * (1 - alpha)**max(0, N - max(n, J)).
        """
        use = np.isfinite(x) & (kq >= 0)
        if not use.all():
            kg, x = kg[use], x[use]
        if x.size == 0:
            return
        first = np.flatnonzero(np.append(True, kg[1:] != kg[:-1]))
        size = np.diff(np.append(first, x.size))
        tags = kg[first]
        count0 = self.count[tags]
        total = count0 + size
        lam_pow = (1.0 - self.alpha) ** np.arange(int(size.max()) + 1, dtype=np.float64)
        warm = self.warmup
        if int(count0.min()) >= warm:  # past the warm-up: plain exponential weights
            from_end = np.repeat(first + size - 1, size) - np.arange(x.size)
            wts = self.alpha * lam_pow[from_end]
            old_w = lam_pow[size]
        else:
            nth = np.arange(x.size) + np.repeat(count0 - first + 1, size)
            cap = np.minimum(total, warm)

            def survive(n: I64, big_n: I64, c_big: I64) -> F64:
                expo = np.maximum(0, big_n - np.maximum(n, warm))
                out: F64 = np.minimum(n, warm) / c_big * lam_pow[expo]
                return out

            wts = np.maximum(self.alpha, 1.0 / nth) * survive(nth, np.repeat(total, size), np.repeat(cap, size))
            old_w = survive(count0, total, cap)  # 0 for a tag's first values
        m0, v0 = self.mean[tags], self.var[tags]
        mean = old_w * m0 + np.add.reduceat(wts * x, first)
        dev = x - np.repeat(mean, size)
        var = old_w * (v0 + (m0 - mean) ** 2) + np.add.reduceat(wts * dev * dev, first)
        self.mean[tags] = mean
        self.var[tags] = var
        self.count[tags] = total


_S = TypeVar("_S", bound=np.generic)


def _carry(old: npt.NDArray[_S], n: int, src: Ints, dst: Ints, fill: float) -> npt.NDArray[_S]:
    new = np.full(n, fill, old.dtype)
    new[dst] = old[src]
    return new
