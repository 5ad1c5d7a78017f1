"""Unit tests of the post-hoc calibration on meta-val (sgps_hf.training.calibration): the class memory of the text
generator and its temperature, the ridge and prior multipliers, and the two temperatures."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sgps_testing import tiny_synthesizer, with_random_text_memory

from sgps_hf import SGPSConfig
from sgps_hf.data.episodes import ClassPool, EpisodeSampler
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training import batchnorm_calibration, calibration
from sgps_hf.training.batchnorm_calibration import TASK_BATCHNORM_IMAGES, calibrate_task_batchnorm
from sgps_hf.training.calibration import (
    PRIOR_STRENGTHS,
    TEXT_TEMPERATURES,
    build_text_memory,
    calibrate_prior_strength,
    calibrate_text_temperature,
)
from sgps_hf.training.feature_cache import pool_features
from sgps_hf.training.meta_val import mean_accuracy, query_logits
from sgps_hf.training.temperature import (
    LOGIT_SCALE_MULTIPLIERS,
    calibrate_logit_scale,
    calibrate_zero_shot_scale,
    fit_logit_scale,
    nll_best_scale,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def pools(size=32, per_class=(5, 4, 6, 3), tasks=("task-a", "task-a", "task-a", "task-b")):
    rng = np.random.default_rng(0)
    return [
        ClassPool(task, f"class-{i}", rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8), f"text of class {i}")
        for i, (task, m) in enumerate(zip(tasks, per_class, strict=False))
    ]


@pytest.fixture(scope="module")
def processor():
    config = tiny_synthesizer(seed=0).config
    return SGPSImageProcessor(image_size=config.image_size, image_mean=config.image_mean, image_std=config.image_std)


# -- prior calibration --------------------------------------------------------------------------------------------
class FakeTexts:
    """A TextBank stand-in: a fixed random embedding per text (no text encoder needed)."""

    def __init__(self, dim):
        self.dim, self.cache = dim, {}

    def __call__(self, texts):
        for text in texts:
            self.cache.setdefault(
                text, torch.randn(self.dim, generator=torch.Generator().manual_seed(len(self.cache)))
            )
        return torch.stack([self.cache[t] for t in texts])


def calibration_episodes():
    chosen = pools(per_class=(8, 8, 8, 8), tasks=("t", "t", "t", "t"))
    one = [EpisodeSampler(chosen, n_way=3, k_shot=1, q_query=2, seed=0).episode(i) for i in range(2)]
    five = [EpisodeSampler(chosen, n_way=3, k_shot=5, q_query=2, seed=0).episode(i) for i in range(2)]
    return one + five


def strength(model, shots):
    low, slope = model.prior_coefficients.tolist()
    return math.exp(low + slope * math.log(shots))


def test_calibration_chooses_the_best_strength_per_shot_count_and_sets_it(processor, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    best = {1: 1.0, 5: 0.25}

    def fake_evaluate(model, episodes, processor, texts, features=None):
        target = best[1] if episodes[0].k_shot <= 2 else best[5]
        return 1.0 - abs(
            strength(model, 1) - target
        )  # set_prior_strength(s, s): the same strength at every shot count

    monkeypatch.setattr(calibration, "evaluate_episodes", fake_evaluate)
    result = calibrate_prior_strength(synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim))
    assert result["chosen"] == {"1": 1.0, "5": 0.25}
    assert set(result["scores"]) == {"1", "5"} and set(result["scores"]["1"]) == set(PRIOR_STRENGTHS)
    assert strength(synth, 1) == pytest.approx(1.0) and strength(synth, 5) == pytest.approx(0.25)


def test_calibration_ties_go_to_the_weaker_prior(processor):
    # untrained: the text generator is zero, so every strength classifies alike and the weakest (0) wins
    synth = tiny_synthesizer(seed=0)
    result = calibrate_prior_strength(synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim))
    assert result["chosen"] == {"1": 0.0, "5": 0.0}
    assert len(set(result["scores"]["1"].values())) == 1
    assert strength(synth, 1) == pytest.approx(1e-6)


def test_calibration_without_episodes_leaves_the_prior_alone(processor):
    synth = tiny_synthesizer(seed=0)
    before = synth.prior_coefficients.clone()
    assert "note" in calibrate_prior_strength(synth, [], processor, FakeTexts(synth.config.text_embed_dim))
    assert torch.equal(synth.prior_coefficients, before)
    assert strength(synth, 1) == pytest.approx(synth.config.prior_init)


# -- temperature calibration --------------------------------------------------------------------------------------
class FixedMarginHead(torch.nn.Module):
    """A stand-in synthesizer whose query logits are ``scale`` on one class: the true one, except every 3rd query."""

    def __init__(self, scale):
        super().__init__()
        self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        self.config = SGPSConfig()

    def forward(self, num_classes, query_labels, return_weights=False, **inputs):
        picked = torch.where(torch.arange(len(query_labels)) % 3 == 0, (query_labels + 1) % num_classes, query_labels)
        logits = self.log_logit_scale.exp() * torch.nn.functional.one_hot(picked, num_classes).float()
        return SimpleNamespace(logits=logits)


def test_temperature_calibration_fits_the_nll_optimal_scale_and_sets_it(processor):
    episodes = calibration_episodes()
    texts = FakeTexts(16)
    # 3-way, 2 of every 3 queries right with margin m: the NLL is least where e^m / (e^m + 2) = 2/3, i.e. m = log 4.
    for start in (0.5, 4.0):  # under- and over-confident
        head = FixedMarginHead(start)
        result = calibrate_logit_scale(head, episodes, processor, texts)
        assert start * result["chosen"] == pytest.approx(math.log(4), rel=0.04)
        assert head.log_logit_scale.exp().item() == pytest.approx(start * result["chosen"], rel=1e-3)
        assert result["nll"][f"{result['chosen']:.3f}"] == pytest.approx(min(result["nll"].values()), abs=1e-6)


def test_temperature_calibration_keeps_the_accuracy_of_a_real_synthesizer(processor):
    synth = tiny_synthesizer(seed=0)
    texts = FakeTexts(synth.config.text_embed_dim)
    episodes = calibration_episodes()
    before = calibration.evaluate_episodes(synth, episodes, processor, texts)
    result = calibrate_logit_scale(synth, episodes, processor, texts)
    assert round(min(LOGIT_SCALE_MULTIPLIERS), 4) <= result["chosen"] <= round(max(LOGIT_SCALE_MULTIPLIERS), 4)
    assert (
        calibration.evaluate_episodes(synth, episodes, processor, texts) == before
    )  # a temperature never changes argmax


def test_temperature_calibration_without_image_episodes_leaves_the_scale_alone(processor):
    synth = tiny_synthesizer(seed=0)
    before = synth.log_logit_scale.item()
    text_only = [type(e)(**{**e.__dict__, "use_images": False}) for e in calibration_episodes()]
    assert "note" in calibrate_logit_scale(synth, text_only, processor, FakeTexts(synth.config.text_embed_dim))
    assert synth.log_logit_scale.item() == before


def test_the_fitted_logit_scale_follows_the_shots_when_one_temperature_cannot_suit_both():
    # 1-shot episodes are right 3 times in 5 at margin 1 (over-confident at scale 4), 5-shot ones 9 times in 10.
    def episode(accuracy):
        queries = 100
        right = round(accuracy * queries)
        logits = torch.zeros(queries, 2)
        logits[:right, 0], logits[right:, 1] = 1.0, 1.0
        return 4.0 * logits, torch.zeros(queries, dtype=torch.long)

    pairs, shots = [episode(0.6), episode(0.9)], [1, 5]
    multiplier, exponent, nll = nll_best_scale(pairs, shots)
    # the NLL-optimal margin of a 2-way rule right a fraction p of the time is log(p / (1 - p))
    for count, accuracy in zip(shots, (0.6, 0.9), strict=True):
        assert 4.0 * multiplier * count**exponent == pytest.approx(math.log(accuracy / (1 - accuracy)), rel=0.1)
    assert exponent > 0 and nll[multiplier] == pytest.approx(min(nll.values()))
    same = nll_best_scale([episode(0.9), episode(0.9)], shots)
    assert same[1] == 0.0, "equal confidence at both shot counts keeps one temperature"


# -- class memory -------------------------------------------------------------------------------------------------
def memory_synthesizer(seed=0):
    return tiny_synthesizer(seed=seed, text_generator="class_memory")


def test_build_text_memory_holds_each_classes_text_and_centred_mean_feature(processor):
    synth = memory_synthesizer()
    chosen = pools()
    texts = FakeTexts(synth.config.text_embed_dim)
    with torch.no_grad():
        synth.feature_mean.normal_(generator=torch.Generator().manual_seed(3))
    build_text_memory(synth, chosen, processor, texts)
    features = pool_features(synth, chosen, processor, views=["identity"])
    assert synth.config.text_memory_size == len(chosen) == synth.text_memory_keys.shape[0]
    for row, pool in enumerate(chosen):
        expected = features[(pool.task, pool.class_name)][:, 0].mean(0) - synth.feature_mean
        torch.testing.assert_close(synth.text_memory_features[row], expected)
        torch.testing.assert_close(
            synth.text_memory_keys[row], torch.nn.functional.normalize(texts([pool.text])[0], dim=0)
        )


def test_build_text_memory_needs_pools(processor):
    with pytest.raises(ValueError, match="meta-train class pools"):
        build_text_memory(memory_synthesizer(), [], processor, FakeTexts(16))


def test_text_temperature_is_chosen_by_text_only_accuracy_and_set(processor, monkeypatch):
    synth = memory_synthesizer()
    build_text_memory(synth, pools(), processor, FakeTexts(synth.config.text_embed_dim))
    seen = []

    def fake_evaluate(model, episodes, processor, texts, features=None):
        assert not any(e.use_images for e in episodes), "the temperature is chosen on text-only episodes"
        seen.append(model.log_text_temperature.exp().item())
        return 1.0 - abs(math.log(seen[-1] / 0.07))

    monkeypatch.setattr(calibration, "evaluate_episodes", fake_evaluate)
    result = calibrate_text_temperature(
        synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim)
    )
    assert seen == pytest.approx(list(TEXT_TEMPERATURES), rel=1e-5)
    assert result["chosen"] == 0.07 and synth.log_text_temperature.exp().item() == pytest.approx(0.07)
    assert result["memory classes"] == 4


def test_calibrate_builds_the_memory_before_the_prior_is_chosen(processor):
    from sgps_hf.training.checkpointing import TrainerState

    synth, state = memory_synthesizer(), TrainerState()
    texts = FakeTexts(synth.config.text_embed_dim)
    calibration.calibrate(synth, state, calibration_episodes(), processor, texts, train_pools=pools())
    assert synth.config.text_memory_size == 4 and state.text_calibration["chosen"] in TEXT_TEMPERATURES
    for report in (
        state.feature_scale_calibration,
        state.ridge_calibration,
        state.prior_calibration,
        state.batchnorm_calibration,
        state.temperature_calibration,
        state.zero_shot_calibration,
    ):
        assert "chosen" in report
    assert synth.config.task_batchnorm_images in TASK_BATCHNORM_IMAGES
    # the ridge the task-BatchNorm step settled on is the one reported, beside the head's own fit
    assert state.ridge_calibration["chosen"]["1"] == pytest.approx(synth.ridge_at(1), rel=1e-5)
    assert state.ridge_calibration["chosen"]["5"] == pytest.approx(synth.ridge_at(5), rel=1e-5)
    assert set(state.ridge_calibration["fitted before task BatchNorm"]) == {"1", "5"}


# -- task-adaptive BatchNorm --------------------------------------------------------------------------------------
def test_task_batchnorm_is_chosen_with_its_ridge_by_meta_val_accuracy_and_set(processor, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    synth.set_ridge(2.0, 0.5)
    # accuracy by (count, ridge multiplier): 50 wins with a ridge 4x the fitted one; None is best at the fitted one
    accuracy = {None: {1.0: 0.6}, 25: {1.0: 0.55}, 50: {1.0: 0.5, 4.0: 0.65}, 100: {1.0: 0.58}}
    passes = []

    def fake_features(model, inputs, count):
        passes.append(count)
        return count, None

    def fake_logits(model, inputs, count, _query):
        multiplier = round(model.ridge_at(1) / 2.0, 6)
        assert multiplier == pytest.approx(round(model.ridge_at(5) / 0.5, 6)), "one multiplier at both shot counts"
        return pairs_scoring(accuracy[count].get(multiplier, 0.4))[0][0]

    monkeypatch.setattr(batchnorm_calibration, "_task_features", fake_features)
    monkeypatch.setattr(batchnorm_calibration, "_features_logits", fake_logits)
    monkeypatch.setattr(
        batchnorm_calibration, "episode_inputs", lambda *a, **k: {"query_labels": torch.zeros(100, dtype=torch.long)}
    )
    result, logits = calibrate_task_batchnorm(
        synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim)
    )
    assert result["chosen"] == 50 and synth.config.task_batchnorm_images == 50
    assert result["ridge multipliers"]["50"] == {"1": 4.0, "5": 4.0}
    assert synth.ridge_at(1) == pytest.approx(8.0) and synth.ridge_at(5) == pytest.approx(2.0)
    assert passes == [c for c in TASK_BATCHNORM_IMAGES for _ in range(4)], "one body pass per episode and count"
    assert result["episodes"] == 4 and set(result["scores"]) == {str(c) for c in TASK_BATCHNORM_IMAGES}
    assert mean_accuracy(logits) == pytest.approx(0.65)


def test_task_batchnorm_choice_gives_the_logits_of_the_one_inference_path(processor):
    synth = tiny_synthesizer(seed=0)
    texts, episodes = FakeTexts(synth.config.text_embed_dim), calibration_episodes()
    report, logits = calibrate_task_batchnorm(synth, episodes, processor, texts)
    assert report["chosen"] in TASK_BATCHNORM_IMAGES
    again = query_logits(synth, episodes, processor, texts)  # the model as set: its config and ridge
    for (chosen, labels), (expected, same_labels) in zip(logits, again, strict=True):
        torch.testing.assert_close(chosen, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(labels, same_labels)


def test_task_batchnorm_ties_keep_the_body_and_text_only_episodes_leave_it_off(processor, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    monkeypatch.setattr(batchnorm_calibration, "_task_features", lambda model, inputs, count: (None, None))
    monkeypatch.setattr(batchnorm_calibration, "_features_logits", lambda *a: pairs_scoring(0.5)[0][0])
    monkeypatch.setattr(
        batchnorm_calibration, "episode_inputs", lambda *a, **k: {"query_labels": torch.zeros(100, dtype=torch.long)}
    )
    texts = FakeTexts(synth.config.text_embed_dim)
    before = synth.ridge_at(1)
    assert calibrate_task_batchnorm(synth, calibration_episodes(), processor, texts)[0]["chosen"] is None
    assert synth.config.task_batchnorm_images is None and synth.ridge_at(1) == pytest.approx(before)
    text_only = [type(e)(**{**e.__dict__, "use_images": False}) for e in calibration_episodes()]
    report, logits = calibrate_task_batchnorm(synth, text_only, processor, texts)
    assert "note" in report and logits == []
    assert synth.config.task_batchnorm_images is None


def test_temperature_after_task_batchnorm_is_the_one_a_pass_over_its_pixels_gives(processor):
    synth = tiny_synthesizer(seed=0)
    texts = FakeTexts(synth.config.text_embed_dim)
    _, logits = calibrate_task_batchnorm(synth, calibration_episodes(), processor, texts)
    twin = copy.deepcopy(synth)  # the chosen count and ridge, set
    shots = [e.k_shot for e in calibration_episodes() if e.use_images]
    assert fit_logit_scale(synth, logits, shots) == calibrate_logit_scale(
        twin, calibration_episodes(), processor, texts
    )
    assert synth.config.logit_scale_shot_exponent == twin.config.logit_scale_shot_exponent
    assert synth.log_logit_scale.item() == pytest.approx(twin.log_logit_scale.item())


def pairs_scoring(accuracy: float, queries: int = 100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One episode's (logits, labels) of 2-way queries, ``accuracy`` of them right."""
    right = round(accuracy * queries)
    logits = torch.zeros(queries, 2)
    logits[:right, 0] = 1.0
    logits[right:, 1] = 1.0
    return [(logits, torch.zeros(queries, dtype=torch.long))]


