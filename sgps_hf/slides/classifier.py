"""SlideClassifier: a synthesized timm tile classifier plus the slide rule, tiling and magnification that apply it.

Saved as an ordinary classifier folder (timm layout, ``sgps_task.json``, support tiles, card) plus
``slide_rule.json`` (rule, target um/px, tile size, tissue threshold, tile cap, the slides it was made from) and a
"Whole-slide use" section in the card that explains how to apply it with timm and a slide reader only.
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError
from ..models.sgps.classifier import SynthesizedClassifier
from .reader import Slide, open_slide
from .render import contact_sheet, heatmap
from .rules import SlideRule
from .tiling import SlideTiles, iter_tiles, tile_slide

RULE_FILE = "slide_rule.json"
RULE_FORMAT = "sgps-hf slide rule"
CARD_MARKER = "## Whole-slide use"
DEFAULT_TILING = {"target_mpp": 1.0, "tile_size": 128, "min_tissue": 0.5, "max_tiles": 2000, "tiles_per_slide": 8}
#: Support tiles per class, spread over its slides: 8 beat 16 on the meta-val pathology task (benchmarks/slides.md).
DEFAULT_TILES_PER_CLASS = 8


@dataclass
class SlidePrediction:
    """One screened slide: class probabilities, every tile's probabilities and the top tiles of each class."""

    slide: dict[str, Any]
    label_names: list[str]
    probabilities: dict[str, float]
    tile_probs: np.ndarray
    tiles: SlideTiles = field(repr=False)
    top_tiles: dict[str, list[tuple[float, int, np.ndarray]]] = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def heatmap(self, class_name: str | None = None):
        """PIL image: each tile painted by its probability of ``class_name`` (default: the predicted class)."""
        name = class_name or self.label
        column = self.label_names.index(name)
        values = self.tile_probs[:, column] if len(self.tile_probs) else np.zeros(0)
        t = self.tiles
        return heatmap(t.thumbnail, t.coords, t.side0, t.thumbnail_downsample, values)

    def contact_sheet(self, class_name: str | None = None, columns: int = 4):
        """PIL image: the tiles most probably ``class_name`` (default: the predicted class), best first."""
        name = class_name or self.label
        entries = self.top_tiles.get(name, [])
        captions = [f"{p:.2f} @ {tuple(int(v) for v in self.tiles.coords[i])}" for p, i, _ in entries]
        return contact_sheet([tile for _, _, tile in entries], captions, columns)

    def to_row(self) -> dict[str, Any]:
        """One CSV row: file, predicted label, per-class probabilities, tiles used, resolution."""
        row = {"slide": self.slide["file"], "label": self.label}
        row.update({f"p_{name}": round(p, 6) for name, p in self.probabilities.items()})
        row.update(tiles=len(self.tile_probs), tissue_tiles=self.tiles.num_tissue_tiles, mpp=self.slide["mpp"])
        row["mpp_recorded"] = self.slide["mpp_recorded"]
        return row


