"""The segmenter folder: a plain transformers UperNet plus its image processor, task sidecar and card.

``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` load without sgps_hf
(``pipeline("image-segmentation", model=<dir>)``); ``sgps_seg_task.json`` records the task, its fingerprints, the
labels, the synthesizer and the weights' sha256; ``README.md`` is the card.

Saves take the guarded path every sgps_hf folder takes (:mod:`.saved_folder`). Loading verifies the folder as a
classifier folder is verified before any of it is used: every sidecar key the segmenter and its card read, the labels
of ``config.json`` against the sidecar, config keys limited to what synthesis writes (a plain timm backbone, no
pretrained download), sane preprocessing, tensors against the config (from the header) and the weights' sha256. The
network is built from the verified config by sgps_hf itself; anything wrong is a :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError
from . import saved_folder
from .checkpoints import state_dict_sha256
from .classifier_checks import _plain_timm_name, check_metrics, is_int, is_number, read_json, short
from .safetensors_checks import WEIGHTS_FILE, check_tensors, expected_tensors, pickle_files, read_header

TASK_FILE = "sgps_seg_task.json"
PROCESSOR_FILE = "preprocessor_config.json"
#: The labels of a synthesized segmenter, in output order (``config.json``'s id2label; recorded in the sidecar).
LABELS = ("background", "foreground")
SEGMENTER = saved_folder.FolderKind(
    "segmenter", TASK_FILE, frozenset({WEIGHTS_FILE, "config.json", PROCESSOR_FILE, TASK_FILE, "README.md"})
)
MAX_IMAGE_SIZE = 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Written by save_pretrained itself (not part of the model's architecture).
_SAVE_KEYS = {"architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path"}


def save_segmenter_folder(segmenter: Any, save_directory: str | os.PathLike, repo_id: str | None) -> Path:
    """Write ``segmenter`` (a SynthesizedSegmenter) through the guarded save path; returns the resolved folder."""
    from .model_card import segmenter_card

    def write(staging: Path) -> None:
        segmenter.model.save_pretrained(staging, safe_serialization=True)
        segmenter.image_processor.save_pretrained(staging)
        text = json.dumps(segmenter.info, indent=2, ensure_ascii=False)
        (staging / TASK_FILE).write_text(text, encoding="utf-8")
        segmenter_card(segmenter, repo_id=repo_id).save(staging / "README.md")

    return saved_folder.guarded_save(save_directory, SEGMENTER, write)


def load_segmenter_folder(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Resolve, verify and load a segmenter folder: (UperNet model in eval mode, image processor, sidecar info)."""
    from transformers import SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    folder = saved_folder.resolve_folder(path_or_repo_id, revision, token, "segmenter")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = pickle_files(folder)
        hint = f" It has {pickles}: pickle files are refused for safety; re-save as safetensors." if pickles else ""
        raise CheckpointError(f"No {WEIGHTS_FILE} in {folder}; is it a segmenter saved by sgps_hf?{hint}")
    info = read_json(folder / TASK_FILE, "is it a segmenter saved by sgps_hf (save_pretrained)?")
    check_segmenter_info(info, folder)
    config_dict = read_json(folder / "config.json", "save the segmenter again with save_pretrained.")
    check_segmenter_config(config_dict, info, folder)
    processor_dict = read_json(folder / PROCESSOR_FILE, "save the segmenter again with save_pretrained.")
    check_processor_config(processor_dict, info, folder)
    try:
        config = UperNetConfig.from_dict(config_dict)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"config.json in {folder} is invalid ({exc}); save the segmenter again.") from exc
    build: Callable[[], Any] = lambda: UperNetForSemanticSegmentation(config)  # noqa: E731
    try:
        expected = expected_tensors(build)
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError, AttributeError) as exc:
        raise CheckpointError(
            f"config.json in {folder} describes a segmenter that cannot be built ({type(exc).__name__}: {exc})."
        ) from exc
    check_tensors(read_header([folder / WEIGHTS_FILE]), expected, folder, "segmenter")
    state = _load_state(folder)
    digest = state_dict_sha256(state)
    if digest != info["weights_sha256"]:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} has sha256 {digest[:16]}... but {folder / TASK_FILE} records key "
            f"'weights_sha256' {info['weights_sha256'][:16]}...: the weights were replaced or corrupted. Restore the "
            "file or save the segmenter again."
        )
    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"Cannot load the weights of {folder} ({exc}); save the segmenter again.") from exc
    processor = SegformerImageProcessor(**{k: v for k, v in processor_dict.items() if k != "image_processor_type"})
    return model.eval(), processor, info


def _load_state(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt data
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} is not a valid safetensors file ({exc}); re-download or re-save it."
        ) from exc


