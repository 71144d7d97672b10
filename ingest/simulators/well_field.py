"""The tags of a simulated well field and the values they take, tick by tick (no server here).

One object per well (``W001`` .. ``Wnnn``), each with Double tags ``T001`` .. ``Tmmm`` named
``W001.T001``; with ``string_tags`` each well also has a String tag ``W001.S001``.

Two modes:
- ``counting``: on every tick each tag is written with its next integer (1.0, 2.0, 3.0, ...; a
  string tag ``"v1"``, ``"v2"``, ...), so a tag whose count is N has published exactly 1..N. A
  client that received anything else lost or duplicated data. Before the first tick every tag
  holds 0.0 (``"v0"``), Good: the snapshot a new monitored item reports first is then never
  mistaken for a count. ``start_counts`` continues counting where a previous run stopped (a
  restarted device), the neutral 0.0 snapshot included.
- ``realistic``: plausible oilfield signals (tubing and casing pressure, temperature, oil and gas
  rate) with a slow cycle and measurement noise; string tags cycle through pump states.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

SimulatorMode = Literal["counting", "realistic"]

# (name, base, cycle amplitude, noise sigma, cycle period s); a well's tags cycle through them.
_SIGNALS: tuple[tuple[str, float, float, float, float], ...] = (
    ("tubing_pressure_psi", 850.0, 40.0, 3.0, 300.0),
    ("casing_pressure_psi", 1200.0, 25.0, 2.0, 600.0),
    ("wellhead_temperature_degF", 165.0, 4.0, 0.3, 900.0),
    ("oil_rate_bbl_d", 420.0, 30.0, 8.0, 120.0),
    ("gas_rate_mcf_d", 900.0, 60.0, 15.0, 180.0),
)
_PUMP_STATES = ("running", "running", "running", "idle", "starting")


def bare_name(node: str) -> str:
    """``ns=2;s=W001.T001`` -> ``W001.T001`` (bare names pass through)."""
    return node.split(";s=", 1)[1] if ";s=" in node else node


class WellField:
    """Tag names, the count each tag reached, and the next values to write.

    ``counts[i]`` is what tag ``names[i]`` has published; the server adds one per value written.
    ``slow_fraction`` of each well's tags form the slow class: they are due only every
    ``slow_every``-th tick (tank levels beside fast pressures); counting stays exact per tag.
    """

    def __init__(
        self,
        wells: int,
        tags_per_well: int,
        mode: SimulatorMode,
        *,
        string_tags: bool = False,
        seed: int = 0,
        start_counts: dict[str, int] | None = None,
        slow_every: int = 1,
        slow_fraction: float = 0.0,
    ) -> None:
        if wells < 1:
            raise ValueError(f"wells must be >= 1, got {wells}")
        if tags_per_well < 1:
            raise ValueError(f"tags_per_well must be >= 1, got {tags_per_well}")
        if mode not in ("counting", "realistic"):
            raise ValueError(f"mode must be 'counting' or 'realistic', got {mode!r}")
        self.mode: SimulatorMode = mode
        self.names: list[str] = []
        self.is_text: list[bool] = []
        for w in range(1, wells + 1):
            for t in range(1, tags_per_well + 1):
                self.names.append(f"W{w:03d}.T{t:03d}")
                self.is_text.append(False)
            if string_tags:
                self.names.append(f"W{w:03d}.S001")
                self.is_text.append(True)
        start = {bare_name(k): int(v) for k, v in (start_counts or {}).items()}
        unknown = set(start) - set(self.names)
        if unknown:
            raise ValueError(f"start_counts for unknown nodes: {sorted(unknown)[:5]}")
        self.counts = [start.get(n, 0) for n in self.names]
        if slow_every < 1 or not 0.0 <= slow_fraction <= 1.0:
            raise ValueError("slow_every must be >= 1 and slow_fraction within 0..1")
        self.slow_every = slow_every
        slow_per_well = round(slow_fraction * tags_per_well)
        self._slow = (
            [
                not text and int(n.rsplit(".T", 1)[-1]) > tags_per_well - slow_per_well
                for n, text in zip(self.names, self.is_text, strict=True)
            ]
            if slow_per_well and slow_every > 1
            else [False] * len(self.names)
        )
        self._ticks = 0
        self._rng = np.random.default_rng(seed)
        self._signal_params = _signal_params(len(self.names), wells, self._rng)

    def due(self) -> list[bool] | None:
        """Count one tick; which tags it writes (None: all of them)."""
        self._ticks += 1
        if self.slow_every > 1 and self._ticks % self.slow_every:
            return [not slow for slow in self._slow]
        return None

    def neutral(self) -> list[float | str]:
        return ["v0" if t else 0.0 for t in self.is_text]

    def next_values(self, t: float) -> list[float | str]:
        """The values of the next tick, ``t`` seconds after the start."""
        if self.mode == "counting":
            return [
                f"v{c + 1}" if text else float(c + 1) for c, text in zip(self.counts, self.is_text, strict=True)
            ]
        base, amp, sigma, period, phase = self._signal_params
        noise = self._rng.normal(0.0, sigma)
        v = np.maximum(base + amp * np.sin(2.0 * math.pi * t / period + phase) + noise, 0.0)
        out: list[float | str] = []
        for i, is_text in enumerate(self.is_text):
            if is_text:
                out.append(_PUMP_STATES[int(t / 30.0 + i) % len(_PUMP_STATES)])
            else:
                out.append(float(v[i]))
        return out


def _signal_params(n: int, wells: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], ...]:
    """Per tag: base, cycle amplitude, noise sigma, period and phase (each well a bit different)."""
    kinds = np.arange(n) % len(_SIGNALS)
    table = np.array([s[1:] for s in _SIGNALS], dtype=np.float64)
    well_scale = rng.uniform(0.7, 1.3, wells)[np.arange(n) * wells // n]
    phase = rng.uniform(0.0, 2.0 * math.pi, n)
    return (
        table[kinds, 0] * well_scale,
        table[kinds, 1] * well_scale,
        table[kinds, 2],
        table[kinds, 3],
        phase,
    )
