"""EpisodeSampler: shapes, determinism, disjointness, fallbacks, modality dropout; build_pools."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sgps_hf.data import ClassPool, Episode, EpisodeSampler, build_pools, list_tasks, make_splits
from sgps_hf.errors import DataError

SIZE = 4


def _pool(task: str, class_name: str, n: int, class_id: int) -> ClassPool:
    """Images whose first pixel encodes (class_id, image index): identity checks become trivial."""
    images = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = class_id
    images[:, 0, 0, 1] = np.arange(n) // 256
    images[:, 0, 0, 2] = np.arange(n) % 256
    return ClassPool(task=task, class_name=class_name, images=images, text=f"text of {class_name}")


def _pools(spec: dict[str, dict[str, int]]) -> list[ClassPool]:
    pools, class_id = [], 0
    for task, classes in spec.items():
        for name, n in classes.items():
            pools.append(_pool(task, name, n, class_id))
            class_id += 1
    return pools


POOLS = _pools({"t1": {f"a{i}": 30 for i in range(8)}, "t2": {f"b{i}": 12 for i in range(6)}})


def _ids(images: torch.Tensor) -> set[tuple[int, int]]:
    first = images[:, :, 0, 0].long()
    return {(int(c), int(high) * 256 + int(low)) for c, high, low in first}


def test_shapes_and_dtypes():
    ep = EpisodeSampler(POOLS, n_way=5, k_shot=3, q_query=4, seed=1).episode(0)
    assert isinstance(ep, Episode)
    assert ep.support.shape == (15, 3, SIZE, SIZE) and ep.support.dtype == torch.uint8
    assert ep.query.shape == (20, 3, SIZE, SIZE) and ep.query.dtype == torch.uint8
    assert ep.support_labels.dtype == torch.int64 and ep.query_labels.dtype == torch.int64
    assert ep.support_labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert ep.query_labels.tolist() == [c for c in range(5) for _ in range(4)]
    assert (ep.n_way, ep.k_shot, ep.q_query, ep.index) == (5, 3, 4, 0)
    assert ep.class_texts == [f"text of {name}" for name in ep.class_names]
    assert ep.use_text and ep.use_images


def test_labels_match_classes_and_support_query_disjoint():
    sampler = EpisodeSampler(POOLS, n_way=5, k_shot=(1, 5), q_query=5, seed=0)
    class_ids = {(p.task, p.class_name): int(p.images[0, 0, 0, 0]) for p in POOLS}
    for i in range(40):
        ep = sampler.episode(i)
        assert len({p.task for p in POOLS if p.class_name in ep.class_names}) == 1  # within one task
        for images, labels in ((ep.support, ep.support_labels), (ep.query, ep.query_labels)):
            for image, label in zip(images, labels, strict=True):
                assert int(image[0, 0, 0]) == class_ids[(ep.task, ep.class_names[label])]
        support, query = _ids(ep.support), _ids(ep.query)
        assert len(support) == len(ep.support) and len(query) == len(ep.query)  # no duplicates
        assert not support & query


def test_pure_function_of_seed_and_index():
    a = EpisodeSampler(POOLS, seed=7)
    b = EpisodeSampler(list(reversed(POOLS)), seed=7)  # input order does not matter
    for i in (0, 5, 1000):
        x, y = a.episode(i), b[i]
        assert torch.equal(x.support, y.support) and torch.equal(x.query, y.query)
        assert x.class_names == y.class_names and x.k_shot == y.k_shot
    first, second = a.episode(3), a.episode(4)
    assert not (first.class_names == second.class_names and torch.equal(first.support, second.support))
    other_seed = EpisodeSampler(POOLS, seed=8).episode(3)
    assert not torch.equal(first.query, other_seed.query) or first.class_names != other_seed.class_names


def test_iteration_resume_and_rank_sharding():
    sampler = EpisodeSampler(POOLS, seed=0)
    it = iter(sampler)
    firsts = [next(it) for _ in range(4)]
    assert [e.index for e in firsts] == [0, 1, 2, 3]
    resumed = next(sampler.iter_from(2))
    assert torch.equal(resumed.support, firsts[2].support)
    rank0, rank1 = sampler.iter_from(0, step=2), sampler.iter_from(1, step=2)
    assert [next(rank0).index for _ in range(3)] == [0, 2, 4]
    assert [next(rank1).index for _ in range(3)] == [1, 3, 5]


def test_k_drawn_per_episode_within_range():
    sampler = EpisodeSampler(POOLS, k_shot=(1, 5), seed=0)
    ks = {sampler.episode(i).k_shot for i in range(60)}
    assert ks == {1, 2, 3, 4, 5}


def test_fallbacks_shrink_n_and_q():
    pools = _pools({"small": {"x": 4, "y": 3, "z": 2, "tiny": 1}})
    ep = EpisodeSampler(pools, n_way=5, k_shot=1, q_query=5, seed=0).episode(0)
    assert ep.n_way == 3  # "tiny" (1 image) cannot give a support and a query image
    assert "tiny" not in ep.class_names
    assert ep.q_query == 1  # the 2-image class leaves 1 query after K=1
    assert ep.query.shape[0] == 3 and ep.support.shape[0] == 3


def test_ineligible_tasks_are_skipped_and_k_falls_back():
    pools = _pools({"big": {"a": 20, "b": 20}, "one-class": {"c": 50}, "small": {"d": 3, "e": 3}})
    sampler = EpisodeSampler(pools, n_way=2, k_shot=(1, 5), q_query=2, seed=0)
    tasks, ks_small = set(), set()
    for i in range(80):
        ep = sampler.episode(i)
        tasks.add(ep.task)
        if ep.task == "small":
            ks_small.add(ep.k_shot)
    assert tasks == {"big", "small"}  # one-class never forms an episode
    assert ks_small <= {1, 2}  # a 3-image class serves K <= 2
    only_small = EpisodeSampler(_pools({"small": {"d": 3, "e": 3}}), k_shot=(1, 5), seed=0)
    assert {only_small.episode(i).k_shot for i in range(30)} == {1, 2}  # K > 2 falls back to 2


def test_no_eligible_task_explains_what_to_change():
    pools = _pools({"tiny-task": {"x": 2, "y": 1}, "solo": {"z": 40}})
    with pytest.raises(DataError) as info:
        EpisodeSampler(pools, k_shot=2)
    message = str(info.value)
    assert "k_shot=2" in message and "tiny-task: x=2, y=1" in message and "solo: z=40" in message
    assert "Lower k_shot" in message


def test_modality_dropout_flags():
    sampler = EpisodeSampler(POOLS, seed=0, text_dropout=0.3, image_dropout=0.2)
    flags = [(e.use_text, e.use_images) for e in (sampler.episode(i) for i in range(600))]
    assert (False, False) not in flags
    image_only = flags.count((False, True)) / len(flags)
    text_only = flags.count((True, False)) / len(flags)
    assert 0.22 < image_only < 0.38 and 0.13 < text_only < 0.27
    plain = EpisodeSampler(POOLS, seed=0)
    assert all(plain.episode(i).use_text and plain.episode(i).use_images for i in range(20))
    # Support images are sampled either way, identically: dropout changes only the flags.
    assert torch.equal(sampler.episode(5).support, plain.episode(5).support)
    assert not EpisodeSampler(POOLS, text_dropout=1.0).episode(0).use_text
    assert not EpisodeSampler(POOLS, image_dropout=1.0).episode(0).use_images


def test_task_weights():
    sampler = EpisodeSampler(POOLS, task_weights={"t2": 1.0}, seed=0)
    assert {sampler.episode(i).task for i in range(20)} == {"t2"}
    with pytest.raises(DataError, match="unknown tasks"):
        EpisodeSampler(POOLS, task_weights={"nope": 1.0})
    with pytest.raises(DataError, match="weight 0"):
        EpisodeSampler(POOLS, task_weights={"t1": 0.0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_way": 1}, "n_way"),
        ({"k_shot": 0}, "k_shot"),
        ({"k_shot": (3, 2)}, "empty"),
        ({"k_shot": "3"}, "k_shot"),
        ({"q_query": 0}, "q_query"),
        ({"text_dropout": 0.6, "image_dropout": 0.5}, "<= 1"),
        ({"text_dropout": -0.1}, r"\[0, 1\]"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        EpisodeSampler(POOLS, **kwargs)


def test_invalid_pools():
    with pytest.raises(DataError, match="No class pools"):
        EpisodeSampler([])
    with pytest.raises(DataError, match="appears in two pools"):
        EpisodeSampler([POOLS[0], POOLS[0], POOLS[1]])
    odd = ClassPool("t1", "odd", np.zeros((5, 8, 8, 3), np.uint8), "x")
    with pytest.raises(DataError, match="share one size"):
        EpisodeSampler([*POOLS, odd])
    with pytest.raises(DataError, match="uint8"):
        EpisodeSampler([ClassPool("t", "c", np.zeros((5, 4, 4), np.uint8), "x")])
    with pytest.raises(ValueError, match="index"):
        EpisodeSampler(POOLS).episode(-1)


def test_works_as_a_map_style_dataset():
    loader = torch.utils.data.DataLoader(EpisodeSampler(POOLS, seed=0), batch_size=None, sampler=range(3, 6))
    assert [ep.index for ep in loader] == [3, 4, 5]


# -- build_pools -------------------------------------------------------------------------------------


@pytest.fixture
def data_root(make_imagefolder, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    img = [("RGB", (12, 12))]
    make_imagefolder({f"c{i}": img * 3 for i in range(5)}, name="task-a", root=root)
    make_imagefolder({"melanoma": img * 2, "not_described_class": img * 2}, name="derm-clinical-dermnet", root=root)
    make_imagefolder({"x": img * 2, "y": img * 2}, name="held", root=root)
    return root


def test_build_pools_per_split(data_root: Path, tmp_path: Path, caplog):
    splits = make_splits(list_tasks(data_root), held_out_tasks=["held"], meta_val_tasks=["task-a"])
    with caplog.at_level(logging.WARNING, logger="sgps_hf.data.episodes"):
        train = build_pools("meta_train", 8, data_root, splits=splits, cache_dir=tmp_path / "c")
    train_log = caplog.text
    val = build_pools("meta_val", 8, data_root, splits=splits, cache_dir=tmp_path / "c")
    held = build_pools("held_out", 8, data_root, splits=splits, cache_dir=tmp_path / "c")
    as_set = lambda pools: {(p.task, p.class_name) for p in pools}  # noqa: E731
    assert len(val) == 5 and {p.task for p in val} == {"task-a"}
    assert as_set(held) == {("held", "x"), ("held", "y")}
    assert len(train) == 2 and not as_set(train) & as_set(val)
    assert all(p.images.shape[1:] == (8, 8, 3) and p.images.dtype == np.uint8 for p in train + val + held)
    texts = {p.class_name: p.text for p in train}
    assert texts["not_described_class"] == "not described class"
    assert "1 class(es) of derm-clinical-dermnet (not_described_class)" in train_log  # melanoma is described
    only = build_pools("meta_val", 8, data_root, splits=splits, tasks=["task-a"], cache_dir=tmp_path / "c")
    assert {p.task for p in only} == {"task-a"}
    with pytest.raises(DataError, match="no classes in split"):
        build_pools("meta_val", 8, data_root, splits=splits, tasks=["held"])
    with pytest.raises(DataError, match="Unknown split"):
        build_pools("train", 8, data_root, splits=splits)
    sampler = EpisodeSampler(train + val, n_way=3, k_shot=1, q_query=1)
    assert sampler.episode(0).support.shape[1:] == (3, 8, 8)


def test_build_pools_uses_packaged_descriptions(data_root: Path, tmp_path: Path):
    from sgps_hf.data import class_description

    expected = class_description("derm-clinical-dermnet", "melanoma")
    if expected is None:
        pytest.skip("no packaged description of derm-clinical-dermnet/melanoma")
    splits = make_splits(list_tasks(data_root), held_out_tasks=["held"], meta_val_tasks=[])
    pools = build_pools("meta_train", 8, data_root, splits=splits, tasks=["derm-clinical-dermnet"], cache_dir=tmp_path)
    assert {p.class_name: p.text for p in pools}["melanoma"] == expected