# -- the head: feature scale and ridge ----------------------------------------------------------------------------
def ridge(model, shots):
    low, slope = model.ridge_coefficients.tolist()
    return math.exp(low + slope * math.log1p(shots))


def test_set_ridge_is_exact_at_one_and_five_shots_and_log_linear_between():
    synth = tiny_synthesizer(seed=0)
    synth.set_ridge(2.0, 0.125)
    assert ridge(synth, 1) == pytest.approx(2.0) and ridge(synth, 5) == pytest.approx(0.125)
    assert 0.125 < ridge(synth, 3) < 2.0


def test_head_calibration_chooses_a_scale_and_a_ridge_per_shot_count_and_sets_them(processor, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    train = pools()
    rows = calibration._train_rows(synth, train, processor, None)
    log_std = calibration._log_feature_std(rows)
    wanted = {"power": 0.5, 1: 4.0, 5: 0.25}  # ridge relative to the mean squared standardised feature
    seen_text = []

    def power_of(model):
        return float((-model.log_feature_scale.detach() / log_std).mean())

    def fake_evaluate(model, episodes, processor, texts, features=None):
        seen_text.extend(e.use_text for e in episodes)
        shots = 1 if episodes[0].k_shot <= 2 else 5
        unit = calibration._mean_squared_feature(model, rows)
        relative = ridge(model, shots) / unit
        return 0.9 - abs(math.log(relative / wanted[shots])) / 100 - abs(power_of(model) - wanted["power"])

    monkeypatch.setattr(calibration, "evaluate_episodes", fake_evaluate)
    scale, fitted = calibration.calibrate_head(
        synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim), train_pools=train
    )
    assert not any(seen_text), "the head is fitted on image-only episodes"
    assert scale["chosen"] == 0.5 and set(scale["accuracy"]) == {str(p) for p in calibration.FEATURE_SCALES} | {
        "0.5, normalised rows"
    }
    assert scale["normalised support rows"] is False and not synth.config.normalize_support_rows  # a tie: left off
    torch.testing.assert_close(synth.log_feature_scale.detach(), -0.5 * log_std)
    unit = calibration._mean_squared_feature(synth, rows)
    assert ridge(synth, 1) == pytest.approx(4.0 * unit, rel=1e-5)
    assert ridge(synth, 5) == pytest.approx(0.25 * unit, rel=1e-5)
    assert fitted["chosen"] == pytest.approx({"1": 4.0 * unit, "5": 0.25 * unit}, rel=1e-4)
    assert set(fitted["scores (relative ridge)"]["1"]) == set(calibration.RIDGE_GRID)


