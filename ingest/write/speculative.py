"""The validator's running state, snapshotted before a flush folds it in while its COPY runs.

Folding a flush into the validator (``Validator.commit``) used to wait for the COMMIT, in series
with the next flush's check; it was the largest piece of the writer's own CPU (README, "Writer
figures"). Now it runs on a worker thread while the server works on the COPY. If the transaction
then fails, the state goes back to this snapshot, so a retried flush gets the same outcome as the
first attempt, as if the fold had never happened.

The snapshot is cheap: the per-tag arrays (one entry per tag) are copied because ``commit``
assigns into them; the duplicate memory's segments are never changed in place (``add`` and
``merge`` build new ones), so the list of them is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.write.dedup_memory import Segment
from ingest.write.validation import Validator


@dataclass(frozen=True)
class ValidatorState:
    version: int  # of the rules: a snapshot only fits the rules it was taken under
    arrays: dict[str, Any]
    zscore: tuple[Any, Any, Any]
    segments: list[Segment]


_PER_TAG = ("_horizon", "_ref_time", "_ref_value", "_ref_quality", "_pruned_at")


def snapshot(v: Validator) -> ValidatorState:
    with v.lock:
        return ValidatorState(
            v._version,
            {name: getattr(v, name).copy() for name in _PER_TAG},
            (v._z.mean.copy(), v._z.var.copy(), v._z.count.copy()),
            list(v._memory.segments),
        )


def restore(v: Validator, state: ValidatorState) -> None:
    """Put the state back as it was at ``snapshot``. If the rules were reloaded in between, the
    snapshot no longer fits them: the running state is then forgotten, exactly what a restarted
    writer starts with (the ledger still refuses every resent batch)."""
    with v.lock:
        if v._version == state.version:
            for name, arr in state.arrays.items():
                setattr(v, name, arr)
            v._z.mean, v._z.var, v._z.count = state.zscore
            v._memory.segments = state.segments
            return
        fresh = Validator(v.rules, v.settings)
        for name in (*_PER_TAG, "_z", "_memory"):
            setattr(v, name, getattr(fresh, name))
