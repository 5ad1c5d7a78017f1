"""The training log: ``training_log.csv`` (one row per logged step, appended across resumes) and its learning-curve
plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..hub.atomic import atomic_write_text


class CsvLog:
    """Append-only CSV of training rows (machine-readable; survives restarts)."""

    FIELDS = ["step", "loss", "episode_accuracy", "lr", "episodes_per_s", "val_accuracy"]

    def __init__(self, path: Path, enabled: bool, fields: list[str] | None = None) -> None:
        """``fields``: the columns (default: the classification meta-training's ``FIELDS``)."""
        self.path, self.enabled = path, enabled
        self.fields = list(fields or self.FIELDS)

    def truncate_after(self, step: int) -> None:
        """Drop the rows of steps after ``step``."""
        if not self.enabled or not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if (row.get("step") or "").isdigit() and int(row["step"]) <= step]
        if len(kept) < len(rows):
            # Atomically: a kill during the rewrite must not lose the rows that are kept.
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.path, buffer.getvalue())

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow(row)


def plot_learning_curve(output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((output / "log.csv").open()))
    train = [(int(r["step"]), float(r["episode_accuracy"]), float(r["loss"])) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_accuracy"])) for r in rows if r["val_accuracy"]]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps, accs, losses = zip(*train, strict=False)
        window = max(1, len(accs) // 20)
        smooth = np.convolve(accs, np.ones(window) / window, mode="valid")
        ax_acc.plot(steps[window - 1 :], smooth, label="train episodes (smoothed)")
        ax_loss.plot(steps, losses)
    if val:
        ax_acc.plot(*zip(*val, strict=False), "o-", label="meta-val episodes")
    ax_acc.set(xlabel="step", ylabel="query accuracy", title="SGPS meta-training")
    ax_acc.legend()
    ax_loss.set(xlabel="step", ylabel="query cross-entropy")
    fig.tight_layout()
    fig.savefig(output / "learning_curve.png", dpi=100)
    plt.close(fig)
