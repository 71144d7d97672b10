"""What a tenant's validation is configured with: each tag's rules (range, deadband, anomaly
threshold) and the tenant's settings (duplicate window, z-score statistics), checked when made so
that a validator never runs on a rule it cannot apply (ingest.write.validation)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

_MAX_WINDOW_S = 7 * 86_400.0


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
