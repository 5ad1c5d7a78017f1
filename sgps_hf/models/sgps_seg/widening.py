"""The synthesized UperNet with the raw pass-through block beside the learned decoder (``hidden_size + R`` wide).

The synthesizer's own decoder is ``hidden_size`` channels wide; the exported network carries the raw encoder block in
extra channels of every decoder layer, copied through with centre-tap identities so that learned and raw channels
meet only in the final 1x1 classifier (see ``modeling_sgps_seg``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def widen_state_dict(synthesizer: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The learned decoder's state ``state`` of ``synthesizer`` (an ``SGPSSegSynthesizer``) embedded in the
    ``hidden_size + R`` wide UperNet with the raw block beside it.

    Learned channels keep their weights (zero cross-connections); raw channel ``r`` of stage ``l`` is
    ``relu(P_l x + b_l)`` in the lateral conv of ``l`` (the pyramid bottleneck's centre tap for the last stage),
    copied by centre-tap identities through every FPN conv and the fusion bottleneck; BatchNorms of raw
    channels are identities. The classifier is left for the caller.
    """
    hidden, raw = synthesizer.config.hidden_size, synthesizer.raw_channels
    wide = hidden + raw
    head = "decode_head."
    n_levels = len(synthesizer.config.out_indices)
    starts, start = {}, hidden
    for j, level in enumerate(synthesizer.config.raw_levels):
        starts[level] = (j, start)
        start += synthesizer.raw_dim(j)
    out = {k: v for k, v in state.items() if not k.startswith(head)}

    def conv_module(name: str, in_map: list[tuple[int, int, int]], in_total: int, raw_rows=None) -> None:
        """``in_map``: (old input start, new input start, length) blocks of the learned input channels."""
        old = state[f"{head}{name}.conv.weight"]
        kh, kw = old.shape[-2:]
        weight = old.new_zeros(wide, in_total, kh, kw)
        for old_start, new_start, length in in_map:
            weight[:hidden, new_start : new_start + length] = old[:, old_start : old_start + length]
        bn_bias = old.new_zeros(wide)
        if raw_rows is not None:
            raw_rows(weight, bn_bias, kh // 2, kw // 2)
        out[f"{head}{name}.conv.weight"] = weight
        for key, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            value = old.new_full((wide,), fill)
            value[:hidden] = state[f"{head}{name}.batch_norm.{key}"]
            out[f"{head}{name}.batch_norm.{key}"] = value
        out[f"{head}{name}.batch_norm.bias"][hidden:] = bn_bias[hidden:]
        eps = (
            1e-5  # nn.BatchNorm2d default of UperNetConvModule: gamma = sqrt(1 + eps) makes raw channels exact copies
        )
        out[f"{head}{name}.batch_norm.weight"][hidden:] = math.sqrt(1 + eps)
        out[f"{head}{name}.batch_norm.num_batches_tracked"] = state[
            f"{head}{name}.batch_norm.num_batches_tracked"
        ].clone()

    def stage_rows(level: int, in_start: int):
        def fill(weight, bn_bias, ci, cj):
            if level in starts:
                j, r0 = starts[level]
                dim = synthesizer.raw_dim(j)
                projection = getattr(synthesizer, f"raw_projection_{j}")
                weight[r0 : r0 + dim, in_start : in_start + projection.shape[1], ci, cj] = projection
                bn_bias[r0 : r0 + dim] = getattr(synthesizer, f"raw_bias_{j}")

        return fill

    def identity_rows(in_start: int):
        def fill(weight, bn_bias, ci, cj):
            index = torch.arange(raw)
            weight[hidden + index, in_start + hidden + index, ci, cj] = 1.0

        return fill

    top = list(synthesizer.segmenter.backbone.channels)[-1]
    for i in range(n_levels - 1):
        c_in = state[f"{head}lateral_convs.{i}.conv.weight"].shape[1]
        conv_module(f"lateral_convs.{i}", [(0, 0, c_in)], c_in, stage_rows(i, 0))
        conv_module(f"fpn_convs.{i}", [(0, 0, hidden)], wide, identity_rows(0))
    n_pool = len(synthesizer.config.pool_scales)
    for p in range(n_pool):
        conv_module(f"psp_modules.{p}.1", [(0, 0, top)], top)
    conv_module(
        "bottleneck",
        [(0, 0, top)] + [(top + p * hidden, top + p * wide, hidden) for p in range(n_pool)],
        top + n_pool * wide,
        stage_rows(n_levels - 1, 0),
    )
    conv_module(
        "fpn_bottleneck",
        [(i * hidden, i * wide, hidden) for i in range(n_levels)],
        n_levels * wide,
        identity_rows(0),
    )
    for key in ("weight", "bias"):
        out[f"{head}classifier.{key}"] = state[f"{head}classifier.{key}"]
    return out
