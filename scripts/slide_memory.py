"""Peak memory of screening a 20,000 x 20,000-pixel slide (benchmarks/slide_memory.json).

Writes a synthetic pyramidal TIFF of that size tile by tile (real held-out prostate patches arranged on glass, each
shown at 2x so that a 128-px patch covers 256 level-0 pixels at 0.5 um/px), synthesizes a small slide classifier
from arranged slides of the same task with the bundled synthesizer, then screens the big slide in a fresh process
(``SlideClassifier.predict_slide`` with its default tile cap) and records that process's peak resident memory
(``ru_maxrss``), its memory before screening, the tiles screened and the wall time.

    python scripts/slide_memory.py --out benchmarks/slide_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from sgps_hf.slides import SlideClassifier
def rss_mib():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
clf = SlideClassifier.from_pretrained(sys.argv[1])
before = rss_mib()
start = time.perf_counter()
result = clf.predict_slide(sys.argv[2], progress=True)
seconds = time.perf_counter() - start
result.heatmap().save(sys.argv[4])
print(json.dumps({
    "rss_before_screening_mib": round(before, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "seconds": round(seconds, 1),
    "tiles_screened": int(len(result.tile_probs)),
    "tissue_tiles": int(result.tiles.num_tissue_tiles),
    "read_level": int(result.tiles.level),
    "slide": result.slide,
    "probabilities": result.probabilities,
}))
"""


def main() -> None:
    from sgps_hf import DEFAULT_CHECKPOINT, SGPSProcessor, SGPSSynthesizer
    from sgps_hf.slides import SlideClassSpec, SlideTask, synthesize_slide_classifier
    from sgps_hf.slides.arrange import arrange_slide, write_large_synthetic_slide, write_pyramidal_tiff

    data = Path(args.data_dir) / "pathology-prostate-gleason"
    names = ["benign_or_stroma", "gleason_pattern_4"]
    pools = {n: [np.asarray(Image.open(f).convert("RGB")) for f in sorted((data / n).iterdir())[:20]] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        big = write_large_synthetic_slide(tmp / "big.tiff", pools[names[0]] + pools[names[1]], side=args.side)
        write_seconds = time.perf_counter() - start
        rng = np.random.default_rng(0)
        classes = []
        for name in names:
            image, _ = arrange_slide(rng, pools[name], None, 1.0, grid=4)
            classes.append(SlideClassSpec(name, "", [write_pyramidal_tiff(tmp / f"{name}.tiff", image, 1.0)]))
        synth = SGPSSynthesizer.from_pretrained(DEFAULT_CHECKPOINT)
        processor = SGPSProcessor.from_pretrained(DEFAULT_CHECKPOINT)
        clf = synthesize_slide_classifier(synth, SlideTask(classes), processor, tiles_per_slide=8)
        clf.save_pretrained(tmp / "clf")
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp / "clf"), str(big), str(args.threads), str(tmp / "heat.png")],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(
            slide_side_px=args.side,
            slide_file_mib=round(big.stat().st_size / 2**20, 1),
            write_seconds=round(write_seconds, 1),
            torch_threads=args.threads,
            full_resolution_rgb_mib=round(args.side**2 * 3 / 2**20, 1),
        )
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "../shared/data"))
    parser.add_argument("--side", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    main()
