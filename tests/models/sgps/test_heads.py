"""sgps_hf.models.sgps.heads: the closed-form ridge head, its limits, and its folding into one linear layer."""

import pytest
import torch

from sgps_hf.models.sgps.heads import fold_linear, ridge_head, standardize, support_shots


def data(seed=0, shots=3, classes=4, dim=16):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(shots)
    z = (
        torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
        + 0.7 * torch.randn(classes, dim, generator=generator, dtype=torch.float64)[labels]
    )
    return z - z.mean(0), labels, torch.randn(dim, classes, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("ridge", [0.01, 1.0, 30.0])
def test_dual_solution_equals_the_primal_ridge_solution(with_prior, ridge):
    z, labels, prior = data(dim=24)  # 12 rows < 24 features: the dual (S x S) solve is the cheap one
    prior = prior / z.shape[1] if with_prior else None
    dim, classes = z.shape[1], 4
    weights = ridge_head(z, labels, classes, torch.tensor(ridge, dtype=z.dtype), prior)
    # primal: W0 + argmin_V ||T - Z V||^2 + ridge * D * ||V||^2 with T = Y - 1/C - Z W0 / D, solved as a D x D system
    targets = torch.nn.functional.one_hot(labels, classes).double() - 1.0 / classes
    base = torch.zeros(dim, classes, dtype=z.dtype) if prior is None else prior
    targets = targets - z @ base / dim
    delta = torch.linalg.solve(z.T @ z / dim + ridge * torch.eye(dim, dtype=z.dtype), z.T @ targets / dim)
    torch.testing.assert_close(weights, base + delta, rtol=1e-9, atol=1e-12)
    # and it is a minimiser: the gradient of the primal objective vanishes there
    w = (weights - base).clone().requires_grad_(True)
    objective = ((targets - z @ w) ** 2).sum() + ridge * dim * (w**2).sum()
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.abs().max() < 1e-8


def test_large_ridge_tends_to_the_class_mean_direction():
    z, labels, _ = data(shots=5)
    means = torch.stack([z[labels == c].mean(0) for c in range(4)], 1)  # [D, C]; z is centred
    for ridge, tolerance in ((1e2, 0.2), (1e6, 1e-5)):
        weights = ridge_head(z, labels, 4, torch.tensor(ridge, dtype=z.dtype))
        cosine = torch.nn.functional.cosine_similarity(weights, means, dim=0)
        assert (1 - cosine).max() < tolerance, (ridge, cosine)
    # exactly: ridge * D * W -> Z^T (Y - 1/C), the class sums of the centred features
    weights = ridge_head(z, labels, 4, torch.tensor(1e8, dtype=z.dtype))
    torch.testing.assert_close(1e8 * weights, means * 5 / z.shape[1], rtol=1e-5, atol=1e-9)
    # a small ridge does not point at the class means as well as a large one
    small = torch.nn.functional.cosine_similarity(
        ridge_head(z, labels, 4, torch.tensor(1e-3, dtype=z.dtype)), means, dim=0
    )
    assert (1 - small).max() > 1e-3


def test_prior_is_the_limit_as_ridge_grows():
    z, labels, prior = data()
    distances = [
        (ridge_head(z, labels, 4, torch.tensor(ridge, dtype=z.dtype), prior) - prior).norm().item()
        for ridge in (0.1, 10.0, 1e3, 1e7)
    ]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 1e-6 * prior.norm().item()
    # and a small ridge moves well away from the prior towards the images
    assert distances[0] > 0.05 * prior.norm().item()


def test_fold_linear_gives_the_logits_of_standardize_then_matmul():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(7, 16, generator=generator)
    mean, scale = torch.randn(16, generator=generator), torch.rand(16, generator=generator) + 0.5
    weights, logit_scale = torch.randn(16, 3, generator=generator), torch.tensor(4.0)
    weight, bias = fold_linear(weights, mean, scale, logit_scale)
    assert weight.shape == (3, 16) and bias.shape == (3,) and weight.is_contiguous()
    expected = logit_scale * standardize(features, mean, scale) @ weights
    torch.testing.assert_close(torch.nn.functional.linear(features, weight, bias), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(standardize(features, mean, scale), (features - mean) * scale)


def test_support_shots_is_the_mean_over_classes_with_images():
    assert support_shots(torch.tensor([0, 0, 2, 2, 2, 2]), 3).item() == 3.0  # class 1 (text only) is not counted
    assert support_shots(torch.tensor([0, 1, 1]), 2).item() == 1.5
    assert support_shots(torch.tensor([], dtype=torch.long), 3).item() == 0.0


def test_ridge_head_is_differentiable_in_the_ridge_and_the_features():
    z, labels, prior = data()
    z = z.float().requires_grad_(True)
    ridge = torch.tensor(1.0, requires_grad=True)
    ridge_head(z, labels, 4, ridge, prior.float() / 16).pow(2).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0 and ridge.grad.abs() > 0


def test_normalize_rows_equalises_the_norms_and_keeps_their_root_mean_square():
    from sgps_hf.models.sgps.heads import normalize_rows

    z, _, _ = data(shots=4)
    z = z * torch.linspace(0.1, 5.0, z.shape[0], dtype=z.dtype).unsqueeze(1)  # very unequal rows
    normalised = normalize_rows(z)
    norms = normalised.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(z.norm(dim=1).pow(2).mean().sqrt())))
    cosine = torch.nn.functional.cosine_similarity(normalised, z, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))  # directions unchanged
    assert torch.equal(normalize_rows(torch.zeros(3, 4)), torch.zeros(3, 4))  # no NaN for a degenerate task
