"""A task mixing classes with images and text-only classes: the text-only class keeps its zero-shot prior."""

from __future__ import annotations

import sgps_testing
import torch

from sgps_hf.models.sgps.heads import ridge_head


def _synth_with_texts():
    # an untrained synthesizer's class memory is empty: give the texts something to say
    synth = sgps_testing.with_random_text_memory(sgps_testing.tiny_synthesizer(seed=0), seed=1)
    synth.set_prior_strength(0.0, 0.0)  # beside images the texts are ignored, as the shipped 5-shot setting does
    return synth


def test_text_only_class_of_a_mixed_task_is_not_suppressed():
    synth = _synth_with_texts()
    dim = synth.target.num_features
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(4, len(synth.config.support_views), dim, generator=generator)
    labels = torch.tensor([0, 0, 1, 1])
    texts = torch.randn(3, synth.config.text_embed_dim, generator=generator)
    with torch.no_grad():
        mixed = synth.generate_weights(
            3,
            support_labels=labels,
            support_features=features,
            text_embeds=texts,
            text_mask=torch.ones(3, dtype=torch.bool),
        )
        text_only = synth.generate_weights(3, text_embeds=texts, text_mask=torch.ones(3, dtype=torch.bool))
    weight = mixed["classifier.weight"]
    assert torch.isfinite(weight).all() and weight[2].abs().sum() > 0
    # The image-less class's weight is its zero-shot weight with its fit to the other classes' images removed:
    # it correlates strongly with the text-only synthesis of the same class.
    similarity = torch.nn.functional.cosine_similarity(weight[2], text_only["classifier.weight"][2], dim=0)
    assert similarity > 0.5


def test_ridge_targets_of_image_classes_are_unchanged_by_the_mask():
    generator = torch.Generator().manual_seed(0)
    z, labels = torch.randn(6, 16, generator=generator), torch.tensor([0, 0, 1, 1, 2, 2])
    full = ridge_head(z, labels, 3, torch.tensor(0.5))
    masked = ridge_head(z, labels, 3, torch.tensor(0.5), has_images=torch.ones(3, dtype=torch.bool))
    assert torch.allclose(full, masked)
    partial = ridge_head(z[:4], labels[:4], 3, torch.tensor(0.5), has_images=torch.tensor([True, True, False]))
    assert torch.count_nonzero(partial[:, 2]) == 0  # no prior, no images: nothing to say about that class
