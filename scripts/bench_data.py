#!/usr/bin/env python
"""Benchmark the episode pipeline: cached uint8 arrays vs decoding image files every episode.

Measures, in one run on the meta_train split of the shared data:

* the one-off cache build (``load_dataset("imagefolder")`` + decoding every image to ``--image-size``),
  and a warm reload of the same pools from the cache;
* episodes/s of ``EpisodeSampler`` (5-way 5-shot 5-query by default) over the cached arrays;
* episodes/s of the same sampler, same episodes, when every image is read from its file and
  decoded/resized on demand (checked to give identical tensors).

    python scripts/bench_data.py                       # writes benchmarks/data_pipeline.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Image as ImageFeature
from PIL import Image

from sgps_hf import SGPSConfig
from sgps_hf.data import EpisodeSampler, build_pools, load_image_dataset, load_splits, task_dir, to_rgb_square
from sgps_hf.data.episodes import ClassPool

REPO = Path(__file__).resolve().parents[1]


class FileImages:
    """Looks like a uint8 [m, H, W, 3] array to the sampler, but decodes the files on each access."""

    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size
        self.shape = (len(paths), image_size, image_size, 3)
        self.ndim, self.dtype = 4, np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self._decode(self.paths[i]) for i in np.atleast_1d(index)])

    def _decode(self, path: str) -> np.ndarray:
        with Image.open(path) as image:
            return to_rgb_square(image, self.image_size)


def file_pools(pools: list[ClassPool], image_size: int, data_dir: str | None) -> list[ClassPool]:
    """The same classes as ``pools``, with images read from their files in the same order."""
    paths: dict[tuple[str, str], list[str]] = {}
    for task in sorted({pool.task for pool in pools}):
        ds = load_image_dataset(task_dir(task, data_dir)).cast_column("image", ImageFeature(decode=False))
        names = ds.features["label"].names
        for item, label in zip(ds["image"], ds["label"], strict=True):
            paths.setdefault((task, names[label]), []).append(item["path"])
    return [
        ClassPool(p.task, p.class_name, FileImages(paths[(p.task, p.class_name)], image_size), p.text) for p in pools
    ]


def time_episodes(sampler: EpisodeSampler, count: int) -> float:
    """Episodes per second over indices 0..count-1."""
    start = time.perf_counter()
    for i in range(count):
        sampler.episode(i)
    return count / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="meta_train")
    parser.add_argument("--image-size", type=int, default=SGPSConfig().image_size)  # the shipped model's
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=5)
    parser.add_argument("--cached-episodes", type=int, default=3000)
    parser.add_argument("--decoded-episodes", type=int, default=150)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "data_pipeline.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the sampler is single-threaded numpy; keep torch from competing
    with tempfile.TemporaryDirectory() as tmp:
        # Fresh caches, so the build time is the real one-off cost.
        datasets.config.HF_DATASETS_CACHE = Path(tmp) / "datasets"
        start = time.perf_counter()
        pools = build_pools(args.split, args.image_size, args.data_dir, cache_dir=tmp)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        pools = build_pools(args.split, args.image_size, args.data_dir, cache_dir=tmp)
        warm_s = time.perf_counter() - start

        kwargs = dict(n_way=args.n_way, k_shot=args.k_shot, q_query=args.q_query, seed=0)
        cached = EpisodeSampler(pools, **kwargs)
        decoded = EpisodeSampler(file_pools(pools, args.image_size, args.data_dir), **kwargs)
        for i in range(5):  # same episodes, same pixels: the comparison is like for like
            a, b = cached.episode(i), decoded.episode(i)
            assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
        cached.episode(0), decoded.episode(0)  # warm-up
        cached_eps = time_episodes(cached, args.cached_episodes)
        decoded_eps = time_episodes(decoded, args.decoded_episodes)

    n_images = sum(len(p) for p in pools)
    n_tasks = len({p.task for p in pools})
    report = render(args, build_s, warm_s, cached_eps, decoded_eps, n_images, len(pools), n_tasks)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")
    print(report)
    return 0


def render(args, build_s, warm_s, cached_eps, decoded_eps, n_images, n_classes, n_tasks) -> str:
    images_per_episode = args.n_way * (args.k_shot + args.q_query)
    splits = load_splits()
    num_held_out, num_meta_val = len(splits.held_out_tasks), len(splits.meta_val_tasks)
    return f"""# Data pipeline benchmark

Episodes of {args.n_way}-way {args.k_shot}-shot {args.q_query}-query at {args.image_size} px
({images_per_episode} images each) from the `{args.split}` split of the shared data
({n_tasks} tasks, {n_classes} classes, {n_images} images; {num_held_out} held-out and {num_meta_val} meta-val tasks).
Generated by `python scripts/bench_data.py` (same run for every number; identical episodes on both paths,
checked tensor for tensor).

| measurement | value |
|---|---|
| one-off cache build (imagefolder load + decode all {n_images} images) | {build_s:.1f} s |
| warm reload of the same pools from the cache | {warm_s:.1f} s |
| episodes/s from cached uint8 arrays ({args.cached_episodes} episodes) | {cached_eps:.0f} |
| episodes/s decoding the image files every episode ({args.decoded_episodes} episodes) | {decoded_eps:.1f} |
| speed-up of the cache | {cached_eps / decoded_eps:.0f}x |

The cache pays for itself after about {build_s * decoded_eps:.0f} episodes' worth of decoding
(build time x decoded episodes/s).

Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores visible,
shared with other jobs (1-minute load average {os.getloadavg()[0]:.1f} at the end of the run: absolute numbers are
noisy, the ratio less so), torch {torch.__version__}, datasets {datasets.__version__},
single-threaded sampling. Command: `{" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) or "bench_data.py"}`.
"""


if __name__ == "__main__":
    raise SystemExit(main())