class SlideClassifier:
    """A tile classifier (:class:`SynthesizedClassifier`) and the slide rule that turns its tiles into a verdict."""

    def __init__(
        self,
        tile_classifier: SynthesizedClassifier,
        rule: SlideRule,
        tiling: Mapping[str, Any] | None = None,
        slides: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.tile_classifier = tile_classifier
        self.rule = rule
        self.tiling = {**DEFAULT_TILING, **(tiling or {})}
        self.slides = {name: list(entries) for name, entries in (slides or {}).items()}

    @property
    def label_names(self) -> list[str]:
        return self.tile_classifier.label_names

    # -- screening ------------------------------------------------------------------------------------
    def predict_slide(
        self,
        slide: str | os.PathLike | Slide,
        max_tiles: int | None = None,
        top_tiles: int = 8,
        batch_size: int = 16,
        progress: bool = False,
        backend: str = "auto",
        fallback_mpp: float | None = None,
        seed: int = 0,
    ) -> SlidePrediction:
        """Screen one slide: tiles streamed from the file in batches, never the whole slide in memory.

        ``batch_size`` bounds the network's activations (16 tiles: about 150 MiB above the loaded model).
        """
        opened = slide if isinstance(slide, Slide) else open_slide(slide, backend, fallback_mpp)
        try:
            tiles = tile_slide(
                opened,
                target_mpp=self.tiling["target_mpp"],
                tile_size=self.tiling["tile_size"],
                max_tiles=max_tiles or self.tiling["max_tiles"],
                min_tissue=self.tiling["min_tissue"],
                seed=seed,
            )
            probs = np.zeros((len(tiles), len(self.label_names)), dtype=np.float32)
            heaps: list[list[tuple[float, int, np.ndarray]]] = [[] for _ in self.label_names]
            for indices, batch in iter_tiles(tiles, batch_size, progress):
                batch_probs = self.tile_classifier.predict_proba(batch, batch_size=batch_size).numpy()
                probs[indices] = batch_probs
                for column, heap in enumerate(heaps):
                    for i, tile, p in zip(indices, batch, batch_probs[:, column], strict=True):
                        item = (float(p), -int(i), tile)
                        if len(heap) < top_tiles:
                            heapq.heappush(heap, item)
                        elif item[:2] > heap[0][:2]:
                            heapq.heapreplace(heap, item)
            slide_probs = self.rule.aggregate(probs)
            top = {
                name: [(p, -i, tile) for p, i, tile in sorted(heap, key=lambda e: e[:2], reverse=True)]
                for name, heap in zip(self.label_names, heaps, strict=True)
            }
            return SlidePrediction(
                slide=opened.describe(),
                label_names=self.label_names,
                probabilities={n: float(p) for n, p in zip(self.label_names, slide_probs, strict=True)},
                tile_probs=probs,
                tiles=tiles,
                top_tiles=top,
            )
        finally:
            if not isinstance(slide, Slide):
                opened.close()

    # -- persistence ----------------------------------------------------------------------------------
    def rule_record(self) -> dict[str, Any]:
        return {
            "format": RULE_FORMAT,
            "format_version": 1,
            "label_names": self.label_names,
            "rule": self.rule.to_dict(),
            "tiling": self.tiling,
            "slides": self.slides,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, include_support: bool = True) -> Path:
        """The tile classifier's folder (atomic), then ``slide_rule.json`` and the card's whole-slide section."""
        folder = Path(self.tile_classifier.save_pretrained(save_directory, include_support=include_support))
        _write_atomic(folder / RULE_FILE, json.dumps(self.rule_record(), indent=2, ensure_ascii=False))
        card = (folder / "README.md").read_text(encoding="utf-8")
        if CARD_MARKER not in card:
            _write_atomic(folder / "README.md", card.rstrip() + "\n\n" + card_section(self) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **kwargs: Any) -> "SlideClassifier":
        tile_classifier = SynthesizedClassifier.from_pretrained(path_or_repo_id, **kwargs)
        folder = tile_classifier._base[0] if tile_classifier._base else Path(path_or_repo_id)
        path = Path(folder) / RULE_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{folder} is a tile classifier without {RULE_FILE}; it was not saved as a slide classifier "
                "(use synthesize_slide_classifier / `sgps slide synthesize`)."
            )
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it or re-synthesize.") from exc
        if not isinstance(record, dict) or record.get("format") != RULE_FORMAT:
            raise CheckpointError(f"{path} is not an sgps-hf slide rule (key 'format' must be {RULE_FORMAT!r}).")
        if record.get("label_names") != tile_classifier.label_names:
            raise CheckpointError(
                f"{path}: label_names {record.get('label_names')} differ from the classifier's "
                f"{tile_classifier.label_names}; the files do not belong together."
            )
        tiling = record.get("tiling")
        if not isinstance(tiling, dict) or not all(isinstance(tiling.get(k), (int, float)) for k in DEFAULT_TILING):
            raise CheckpointError(f"{path}: 'tiling' must give numbers for {', '.join(DEFAULT_TILING)}.")
        return cls(tile_classifier, SlideRule.from_dict(record.get("rule")), tiling, record.get("slides") or {})

    def __repr__(self) -> str:
        return f"SlideClassifier(classes={self.label_names}, rule={self.rule}, target_mpp={self.tiling['target_mpp']})"


def _write_atomic(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def card_section(classifier: SlideClassifier) -> str:
    """The model card section that says how to apply the tile classifier to a whole slide, without sgps-hf."""
    t = classifier.tiling
    counts = ", ".join(f"{name}: {len(entries)}" for name, entries in classifier.slides.items())
    per_class = t.get("tiles_per_class")
    budget = f", at most {per_class} per class" if per_class else ""
    rule = classifier.rule
    if rule.name == "topk_mean":
        aggregate = (
            f"k = max(1, ceil({rule.top_fraction} * len(probs))); s = np.sort(probs, 0)[-k:].mean(0); s /= s.sum()"
        )
    elif rule.name == "vote":
        aggregate = "s = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)"
    else:
        aggregate = "s = probs.mean(0)"
    return f"""{CARD_MARKER}

This tile classifier was synthesized from whole-slide images ({counts} slides per class), each cut
into {t["tile_size"]}-pixel tiles at {t["target_mpp"]:g} um/px (at most {t["tiles_per_slide"]} tissue tiles per
slide{budget}, weakly labelled with the slide's class). A slide's verdict is {rule.describe()} (`{RULE_FILE}`).

To apply it without sgps-hf: open the slide with `tiffslide` or OpenSlide, read the level whose resolution is the
finest not above {t["target_mpp"]:g} um/px (level-0 um/px from the `mpp-x` property), cut a grid of tiles covering
{t["tile_size"]} x {t["target_mpp"]:g} um each, keep those at least {t["min_tissue"]:g} tissue (Otsu on the HSV
saturation of a thumbnail), resize each to {t["tile_size"]} px and classify it with the timm model, then aggregate:

```python
import numpy as np, timm, torch
model = timm.create_model("local-dir:<this folder>", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
probs = torch.cat([model(transform(tile).unsqueeze(0)).softmax(-1) for tile in tiles]).detach().numpy()  # PIL tiles
{aggregate}  # slide probabilities, in the order of model.pretrained_cfg["label_names"]
```

The slides' file names and sha256 are in `{RULE_FILE}`. Research use only; validate on local slides first."""
