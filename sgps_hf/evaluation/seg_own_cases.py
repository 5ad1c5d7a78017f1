"""Check a synthesized segmenter on your own labelled images, and segment many images with overlays.

- :func:`evaluate_segmenter`: Dice and IoU per image (and their means) on a folder in the segmentation layout
  (``images/<stem>.*`` + ``masks/<label>/<stem>.png``) or on (image, mask) pairs; :func:`write_seg_report` writes
  ``report.md``, ``per_image.csv`` and overlays of the worst cases (prediction red, reference outline green).
- :func:`segment_files`: one row per image (foreground share, mask file, overlay file, or the error), the others
  going on when one file is bad.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..errors import DataError
from ..metrics import dice_iou
from ..trust.batch import FILE_ERRORS
from ..trust.report import check_report_folder

RED, GREEN = np.array([220, 30, 30], np.float64), np.array([0, 200, 0], np.uint8)


def mask_overlay(image: Image.Image, mask: np.ndarray, reference: np.ndarray | None = None) -> Image.Image:
    """``image`` with ``mask`` tinted red and, when given, the outline of ``reference`` in green."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * RED
    out = rgb.clip(0, 255).astype(np.uint8)
    if reference is not None:
        edges = Image.fromarray(np.asarray(reference, dtype=np.uint8) * 255).filter(ImageFilter.FIND_EDGES)
        out[np.asarray(edges) > 0] = GREEN
    return Image.fromarray(out)


def evaluate_segmenter(segmenter: Any, data: Any) -> dict[str, Any]:
    """Dice / IoU per image on ``data`` (a folder in the segmentation layout, or (image, mask) pairs).

    Returns ``{"dice", "iou", "num_images", "per_image": [{"name", "dice", "iou"}], "pairs"}``; ``pairs`` are the
    (image path or object, mask) inputs, for the worst-case overlays.
    """
    from ..models.sgps_seg.processing_sgps_seg import load_mask, load_rgb
    from ..models.sgps_seg.task import folder_pairs

    if isinstance(data, (str, Path)):
        masks = Path(data) / "masks"
        labels = {p.name for p in masks.iterdir() if p.is_dir()} if masks.is_dir() else set()
        # the segmenter's own label when the folder has it, else the folder's only label. Not a SegmentationTask:
        # the limits of a support set (64 examples, some foreground) do not apply to cases to evaluate on.
        _, pairs = folder_pairs(Path(data), segmenter.label if segmenter.label in labels else None)
    else:
        pairs = list(data)
    if not pairs:
        raise DataError("No (image, mask) pairs to evaluate; give a folder with images/ and masks/<label>/.")
    images = [load_rgb(image) for image, _ in pairs]
    references = [
        load_mask(mask, image.size, name=f"mask {i}", allow_empty=True)
        for i, (image, (_, mask)) in enumerate(zip(images, pairs, strict=True))
    ]
    predictions = segmenter.predict(images)
    scores = dice_iou(predictions, references, per_image=True)
    names = [Path(p).name if isinstance(p, (str, Path)) else f"#{i}" for i, (p, _) in enumerate(pairs)]
    per_image = [
        {"name": n, "dice": float(d), "iou": float(j)}
        for n, d, j in zip(names, scores["dice_per_image"], scores["iou_per_image"], strict=True)
    ]
    return {
        "dice": float(scores["dice"]),
        "iou": float(scores["iou"]),
        "num_images": len(pairs),
        "per_image": per_image,
        "images": images,
        "predictions": predictions,
        "references": references,
    }


def write_seg_report(result: dict[str, Any], out_dir: str | Path, worst: int = 5) -> Path:
    """``report.md``, ``per_image.csv`` and ``worst-<k>-<name>.png`` overlays of the ``worst`` lowest-Dice images."""
    out = check_report_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["per_image"]
    with (out / "per_image.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "dice", "iou"])
        writer.writeheader()
        writer.writerows(rows)
    order = np.argsort([r["dice"] for r in rows], kind="stable")[:worst]
    lines = [
        "# Segmenter evaluation",
        "",
        f"{result['num_images']} labelled images of your own: mean Dice **{result['dice']:.3f}**, "
        f"mean IoU **{result['iou']:.3f}** (per image in per_image.csv).",
        "",
        "## Worst cases (prediction red, reference outline green)",
        "",
    ]
    for rank, index in enumerate(order, start=1):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(rows[index]["name"]).stem)
        file = f"worst-{rank}-{name}.png"
        overlay = mask_overlay(result["images"][index], result["predictions"][index], result["references"][index])
        overlay.save(out / file)
        lines += [f"{rank}. {rows[index]['name']}: Dice {rows[index]['dice']:.3f}, IoU {rows[index]['iou']:.3f}", ""]
        lines += [f"![{file}]({file})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def segment_files(
    segmenter: Any,
    files: Sequence[Path],
    out_dir: Path,
    overlay: bool = False,
    progress: bool = False,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Segment each file into ``out_dir/<stem>_mask.png`` (0/255) and, with ``overlay``, ``<stem>_overlay.png``.

    Files are read one by one (a bad file gets an error row, the others go on) and segmented ``batch_size`` at a
    time; the masks are those of one-by-one prediction.
    """
    from tqdm.auto import tqdm

    from ..imaging import load_image

    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    with tqdm(total=len(files), desc="Segmenting", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            loaded = []
            for path in files[start : start + batch_size]:
                try:
                    loaded.append((path, load_image(path)))
                except FILE_ERRORS as exc:
                    rows.append(
                        {"file": str(path), "foreground": None, "mask": None, "overlay": None, "error": str(exc)}
                    )
            masks = segmenter.predict([image for _, image in loaded], batch_size=batch_size) if loaded else []
            for (path, image), mask in zip(loaded, masks, strict=True):
                rows.append(_write_mask(path, image, mask, out_dir, overlay, used))
            bar.update(len(files[start : start + batch_size]))
    order = {str(path): i for i, path in enumerate(files)}
    return sorted(rows, key=lambda row: order[row["file"]])  # input order, error rows included


def _write_mask(
    path: Path, image: Image.Image, mask: np.ndarray, out_dir: Path, overlay: bool, used: set[str]
) -> dict[str, Any]:
    stem = path.stem
    while stem in used:  # the same name in two folders: never overwrite this run's own masks
        stem += "_2"
    used.add(stem)
    target = out_dir / f"{stem}_mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(target)
    shown = None
    if overlay:
        shown = out_dir / f"{stem}_overlay.png"
        mask_overlay(image, mask).save(shown)
    return {
        "file": str(path),
        "foreground": float(mask.mean()),
        "mask": str(target),
        "overlay": None if shown is None else str(shown),
        "error": None,
    }
