"""Corruptions of query images: deterministic, shape- and dtype-preserving, stronger with severity."""

from __future__ import annotations

import pytest
import torch

from sgps_hf.evaluation.corruptions import CORRUPTIONS, corrupt


@pytest.fixture
def images() -> torch.Tensor:
    # Smooth gradients plus texture, so that blur and JPEG have something to remove.
    ramp = torch.linspace(0, 255, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32)
    texture = torch.randint(0, 60, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    return (ramp * 0.7 + texture).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_determinism(images, name):
    out = corrupt(images, name, severity=3, seed=1)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, corrupt(images, name, severity=3, seed=1))
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_increases_the_change(images, name):
    change = [(corrupt(images, name, severity=s).float() - images.float()).abs().mean().item() for s in (1, 5)]
    assert change[1] > change[0]


def test_errors():
    with pytest.raises(ValueError, match="Unknown corruption"):
        corrupt(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "fog")
    with pytest.raises(ValueError, match="severity"):
        corrupt(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "blur", severity=6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(torch.zeros(1, 3, 8, 8), "noise")
