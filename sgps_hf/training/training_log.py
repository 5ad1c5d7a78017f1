"""The training log: ``log.csv`` (one row per logged epoch or step, appended across resumes) and the learning-curve
plot of the body adaptation."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

from ..hub.atomic import atomic_write_text


class CsvLog:
    """Append-only CSV of training rows (machine-readable; survives restarts). The first column counts progress (an
    epoch or a step)."""

    #: The body adaptation's columns: one row per epoch (``seconds``: its wall time).
    FIELDS = ["epoch", "loss", "accuracy", "lr", "seconds"]

    def __init__(self, path: Path, enabled: bool, fields: list[str] | None = None) -> None:
        """``fields``: the columns (default: the body adaptation's ``FIELDS``)."""
        self.path, self.enabled = path, enabled
        self.fields = list(fields or self.FIELDS)

    def truncate_after(self, progress: int) -> None:
        """Drop the rows whose first column (epoch or step) is after ``progress``."""
        if not self.enabled or not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        key = self.fields[0]
        kept = [row for row in rows if (row.get(key) or "").isdigit() and int(row[key]) <= progress]
        if len(kept) < len(rows):
            # Atomically: a kill during the rewrite must not lose the rows that are kept.
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.path, buffer.getvalue())

    def timed_writer(self) -> Callable[[dict[str, float]], None]:
        """A ``write`` that adds each row's ``seconds``: the wall time since the previous row (or since this call)."""
        started = time.monotonic()

        def write(row: dict[str, float]) -> None:
            nonlocal started
            self.write({**row, "seconds": time.monotonic() - started})
            started = time.monotonic()

        return write

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
    """``learning_curve.png`` beside ``log.csv``: the body adaptation's training accuracy and loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (output / "log.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("loss")]
    epochs = [int(row["epoch"]) for row in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(epochs, [float(row["accuracy"]) for row in rows], "o-", label="meta-train classes (augmented)")
    ax_loss.plot(epochs, [float(row["loss"]) for row in rows], "o-")
    ax_acc.set(xlabel="epoch", ylabel="training accuracy", title="SGPS body adaptation")
    ax_acc.legend()
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (label smoothing 0.1)")
    for axis in (ax_acc, ax_loss):
        axis.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(output / "learning_curve.png", dpi=100)
    plt.close(fig)
