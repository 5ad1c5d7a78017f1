"""scripts/compare_image_memory.py: the image-keyed memory reads the meta-train class a support class resembles."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sgps_testing import PROJECT_ROOT, load_script


@pytest.fixture()
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "scripts"))  # it reuses compare_text_priors' helpers
    return load_script("compare_image_memory")


def memory_of(values: torch.Tensor, scale: float = 2.0) -> SimpleNamespace:
    return SimpleNamespace(centred_values=values, scale=torch.tensor(scale))


def inputs_of(class_means: torch.Tensor) -> dict:
    """Two support rows [S, 1, D] per class, mean +- noise, so each class's mean is its row of ``class_means``."""
    noise = torch.randn_like(class_means)
    rows = torch.stack([class_means + noise, class_means - noise], 1).reshape(-1, class_means.shape[1])
    return {
        "support_features": rows.unsqueeze(1),
        "support_labels": torch.arange(len(class_means)).repeat_interleave(2),
    }


def test_each_class_reads_the_meta_train_class_its_centred_support_mean_points_to(script):
    torch.manual_seed(0)
    base = torch.eye(4)[:3] - torch.eye(4)[:3].mean(0)  # three meta-train classes, task-centred
    episode = torch.stack([base[2], base[0]]) * 5 + torch.tensor([7.0, 7.0, 7.0, 7.0])  # a shared offset
    inputs = inputs_of(episode)
    texts = ["a", "b"]
    top_one = script.image_memory(memory_of(base), top_k=1)(inputs, texts)
    assert torch.allclose(top_one, torch.stack([base[2], base[0]]) * 2.0)
    sharp = script.image_memory(memory_of(base), temperature=1e-3)(inputs, texts)
    assert torch.allclose(sharp, top_one, atol=1e-4)
    flat = script.image_memory(memory_of(base), temperature=1e3)(inputs, texts)
    assert torch.allclose(flat, base.mean(0).expand(2, -1) * 2.0, atol=1e-2)  # the centred memory's mean is 0


def test_class_means_average_each_class_support_rows(script):
    inputs = {"support_features": torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]], [[5.0, 5.0]]]),
              "support_labels": torch.tensor([0, 0, 1])}  # fmt: skip
    assert torch.equal(script.class_means(inputs, 2), torch.tensor([[2.0, 1.0], [5.0, 5.0]]))