def _failer(where: Path, what: str) -> Callable[[str, str], None]:
    def fail(key: str, problem: str) -> None:
        raise CheckpointError(f"{where}: key {key!r} {problem}. Restore the file or save the {what} again.")

    return fail


def check_segmenter_info(info: Any, folder: Path) -> None:
    """Every key of ``sgps_seg_task.json`` the segmenter, its card and the app read; CheckpointError naming it."""
    fail = _failer(folder / TASK_FILE, "segmenter")
    if not isinstance(info, dict):
        fail("(top level)", "must be a JSON object")
    task = info.get("task")
    if not isinstance(task, dict):
        fail("task", "must be an object with name, label, num_examples and examples")
    for key in ("name", "label"):
        if not isinstance(task.get(key), str) or not task[key].strip():
            fail(f"task.{key}", "must be non-empty text")
    if task.get("description") is not None and not isinstance(task.get("description"), str):
        fail("task.description", "must be text or null")
    examples = task.get("examples")
    if not isinstance(examples, list) or not examples:
        fail("task.examples", "must be a non-empty list of image and mask fingerprints")
    for index, entry in enumerate(examples):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("image_sha256", "mask_sha256")
        ):
            fail(f"task.examples[{index}]", "must be an object with image_sha256 and mask_sha256 texts")
    if not is_int(task.get("num_examples")) or task["num_examples"] != len(examples):
        fail("task.num_examples", f"must be the number of examples ({len(examples)})")
    negatives = task.get("num_negative", 0)
    if not is_int(negatives) or not 0 <= negatives < len(examples):
        fail("task.num_negative", "must be a whole number below the number of examples")
    if not is_number(task.get("mean_foreground")) or not 0 <= task["mean_foreground"] <= 1:
        fail("task.mean_foreground", "must be a number between 0 and 1")
    if not isinstance(info.get("head"), str):
        fail("head", "must be text")
    labels = info.get("labels", list(LABELS))
    if labels != list(LABELS):
        fail("labels", f"must be {list(LABELS)} (what synthesis writes)")
    segmenter = info.get("segmenter")
    if not isinstance(segmenter, dict):
        fail("segmenter", "must be an object with backbone, hidden_size, image_size and raw_channels")
    if not isinstance(segmenter.get("backbone"), str) or not _plain_timm_name(segmenter["backbone"]):
        fail("segmenter.backbone", "must be a plain timm model name (no hf-hub:, local-dir: or other source)")
    for key, low, high in (("hidden_size", 1, 4096), ("image_size", 32, MAX_IMAGE_SIZE), ("raw_channels", 0, 4096)):
        if not is_int(segmenter.get(key)) or not low <= segmenter[key] <= high:
            fail(f"segmenter.{key}", f"must be a whole number from {low} to {high}")
    if not isinstance(info.get("weights_sha256"), str) or not _SHA256.fullmatch(info["weights_sha256"]):
        fail("weights_sha256", "must be the 64-character sha256 of the weights")
    synthesizer = info.get("synthesizer")
    if not isinstance(synthesizer, dict) or not all(
        isinstance(synthesizer.get(k), str) for k in ("name_or_path", "revision")
    ):
        fail("synthesizer", "must be an object with name_or_path and revision texts")
    if not isinstance(synthesizer.get("training_tasks", ""), str):
        fail("synthesizer.training_tasks", "must be text")
    for key in ("created", "sgps_hf_version"):
        if not isinstance(info.get(key, ""), str):
            fail(key, "must be text")
    check_metrics(info.get("metrics"), ("dice", "iou"), fail)


def _allowed_keys() -> tuple[set[str], set[str]]:
    """The keys synthesis writes into config.json: the UperNet's and its timm backbone config's."""
    from transformers import TimmBackboneConfig, UperNetConfig

    backbone = TimmBackboneConfig(backbone="tf_efficientnet_lite0", out_indices=(1, 2, 3, 4))
    top = UperNetConfig(backbone_config=backbone, use_auxiliary_head=False, num_labels=2)
    return set(top.to_dict()) | _SAVE_KEYS, set(backbone.to_dict()) | _SAVE_KEYS | _BACKBONE_KEYS


# What the built TimmBackbone adds to its config (the stages it exposes and the pretrained switch).
_BACKBONE_KEYS = {"stage_names", "out_features", "out_indices", "use_pretrained_backbone", "backbone"}


