"""Meta-val selection of the raw pass-through and head (the grid behind the `passthrough` section of
scripts/configs/seg_default.yaml).

Research script, run as `python scripts/select_seg_passthrough.py meta_val 24` from the repository root (writes runs/):
ridge / prototype heads on [learned decoder channels, raw standardised encoder stages] with direct bilinear upsampling,
per-level 1/sqrt(dim) weighting, PCA on meta-train images. The first grid (learned / raw / concatenated features, alpha
0.5-2, lambda 0.03-1) and this finer one were both run on meta-val only; their ranked tables are in
benchmarks/seg_selection_meta_val.txt.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
# The sgps_hf imports follow set_num_threads on purpose (hence the E402 exceptions).
from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer  # noqa: E402
from sgps_hf.data.segmentation import SegEpisodeSampler, load_seg_dataset, seg_splits, task_arrays  # noqa: E402
from sgps_hf.evaluation.segmentation import panet_predict  # noqa: E402
from sgps_hf.metrics import dice_per_image  # noqa: E402
from sgps_hf.training.seg_features import FeatureBank  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("split", help="meta_val (the selection split) or another split of seg_splits.yaml")
parser.add_argument("episodes", type=int, help="episodes per task and K")
args = parser.parse_args()
split, n_ep = args.split, args.episodes
sp = seg_splits()
model = SGPSSegSynthesizer.from_pretrained(DEFAULT_SEG_CHECKPOINT).eval()
t0 = time.time()
tasks = task_arrays(load_seg_dataset(tasks=sp[split]), sp[split])
bank = FeatureBank(model, tasks, mirrored=False, dtype=torch.float32)
print(
    "bank",
    time.time() - t0,
    {k: len(v) for k, v in tasks.items()},
    [f.shape for f in bank.features[next(iter(tasks))][0]],
    flush=True,
)
# per-channel stats of raw stages from meta-train (fair: training data)
stats = torch.load("runs/raw_stats.pt") if os.path.exists("runs/raw_stats.pt") else None
if stats is None:
    tr = task_arrays(load_seg_dataset(tasks=sp["meta_train"]), sp["meta_train"])
    rng = np.random.default_rng(0)
    sub = {n: a for n, a in tr.items()}
    for _name, a in sub.items():
        idx = rng.permutation(len(a))[:48]
        a.images, a.masks, a.stems = a.images[idx], a.masks[idx], [a.stems[i] for i in idx]
    tb = FeatureBank(model, sub, mirrored=False, dtype=torch.float32)
    stats = []
    for level in range(4):
        x = torch.cat(
            [tb.features[n][0][level].permute(0, 2, 3, 1).reshape(-1, tb.features[n][0][level].shape[1]) for n in sub]
        )
        mu, sd = x.mean(0), x.std(0)
        xs = (x - mu) / sd
        cov = xs.T @ xs / len(xs)
        evals, evecs = torch.linalg.eigh(cov)
        stats.append({"mean": mu, "std": sd, "evecs": evecs.flip(1), "evals": evals.flip(0)})
        print(
            "level",
            level,
            x.shape,
            "var explained top16/32/64",
            [float(evals.flip(0)[:d].sum() / evals.sum()) for d in (16, 32, 64)],
            flush=True,
        )
    torch.save(stats, "runs/raw_stats.pt")


def raw_feats(levels, use, dims, size):
    out = []
    for level in use:
        f = levels[level]
        s = stats[level]
        x = (f - s["mean"][None, :, None, None]) / s["std"][None, :, None, None]
        if dims.get(level):
            x = torch.einsum("bchw,cd->bdhw", x, s["evecs"][:, : dims[level]])
        c = x.shape[1]
        x = x / np.sqrt(c)  # each level total energy ~1 per pixel
        out.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def head(x, y, kind, lam):
    k, c, h, w = x.shape
    y = F.adaptive_avg_pool2d(y, (h, w)).reshape(-1).double()
    X = x.permute(0, 2, 3, 1).reshape(-1, c).double()
    fg, bg = y.sum(), (1 - y).sum()
    if kind == "proto":
        p1 = (X * y[:, None]).sum(0) / fg
        p0 = (X * (1 - y)[:, None]).sum(0) / bg
        return 2 * (p1 - p0), -(p1**2).sum() + (p0**2).sum()
    a = 0.5 * y / fg + 0.5 * (1 - y) / bg
    t = 2 * y - 1
    Xa = torch.cat([X, torch.ones_like(X[:, :1])], 1)
    G = Xa.T @ (Xa * a[:, None])
    e = torch.diagonal(G)[:c].mean()
    R = torch.eye(c + 1, dtype=X.dtype) * lam * e
    R[c, c] = 1e-6 * e
    s = torch.linalg.solve(G + R, Xa.T @ (a * t))
    return s[:c], s[c]


lam0 = float(model.log_ridge_lambda.exp())
print("learned lambda", lam0)
variants = {}
for lam in [0.03, 0.1, 0.3]:
    variants[("raw0123p32", "ridge", lam, 1.0)] = []
    for alpha in [2.0, 4.0, 8.0]:
        variants[("cat0123p32", "ridge", lam, alpha)] = []
for lam in [0.3, 0.645]:
    variants[("raw0123", "ridge", lam, 1.0)] = []
    variants[("cat0123", "ridge", lam, 4.0)] = []
ks = [1, 2, 5, 8]
sampler = SegEpisodeSampler({n: len(a) for n, a in tasks.items()}, (1, 8), 8, 2024)
res = {}
dec_cache = {}
for task in sorted(tasks):
    for k in ks:
        eps = sampler.fixed(task, k, n_ep)
        scores = {v: [] for v in variants}
        pan = []
        for ep in eps:
            idx = list(ep.support) + list(ep.query)
            levels, masks = bank.get(task, idx)
            with torch.no_grad():
                D = model.decode(levels)
            size = D.shape[-2:]
            # learned features energy normalisation: scale learned so per-pixel energy ~1 (on support)
            dn = D / D[:k].pow(2).sum(1).mean().sqrt()
            feats = {"learned": dn}
            r01 = raw_feats(levels, [0, 1], {}, size)
            r0123 = raw_feats(levels, [0, 1, 2, 3], {}, size)
            rp = raw_feats(levels, [0, 1, 2, 3], {2: 32, 3: 32}, size)
            feats.update({"raw01": r01, "raw0123": r0123, "raw0123p32": rp})
            tgt = masks[k:, 0].bool()
            pan.extend(dice_per_image(panet_predict(bank, ep, [0, 1, 2, 3]), tgt))
            for v in variants:
                feat, kind, lam, alpha = v
                if feat.startswith("cat"):
                    r = {"cat01": r01, "cat0123p32": rp, "cat0123": r0123}[feat]
                    x = torch.cat([dn, alpha * r], 1)
                else:
                    x = feats[feat]
                w, b = head(x[:k], masks[:k], kind, lam)
                logit = torch.einsum("qchw,c->qhw", x[k:].double(), w) + b
                logit = F.interpolate(logit[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[
                    :, 0
                ]
                scores[v].extend(dice_per_image(logit > 0, tgt))
        res[(task, k)] = {v: float(np.mean(s)) for v, s in scores.items()}
        per_ep = {
            str(v): [float(np.mean(s[i * 8 : (i + 1) * 8])) for i in range(n_ep)]
            for v, s in list(scores.items()) + [("panet-all", pan)]
        }
        json.dump(per_ep, open(f"runs/exp2_{split}_{k}.json", "w"))
        res[(task, k)]["panet-all"] = float(np.mean(pan))
        print(
            task,
            k,
            "panet-all %.3f" % np.mean(pan),
            "best %.3f" % max(res[(task, k)].values()),
            time.time() - t0,
            flush=True,
        )
allv = list(variants) + ["panet-all"]
rows = []
for v in allv:
    per_k = [np.mean([res[(t, k)][v] for t in tasks]) for k in ks]
    rows.append((np.mean(per_k), v, per_k))
rows.sort(key=lambda r: -r[0])
for m, v, pk in rows:
    print("%.3f" % m, v, " ".join("%.3f" % x for x in pk))
json.dump(
    {str(k): {str(v): x for v, x in d.items()} for k, d in res.items()},
    open(f"runs/exp_raw_{split}.json", "w"),
    indent=1,
)