def test_head_calibration_keeps_normalised_rows_only_when_they_score_higher(processor, monkeypatch):
    synth = tiny_synthesizer(seed=0)

    def fake_evaluate(model, episodes, processor, texts, features=None):
        return 0.5 + 0.01 * model.config.normalize_support_rows - 0.001 * float(model.log_feature_scale.abs().mean())

    monkeypatch.setattr(calibration, "evaluate_episodes", fake_evaluate)
    scale, _ = calibration.calibrate_head(
        synth, calibration_episodes(), processor, FakeTexts(synth.config.text_embed_dim), train_pools=pools()
    )
    assert scale["chosen"] == 0.0 and scale["normalised support rows"] is True
    assert synth.config.normalize_support_rows
    assert scale["accuracy"]["0.0, normalised rows"] == pytest.approx(0.51)


def test_head_calibration_on_a_real_synthesizer_sets_what_scored_best(processor):
    synth = tiny_synthesizer(seed=0)
    texts, episodes = FakeTexts(synth.config.text_embed_dim), calibration_episodes()
    scale, fitted = calibration.calibrate_head(synth, episodes, processor, texts, train_pools=pools())
    image_only = [type(e)(**{**e.__dict__, "use_text": False}) for e in episodes]
    chosen = f"{scale['chosen']}{', normalised rows' if scale['normalised support rows'] else ''}"
    assert synth.config.normalize_support_rows == scale["normalised support rows"]
    best = scale["accuracy"][chosen]
    assert best == max(scale["accuracy"].values())
    assert calibration.evaluate_episodes(synth, image_only, processor, texts) == pytest.approx(best, abs=1e-4)
    assert all(math.isfinite(v) and v > 0 for v in fitted["chosen"].values())


