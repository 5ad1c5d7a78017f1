"""``sgps slide info | synthesize | predict | update``: whole-slide commands of the ``sgps`` CLI."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from ..errors import OutputPathError, UsageError


def register(subparsers: Any) -> None:
    slide = subparsers.add_parser("slide", help="whole-slide pathology: tile slides, synthesize, screen new slides")
    commands = slide.add_subparsers(dest="slide_command", required=True, metavar="SLIDE_COMMAND")

    info = commands.add_parser("info", help="levels, resolution and tissue tiles of slide files")
    info.add_argument("slides", nargs="+", help="slide files (SVS, NDPI, pyramidal TIFF...) or folders of them")
    info.add_argument("--overlay-dir", default=None, help="write <slide>_tiles.png (kept tiles over the thumbnail)")
    _tiling_arguments(info)
    info.set_defaults(handler=_info)

    synth = commands.add_parser("synthesize", help="synthesize a slide classifier from a slide task file")
    synth.add_argument("--task", required=True, help="YAML/JSON: name, modality, classes (name, description, slides)")
    synth.add_argument("--out", required=True, help="output folder (timm tile classifier + slide_rule.json + card)")
    synth.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: bundled)")
    synth.add_argument("--tiles-per-slide", type=int, default=8, help="support tiles per slide at most")
    synth.add_argument("--tiles-per-class", type=int, default=8, help="support tiles per class (0: no budget)")
    synth.add_argument("--rule", default=None, choices=["mean", "topk_mean", "vote"], help="default: the chosen one")
    synth.add_argument("--top-fraction", type=float, default=0.25, help="fraction of tiles for --rule topk_mean")
    _tiling_arguments(synth)
    synth.set_defaults(handler=_synthesize)

    predict = commands.add_parser("predict", help="screen slides: probabilities, heatmap, top-tile and tile PNGs, CSV")
    predict.add_argument("--classifier", required=True, help="slide classifier folder")
    predict.add_argument("slides", nargs="+", help="slide files or folders of them")
    predict.add_argument("--out-dir", required=True, help="folder for predictions.csv and the PNGs of each slide")
    predict.add_argument("--max-tiles", type=int, default=None, help="cap on tiles per slide (default: the folder's)")
    predict.add_argument("--top-tiles", type=int, default=8)
    predict.add_argument(
        "--fallback-mpp",
        type=float,
        default=None,
        help="um/px at level 0 of slides that record none (default: assume 0.5, with a warning)",
    )
    predict.add_argument("--progress", action="store_true", help="show a progress bar over each slide's tiles")
    predict.set_defaults(handler=_predict)

    update = commands.add_parser("update", help="add newly verified slides to a slide classifier and re-synthesize")
    update.add_argument("--classifier", required=True, help="slide classifier folder (updated in place)")
    update.add_argument("--add", action="append", required=True, metavar="CLASS=SLIDE", help="repeatable")
    update.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: bundled)")
    update.set_defaults(handler=_update)


def _tiling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-mpp", type=float, default=1.0, help="tile resolution in um/px (default 1.0)")
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--min-tissue", type=float, default=0.5, help="fraction of a tile that must be tissue")
    parser.add_argument(
        "--fallback-mpp",
        type=float,
        default=None,
        help="um/px at level 0 of slides that record none (default: assume 0.5, with a warning)",
    )


def slide_files(items: list[str]) -> list[Path]:
    """The slide files named, folders expanded to the slide files in them (sorted)."""
    from ..slides.reader import SLIDE_SUFFIXES

    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
            if not found:
                raise UsageError(f"Folder {path} holds no slide files ({', '.join(SLIDE_SUFFIXES)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"Slide {path} does not exist; check the path.")
    return files


def _free_target(path: Path) -> Path:
    if path.exists():
        raise OutputPathError(f"{path} already exists; nothing was overwritten. Choose another --out-dir.")
    return path


def _info(args: argparse.Namespace) -> int:
    from ..slides import open_slide, tile_overlay, tile_slide

    out = Path(args.overlay_dir) if args.overlay_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for path in slide_files(args.slides):
        with open_slide(path, fallback_mpp=args.fallback_mpp) as slide:
            tiles = tile_slide(slide, args.target_mpp, args.tile_size, min_tissue=args.min_tissue)
            d = tiles.describe()
            print(
                f"{path}: {d['dimensions'][0]}x{d['dimensions'][1]} px, {d['levels']} levels, "
                f"{d['mpp']:.4g} um/px{_mpp_source(d['mpp_recorded'], args.fallback_mpp)}, {d['backend']}; "
                f"{len(tiles)} tissue tiles of {args.tile_size} px at {args.target_mpp:g} um/px "
                f"(level {d['read_level']})"
            )
            if out:
                tile_overlay(tiles).save(_free_target(out / f"{path.stem}_tiles.png"))
    return 0


def _load_synthesizer(name: str | None):
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor

    checkpoint = name or DEFAULT_CHECKPOINT
    return SGPSSynthesizer.from_pretrained(checkpoint), SGPSProcessor.from_pretrained(checkpoint)


def _synthesize(args: argparse.Namespace) -> int:
    from ..hub.classifier_folder import check_save_target
    from ..slides import DEFAULT_RULE, SlideRule, SlideTask, synthesize_slide_classifier

    check_save_target(args.out)
    task = SlideTask.from_file(args.task)
    rule = SlideRule(args.rule, args.top_fraction) if args.rule else DEFAULT_RULE
    synth, processor = _load_synthesizer(args.synthesizer)
    classifier = synthesize_slide_classifier(
        synth,
        task,
        processor,
        rule=rule,
        tiles_per_slide=args.tiles_per_slide,
        tiles_per_class=args.tiles_per_class or None,
        target_mpp=args.target_mpp,
        tile_size=args.tile_size,
        min_tissue=args.min_tissue,
        fallback_mpp=args.fallback_mpp,
    )
    print(f"Saved {classifier} to {classifier.save_pretrained(args.out)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..slides import SlideClassifier, tile_overlay

    if args.max_tiles is not None and args.max_tiles < 1:
        raise UsageError("--max-tiles must be at least 1.")
    files = slide_files(args.slides)
    classifier = SlideClassifier.from_pretrained(args.classifier)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = _free_target(out / "predictions.csv")
    rows = []
    for path in files:
        result = classifier.predict_slide(
            path,
            max_tiles=args.max_tiles,
            top_tiles=args.top_tiles,
            progress=args.progress,
            fallback_mpp=args.fallback_mpp,
        )
        result.heatmap().save(_free_target(out / f"{path.stem}_heatmap.png"))
        result.contact_sheet().save(_free_target(out / f"{path.stem}_top_tiles.png"))
        tile_overlay(result.tiles).save(_free_target(out / f"{path.stem}_tiles.png"))
        rows.append({**result.to_row(), "slide": str(path)})
        top = sorted(result.probabilities.items(), key=lambda kv: -kv[1])[:3]
        print(f"{path}: " + ", ".join(f"{k} {v:.3f}" for k, v in top) + f" ({len(result.tile_probs)} tiles)")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"Wrote {csv_path} and the heatmap / top-tile PNGs of {len(rows)} slide(s) to {out}")
    return 0


def _update(args: argparse.Namespace) -> int:
    from ..slides import SlideClassifier, update_slide_classifier

    additions: dict[str, list[str]] = {}
    for item in args.add:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--add {item!r} must be CLASS=SLIDE, e.g. --add tumour=new_slide.svs")
        additions.setdefault(name, []).append(path)
    classifier = SlideClassifier.from_pretrained(args.classifier)
    synth, processor = _load_synthesizer(args.synthesizer)
    updated = update_slide_classifier(synth, classifier, additions, processor)
    print(f"Updated to version {updated.tile_classifier.version}: {updated.save_pretrained(args.classifier)}")
    return 0


def _mpp_source(recorded: bool, fallback_mpp: float | None) -> str:
    """How a slide's resolution was known, for ``sgps slide info``: recorded (nothing), given or assumed."""
    if recorded:
        return ""
    return " (--fallback-mpp)" if fallback_mpp is not None else " (assumed)"
