"""Slide-level few-shot benchmark on slides arranged from real labelled pathology patches (synthetic arrangement).

For each episode: the patches of every class are split in half (support half, query half); support slides
(up to max(--shots) per class) and --query slides per class are arranged from their halves
(``sgps_hf.slides.arrange``: one contiguous region of the slide's class among tissue of --normal-class, 30 % of the
slide for one slide in four, 60-100 % otherwise; slides of the normal class are all normal) and written as pyramidal
TIFFs. Then, on the same tiles:

* SGPS: ``synthesize_slide_classifier`` (tiles -> one ``SGPSSynthesizer.synthesize``), tile probabilities on the query
  slides' tiles, every slide rule of ``sgps_hf.slides.rules`` applied (accuracy of each is recorded);
* nearest centroid: each query tile goes to the class with the nearest mean support-tile feature; a slide's class
  probabilities are its tiles' vote shares;
* linear probe on mean tile features: logistic regression on each support slide's mean tile feature.

Features of the baselines are the synthesizer's own frozen body (pooled). Time per slide is ``predict_slide`` on one
query slide (read, tissue, tiles, classify, aggregate) at the torch thread count given.

    python scripts/slide_benchmark.py --task pathology-prostate-gleason --normal-class benign_or_stroma \
        --shots 1 3 5 --episodes 3 --out benchmarks/slide_fewshot_heldout.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sgps_hf import DEFAULT_CHECKPOINT, SGPSProcessor, SGPSSynthesizer
from sgps_hf.data.descriptions import class_description
from sgps_hf.evaluation.baselines import FeatureMemo, fit_linear_head
from sgps_hf.slides import SlideClassSpec, SlideRule, SlideTask, open_slide, synthesize_slide_classifier, tile_slide
from sgps_hf.slides.arrange import arrange_slide, write_pyramidal_tiff
from sgps_hf.slides.tiling import iter_tiles

RULES = [SlideRule("mean"), SlideRule("vote")] + [SlideRule("topk_mean", f) for f in (0.1, 0.25, 0.5)]


def rule_key(rule: SlideRule) -> str:
    return rule.name if rule.name != "topk_mean" else f"topk_mean@{rule.top_fraction:g}"


def load_patches(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.iterdir()) if f.is_file()]


def slide_fraction(rng: np.random.Generator) -> float:
    return 0.3 if rng.uniform() < 0.25 else float(rng.uniform(0.6, 1.0))


def make_slides(rng, pools, normal, names, count, out: Path, tag: str) -> dict[str, list[Path]]:
    slides = {}
    for name in names:
        slides[name] = []
        for i in range(count):
            other = None if name == normal else pools[normal]
            image, _ = arrange_slide(rng, pools[name], other, slide_fraction(rng), grid=args.grid)
            path = out / f"{tag}-{name}-{i}.tiff"
            write_pyramidal_tiff(path, image, mpp=1.0)
            slides[name].append(path)
    return slides


def tiles_of(path: Path, max_tiles: int) -> list[np.ndarray]:
    with open_slide(path) as slide:
        tiles = tile_slide(slide, max_tiles=max_tiles, seed=0)
        return [t for _, batch in iter_tiles(tiles) for t in batch]


def to_tensor(tiles: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    torch.set_num_threads(args.threads)
    data = Path(args.data_dir) / args.task
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    synth = SGPSSynthesizer.from_pretrained(DEFAULT_CHECKPOINT).eval()
    processor = SGPSProcessor.from_pretrained(DEFAULT_CHECKPOINT)
    body = FeatureMemo(synth.target)

    def features(tiles):
        return body(processor.image_processor.normalize_uint8(to_tensor(tiles)))

    patches = {name: load_patches(data / name) for name in names}
    results = {"episodes": []}
    for episode in range(args.first_episode, args.first_episode + args.episodes):
        rng = np.random.default_rng(1000 + episode)
        support_pool, query_pool = {}, {}
        for name in names:
            order = rng.permutation(len(patches[name]))
            half = len(order) // 2
            support_pool[name] = [patches[name][i] for i in order[:half]]
            query_pool[name] = [patches[name][i] for i in order[half:]]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            support = make_slides(rng, support_pool, args.normal_class, names, max(args.shots), tmp, "support")
            query = make_slides(rng, query_pool, args.normal_class, names, args.query, tmp, "query")
            query_list = [(name, path) for name in names for path in query[name]]
            query_tiles = [tiles_of(path, args.query_tiles) for _, path in query_list]
            query_labels = np.array([names.index(name) for name, _ in query_list])
            query_feats = [features(t) for t in query_tiles]
            record = {"episode": episode, "query_slides": len(query_list), "shots": {}}
            for shots in args.shots:
                task = SlideTask(
                    name=args.task,
                    classes=[
                        SlideClassSpec(name, class_description(args.task, name, "") or "", support[name][:shots])
                        for name in names
                    ],
                )
                start = time.perf_counter()
                clf = synthesize_slide_classifier(
                    synth, task, processor, tiles_per_slide=args.tiles_per_slide, tiles_per_class=args.tiles_per_class
                )
                synth_seconds = time.perf_counter() - start
                tile_probs = [clf.tile_classifier.predict_proba(t).numpy() for t in query_tiles]
                sgps = {
                    rule_key(rule): float(np.mean([rule.aggregate(p).argmax() for p in tile_probs] == query_labels))
                    for rule in RULES
                }
                # Baselines on the very same support tiles (the classifier keeps them) and query tiles.
                support_tiles = clf.tile_classifier.support
                s_feats = {name: features([np.asarray(im) for im in support_tiles[name]]) for name in names}
                centroids = torch.stack([s_feats[name].mean(0) for name in names])
                nc_pred = []
                for f in query_feats:
                    votes = torch.cdist(f, centroids).argmin(1).bincount(minlength=len(names)).float()
                    nc_pred.append(int(votes.argmax()))
                slide_feats, slide_labels = [], []
                for ci, name in enumerate(names):
                    per = clf.slides[name]
                    offset = 0
                    for entry in per:
                        slide_feats.append(s_feats[name][offset : offset + entry["tiles"]].mean(0))
                        slide_labels.append(ci)
                        offset += entry["tiles"]
                head = fit_linear_head(
                    torch.stack(slide_feats), torch.tensor(slide_labels), len(names), 100, 0.01, 1e-4
                )
                with torch.no_grad():
                    lp_pred = [int(head(f.mean(0, keepdim=True)).argmax()) for f in query_feats]
                start = time.perf_counter()
                clf.predict_slide(query_list[0][1])
                per_slide = time.perf_counter() - start
                record["shots"][str(shots)] = {
                    "sgps": sgps,
                    "nearest_centroid_vote": float(np.mean(np.array(nc_pred) == query_labels)),
                    "linear_probe_mean_features": float(np.mean(np.array(lp_pred) == query_labels)),
                    "support_tiles_per_class": {n: len(support_tiles[n]) for n in names},
                    "synthesis_seconds": synth_seconds,
                    "predict_slide_seconds": per_slide,
                    "query_tiles_per_slide": float(np.mean([len(t) for t in query_tiles])),
                }
                print(episode, shots, json.dumps(record["shots"][str(shots)]), flush=True)
        results["episodes"].append(record)
        Path(args.out).write_text(json.dumps({"config": vars(args), **results}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--normal-class", required=True)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "../shared/data"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--first-episode", type=int, default=0, help="episode i uses the seed 1000 + i")
    parser.add_argument("--query", type=int, default=3, help="query slides per class")
    parser.add_argument("--query-tiles", type=int, default=12, help="tiles per query slide (seeded sample)")
    parser.add_argument("--tiles-per-slide", type=int, default=8)
    parser.add_argument("--tiles-per-class", type=int, default=None, help="per-class tile budget (default: none)")
    parser.add_argument("--grid", type=int, default=6, help="cells per side of an arranged slide (128 px each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    main()
