"""The run's plot.png: loss (left) and accuracy (right) per epoch, train and test.

matplotlib is imported here only, with the non-interactive Agg backend, so training
never needs a display. The PNG is written atomically.
"""
from __future__ import annotations

import io

from ..io import atomic_write


def plot_history(history: list[dict], path, title: str = "") -> None:
    """Draw ``history`` (the per-epoch records of metrics.json) into the PNG ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("test", "-s")):
            values = [_number(h.get(f"{split}_{key}")) for h in history]
            if any(v == v for v in values):                # any non-NaN
                ax.plot(epochs, values, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if _all_positive(history):
        ax_loss.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _all_positive(history) -> bool:
    values = [_number(h.get(k)) for h in history for k in ("train_loss", "test_loss")]
    values = [v for v in values if v == v]
    return bool(values) and min(values) > 0 and max(values) < float("inf")
