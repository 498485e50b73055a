"""PNG figures of the evaluation and benchmark summaries (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_orientation(summary: dict, path: str | Path, machine: str = "") -> None:
    """Bar chart: fraction of photos whose rotation was recovered, per rotation applied."""
    angles = list(summary["per_rotation"])
    values = [100 * summary["per_rotation"][a] for a in angles]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    bars = ax.bar([f"{a}\u00b0" for a in angles], values, color="#0072B2")
    ax.bar_label(bars, fmt="%.1f %%")
    ax.set_ylim(0, 105)
    ax.set_ylabel("rotation recovered (%)")
    ax.set_title(f"{summary['model']}: {summary['n_images']} photos, {100 * summary['accuracy']:.1f} % overall",
                 fontsize=10)
    _finish(fig, path, machine)


def plot_bench(summary: dict, path: str | Path) -> None:
    """Horizontal bars: where the time of one request goes (SAM encoder, each canonicalizer, a cached click)."""
    labels = [f"SAM {summary['sam_model']} encoder"]
    values = [summary["sam_encoder_ms"]]
    for name, figures in summary["canonicalizers"].items():
        labels += [f"{name} (served, {figures['precision']})", f"{name} (escnn, float32)"]
        values += [figures["serving_ms"], figures["escnn_ms"]]
    labels.append("click, cached embeddings")
    values.append(summary["click_ms"])
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2), dpi=120)
    bars = ax.barh(labels[::-1], values[::-1], color="#E69F00")
    ax.bar_label(bars, fmt="%.0f ms", padding=3)
    ax.set_xlabel("median time (ms)")
    ax.set_xlim(0, max(values) * 1.25)
    _finish(fig, path, summary["machine"])


def _finish(fig, path: str | Path, machine: str) -> None:
    if machine:
        fig.text(0.01, 0.01, machine, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04 if machine else 0, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
