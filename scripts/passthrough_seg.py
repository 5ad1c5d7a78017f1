"""Add the raw encoder pass-through to a meta-trained segmentation synthesizer:
``python scripts/passthrough_seg.py --config scripts/configs/seg_default.yaml [--base DIR] [--output DIR]``.

Reads the ``passthrough`` section of the training config (raw levels, principal components kept per level, the
block weight, the ridge strength and the prototype/ridge switch, all chosen on meta-val; see
benchmarks/SEGMENTATION.md), fits the per-channel standardisation and principal axes of the frozen encoder's
stages on meta-train images (``fit_images_per_task`` per binary task, seeded) and saves the synthesizer with
``save_pretrained``. The meta-learned decoder is the one of ``--base`` (default ``<output_dir>/best``), unchanged.

Legacy (the previous round's post-hoc route): ``scripts/configs/seg_default.yaml`` now trains with the raw block in
the loop (its ``model`` section sets ``raw_levels``), so this script needs a config whose ``passthrough`` section
carries the post-hoc keys (that of commit 17693a0).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from sgps_hf import SGPSSegConfig, SGPSSegSynthesizer
from sgps_hf.data.segmentation import load_seg_dataset, seg_splits, task_arrays
from sgps_hf.training.seg_meta_train import FeatureBank, SegTrainingConfig

CONFIG_KEYS = ("raw_levels", "raw_dims", "raw_weight", "learned_energy_norm", "prototype_max_k", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="scripts/configs/seg_default.yaml")
    parser.add_argument("--base", default=None, help="meta-trained synthesizer folder (default <output_dir>/best)")
    parser.add_argument("--output", default=None, help="default <output_dir>/passthrough")
    args = parser.parse_args()
    config = SegTrainingConfig.from_file(args.config)
    spec = dict(config.passthrough)
    if not spec.get("raw_levels"):
        raise SystemExit(f"{args.config} has no passthrough.raw_levels")
    torch.set_num_threads(int(config.num_threads or 1))
    base = Path(args.base or Path(config.output_dir) / "best")
    output = Path(args.output or Path(config.output_dir) / "passthrough")
    trained = SGPSSegSynthesizer.from_pretrained(base)
    values = trained.config.to_dict()
    values.update({k: spec[k] for k in CONFIG_KEYS if k in spec})
    for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
        values.pop(key, None)
    model = SGPSSegSynthesizer(SGPSSegConfig(**values))
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("raw_") for k in missing), (missing, unexpected)
    if "ridge_lambda" in spec:
        model.log_ridge_lambda.data.fill_(math.log(float(spec["ridge_lambda"])))
    model.eval()

    splits = seg_splits(config.splits_file)
    tasks = task_arrays(load_seg_dataset(config.data_dir, tasks=splits["meta_train"]), splits["meta_train"])
    rng = np.random.default_rng(int(spec.get("fit_seed", 0)))
    per_task = int(spec.get("fit_images_per_task", 48))
    for arrays in tasks.values():
        index = rng.permutation(len(arrays))[:per_task]
        arrays.images, arrays.masks, arrays.stems = (
            arrays.images[index],
            arrays.masks[index],
            [arrays.stems[i] for i in index],
        )
    bank = FeatureBank(model, tasks, mirrored=False, dtype=torch.float32)
    features = [
        torch.cat([bank.features[name][0][level] for name in sorted(tasks)])
        for level in range(len(model.config.out_indices))
    ]
    model.fit_raw_passthrough(features, shift_margin=float(spec.get("shift_margin", 2.0)))
    model.save_pretrained(output)
    info_file = base / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["passthrough"] = {
        **spec,
        "fit_tasks": sorted(tasks),
        "fit_images": sum(len(a) for a in tasks.values()),
        "base": str(base),
    }
    (output / "training.json").write_text(json.dumps(info, indent=2))
    print(
        f"wrote {output} (raw channels {model.raw_channels}, exported UperNet width {model.config.hidden_size + model.raw_channels})"
    )


if __name__ == "__main__":
    main()
