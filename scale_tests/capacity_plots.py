"""The capacity scenario's PNG plots: offered vs stored, latency percentiles, CPU per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_all(stages: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = list(stages)
    out = []

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        steps = stages[name]
        x = [s["offered"] for s in steps]
        ax.plot(x, [s["values_per_s"] for s in steps], "o-", label="stored values/s")
        if name != "push":
            ax.plot(x, x, "--", color="grey", label="offered = stored")
            ax.set_xlabel("offered values/s")
        else:
            ax.set_xlabel("concurrent clients")
        lost = [s for s in steps if s.get("lost", 0) > 0]
        if lost:
            ax.plot([s["offered"] for s in lost], [s["values_per_s"] for s in lost], "rx", ms=10, label="loss")
        ax.set_ylabel("values/s")
        ax.set_title(f"{name}: offered vs stored")
        ax.legend()
    fig.tight_layout()
    out.append(folder / "offered_vs_stored.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        steps = stages[name]
        x = [s["offered"] for s in steps]
        for key, style in (("latency_p50_ms", "o-"), ("latency_p99_ms", "s-")):
            ax.plot(x, [s.get(key) or 0 for s in steps], style, label=key.split("_")[1])
        ax.axhline(1000, color="red", ls=":", label="1 s limit")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients" if name == "push" else "offered values/s")
        ax.set_ylabel("ms (push: acknowledgement; others: source to commit)")
        ax.set_title(f"{name}: latency")
        ax.legend()
    fig.tight_layout()
    out.append(folder / "latency.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        steps = stages[name]
        x = [s["offered"] for s in steps]
        for role in ("connection_actors", "writers", "database"):
            per_m = [s["cpu_s"].get(role, 0.0) / s["values"] * 1e6 if s["values"] else 0.0 for s in steps]
            if any(per_m):
                ax.plot(x, per_m, "o-", label=role)
        ax.set_xlabel("concurrent clients" if name == "push" else "offered values/s")
        ax.set_ylabel("CPU seconds per million values")
        ax.set_title(f"{name}: CPU per stage")
        ax.legend()
    fig.tight_layout()
    out.append(folder / "cpu_per_stage.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out
