"""``settle_heap``: what a long-lived process holds once it is set up leaves the garbage
collector's generations (``gc.freeze``).

A Ray actor or Serve replica holds several hundred thousand objects from its imports alone (Ray,
numpy, pyarrow, FastAPI, pydantic) that never become garbage. Python's full collections walk
every one of them each time the objects promoted since the last one pass a quarter of the total,
pausing the event loop, and every stream and batch on it, for tens of milliseconds or more. Frozen
objects are skipped by those passes; what is allocated afterwards is collected as before."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect once, then move every object that survived into the permanent generation."""
    gc.collect()
    gc.freeze()