def test_head_calibration_without_image_episodes_leaves_the_head_alone(processor):
    synth = tiny_synthesizer(seed=0)
    before = (synth.ridge_coefficients.detach().clone(), synth.log_feature_scale.detach().clone())
    text_only = [type(e)(**{**e.__dict__, "use_images": False}) for e in calibration_episodes()]
    reports = calibration.calibrate_head(
        synth, text_only, processor, FakeTexts(synth.config.text_embed_dim), train_pools=pools()
    )
    assert all("note" in report for report in reports)
    assert torch.equal(synth.ridge_coefficients, before[0]) and torch.equal(synth.log_feature_scale, before[1])


def test_head_calibration_needs_the_meta_train_pools(processor):
    synth = tiny_synthesizer(seed=0)
    with pytest.raises(ValueError, match="meta-train class pools"):
        calibration.calibrate_head(synth, calibration_episodes(), processor, FakeTexts(16))


# -- zero-shot temperature ----------------------------------------------------------------------------------------
def test_zero_shot_scale_calibration_keeps_text_only_accuracy_and_sets_the_fit(processor):
    synth = with_random_text_memory(tiny_synthesizer(seed=0), seed=0)
    texts, episodes = FakeTexts(synth.config.text_embed_dim), calibration_episodes()
    text_only = [type(e)(**{**e.__dict__, "use_images": False}) for e in episodes]
    before_accuracy, before_scale = (
        calibration.evaluate_episodes(synth, text_only, processor, texts),
        synth.log_zero_shot_scale.item(),
    )
    result = calibrate_zero_shot_scale(synth, episodes, processor, texts)
    assert result["nll at chosen"] <= result["nll before"]
    assert synth.log_zero_shot_scale.item() == pytest.approx(before_scale + math.log(result["chosen"]), abs=1e-4)
    assert calibration.evaluate_episodes(synth, text_only, processor, texts) == before_accuracy
