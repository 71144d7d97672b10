"""Capped exponential backoff with jitter: the one retry delay policy of the project.

Every loop that retries something that failed (a device reconnect, a writer resend, a database
drain, a session rebuild) takes its delays from a ``Backoff``, so the policy is tuned in one place.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial_s * 2**(n-1)`` capped at ``max_s``, each scaled by a jitter factor in
    ``[1 - jitter, 1]`` so that many clients failing together do not retry in lockstep."""

    def __init__(self, initial_s: float, max_s: float, *, jitter: float = 0.5) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter is a fraction in [0, 1)")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        self.failures += 1
        # The exponent stops growing once the cap is reached: 2.0 ** 1024 raises OverflowError,
        # which a device away for hours (a thousand retries) would otherwise hit.
        doublings = min(self.failures - 1, 64)
        base = min(self.max_s, self.initial_s * 2.0**doublings)
        return base * random.uniform(1.0 - self.jitter, 1.0)

    def reset(self) -> None:
        """A success: the next failure starts again from ``initial_s``."""
        self.failures = 0