def check_segmenter_config(config: Any, info: dict[str, Any], folder: Path) -> None:
    """config.json must hold only what synthesis writes, describe the sidecar's segmenter and carry its labels."""
    fail = _failer(folder / "config.json", "segmenter")
    if not isinstance(config, dict):
        fail("(top level)", "must be a JSON object")
    top_keys, backbone_keys = _allowed_keys()
    unknown = sorted(set(config) - top_keys)
    if unknown:
        fail(unknown[0], f"is not written by synthesis (unknown keys {unknown[:5]}); other keys change the model")
    labels = info.get("labels", list(LABELS))
    if config.get("id2label") != {str(i): name for i, name in enumerate(labels)}:
        fail("id2label", f"is {short(config.get('id2label'))}, not the labels of {TASK_FILE} {labels}")
    if config.get("label2id") != {name: i for i, name in enumerate(labels)}:
        fail("label2id", f"is {short(config.get('label2id'))}, not the inverse of the labels of {TASK_FILE}")
    if config.get("model_type") != "upernet":
        fail("model_type", "must be 'upernet'")
    if config.get("architectures", ["UperNetForSemanticSegmentation"]) != ["UperNetForSemanticSegmentation"]:
        fail("architectures", "must be ['UperNetForSemanticSegmentation']")
    if config.get("use_auxiliary_head", False) is not False:
        fail("use_auxiliary_head", "must be false (synthesis writes no auxiliary head)")
    segmenter = info["segmenter"]
    width = segmenter["hidden_size"] + segmenter["raw_channels"]
    if config.get("hidden_size") != width:
        fail("hidden_size", f"is {short(config.get('hidden_size'))}, not {width} as {TASK_FILE} records")
    scales = config.get("pool_scales")
    if not isinstance(scales, list) or not scales or not all(is_int(s) and 1 <= s <= 64 for s in scales):
        fail("pool_scales", "must be a list of whole numbers from 1 to 64")
    backbone = config.get("backbone_config")
    if not isinstance(backbone, dict):
        fail("backbone_config", "must be an object")
    unknown = sorted(set(backbone) - backbone_keys)
    if unknown:
        fail(f"backbone_config.{unknown[0]}", f"is not written by synthesis (unknown keys {unknown[:5]})")
    if backbone.get("model_type") != "timm_backbone":
        fail("backbone_config.model_type", "must be 'timm_backbone'")
    if backbone.get("backbone") != segmenter["backbone"]:
        fail("backbone_config.backbone", f"is {short(backbone.get('backbone'))}, not {segmenter['backbone']!r}")
    if backbone.get("use_pretrained_backbone") is not False:
        fail("backbone_config.use_pretrained_backbone", "must be false (the weights are in model.safetensors)")
    indices = backbone.get("out_indices")
    if not isinstance(indices, list) or not indices or not all(is_int(i) and 0 <= i <= 8 for i in indices):
        fail("backbone_config.out_indices", "must be a list of stage numbers from 0 to 8")
    if backbone.get("num_channels", 3) != 3:
        fail("backbone_config.num_channels", "must be 3")


def check_processor_config(processor: Any, info: dict[str, Any], folder: Path) -> None:
    """preprocessor_config.json: the SegformerImageProcessor synthesis writes, at the sidecar's image size."""
    fail = _failer(folder / PROCESSOR_FILE, "segmenter")
    if not isinstance(processor, dict):
        fail("(top level)", "must be a JSON object")
    allowed = {
        "do_normalize",
        "do_reduce_labels",
        "do_rescale",
        "do_resize",
        "image_mean",
        "image_std",
        "image_processor_type",
        "resample",
        "rescale_factor",
        "size",
    }
    unknown = sorted(set(processor) - allowed)
    if unknown:
        fail(unknown[0], f"is not written by synthesis (unknown keys {unknown[:5]})")
    if processor.get("image_processor_type") != "SegformerImageProcessor":
        fail("image_processor_type", "must be 'SegformerImageProcessor'")
    side = info["segmenter"]["image_size"]
    if processor.get("size") != {"height": side, "width": side}:
        fail("size", f"must be {{'height': {side}, 'width': {side}}} as {TASK_FILE} records")
    for key in ("do_normalize", "do_rescale", "do_resize"):
        if processor.get(key) is not True:
            fail(key, "must be true")
    if processor.get("do_reduce_labels", False) is not False:
        fail("do_reduce_labels", "must be false")
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if not isinstance(mean, list) or len(mean) != 3 or not all(is_number(v) for v in mean):
        fail("image_mean", "must be 3 finite numbers")
    if not isinstance(std, list) or len(std) != 3 or not all(is_number(v) and v > 0 for v in std):
        fail("image_std", "must be 3 positive finite numbers")
    factor = processor.get("rescale_factor")
    if not is_number(factor) or not 0 < factor <= 1:
        fail("rescale_factor", "must be a number in (0, 1]")
    if processor.get("resample", 2) not in (0, 1, 2, 3, 4, 5):
        fail("resample", "must be a PIL resampling filter number (0 to 5)")
