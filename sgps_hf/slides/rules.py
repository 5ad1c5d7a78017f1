"""Slide-level rules: how the probabilities of a slide's tiles become the slide's class probabilities.

* ``mean``: the mean tile probability of each class.
* ``topk_mean``: for each class, the mean of its ``top_fraction`` highest tile probabilities (at least one tile),
  renormalised to sum to one: a class present in a small region of the slide still counts.
* ``vote``: the fraction of tiles whose most probable class it is.

The rule a synthesized slide classifier uses is chosen on the meta-val pathology task
(``benchmarks/slides.md``) and written in its ``slide_rule.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError

RULES = ("mean", "topk_mean", "vote")


@dataclass(frozen=True)
class SlideRule:
    """An aggregation rule with its parameter."""

    name: str = "mean"
    top_fraction: float = 0.25  # used by topk_mean only

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise CheckpointError(f"Unknown slide rule {self.name!r}; use one of {', '.join(RULES)}.")
        if not 0.0 < float(self.top_fraction) <= 1.0:
            raise CheckpointError(f"top_fraction must be in (0, 1], got {self.top_fraction}.")

    def aggregate(self, tile_probs: np.ndarray) -> np.ndarray:
        """Slide class probabilities [C] from tile probabilities [N, C] (uniform when there are no tiles)."""
        probs = np.asarray(tile_probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"tile probabilities must be [tiles, classes], got shape {probs.shape}.")
        if len(probs) == 0:
            return np.full(probs.shape[1], 1.0 / probs.shape[1])
        if self.name == "mean":
            out = probs.mean(0)
        elif self.name == "vote":
            out = np.bincount(probs.argmax(1), minlength=probs.shape[1]).astype(np.float64)
        else:
            k = max(1, math.ceil(self.top_fraction * len(probs)))
            out = np.sort(probs, axis=0)[-k:].mean(0)
        return out / out.sum()

    def describe(self) -> str:
        if self.name == "mean":
            return "the mean of the tile probabilities of each class"
        if self.name == "vote":
            return "the fraction of tiles whose most probable class it is"
        return (
            f"for each class, the mean of its highest {self.top_fraction:g} fraction of tile probabilities "
            "(at least one tile), renormalised to sum to one"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SlideRule":
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise CheckpointError("slide rule must be a mapping with a 'name'.")
        return cls(name=data["name"], top_fraction=float(data.get("top_fraction", 0.25)))


#: The rule chosen on the meta-val pathology task (benchmarks/slides.md): top-k mean at 0.1 and 0.25 tied there
#: (0.762 over 6 episode x shots cells); the tie went to the middle of the grid.
DEFAULT_RULE = SlideRule("topk_mean", 0.25)
