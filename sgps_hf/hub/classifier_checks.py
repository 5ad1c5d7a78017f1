"""Verification of a classifier folder's two JSON files before anything in them is used.

Every key of ``sgps_task.json`` and ``config.json`` that loading, prediction, updates or the model card read is
checked here; anything wrong is a :class:`~sgps_hf.errors.CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import timm
import torch

from ..body.timm_network import TARGET_MODEL_ARGS
from ..errors import CheckpointError
from .safetensors_checks import expected_tensors

TASK_FILE = "sgps_task.json"
FORMAT_VERSION = 1
#: The largest square input side a classifier's preprocessing may ask for.
MAX_INPUT_SIZE = 1024


def read_json(path: Path, hint: str) -> Any:
    """Parsed JSON of a sidecar file, or CheckpointError naming it (bounded size, duplicate keys refused)."""
    try:
        if path.stat().st_size > _MAX_SIDECAR_BYTES:
            raise CheckpointError(
                f"{path} is larger than {_MAX_SIDECAR_BYTES // 2**20} MiB, far more than sgps_hf writes; restore it."
            )
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_pairs(path))
    except CheckpointError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path.parent} has no readable {path.name} (missing or not valid JSON: {type(exc).__name__}: {exc}); "
            f"{hint}"
        ) from exc


_MAX_SIDECAR_BYTES = 64 * 1024 * 1024


def _unique_pairs(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise CheckpointError(
                    f"{path}: key {key!r} appears twice in one object; restore the file or save the classifier again."
                )
            result[key] = value
        return result

    return hook


def read_timm_config(folder: Path) -> tuple[str, list[str], dict[str, Any]]:
    """(architecture, label names, model_args) of a saved classifier's config.json; CheckpointError naming what is
    wrong."""
    config = read_json(folder / "config.json", "save the classifier again with save_pretrained.")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"config.json in {folder} must be a JSON object with architecture, num_classes and label_names."
        )
    architecture, labels, model_args = (
        config.get("architecture"),
        config.get("label_names"),
        config.get("model_args", {}),
    )
    problems = []
    if not isinstance(architecture, str) or not architecture:
        problems.append("'architecture' must name a timm model")
    elif not _plain_timm_name(architecture):
        problems.append(
            f"'architecture' {short(architecture)} must be a plain timm model name (no hf-hub:, local-dir: or other "
            "source)"
        )
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        problems.append("'label_names' must be a list of at least 2 class names")
    elif not all(label.strip() for label in labels) or len(set(labels)) != len(labels):
        problems.append("'label_names' must be unique, non-empty class names")
    elif not is_int(config.get("num_classes", len(labels))) or config.get("num_classes", len(labels)) != len(labels):
        problems.append(f"'num_classes' is {short(config.get('num_classes'))} but there are {len(labels)} label_names")
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        problems.append("'pretrained_cfg' must be an object (input_size, mean, std, ...)")
    if (
        not isinstance(model_args, dict)
        or set(model_args) & _LOADER_ARGS
        or not all(_is_scalar(v) for v in model_args.values())
    ):
        problems.append(
            f"'model_args' must be an object of plain timm model arguments (none of {sorted(_LOADER_ARGS)})"
        )
    if not isinstance(config.get("label_descriptions") or {}, dict):
        problems.append("'label_descriptions' must be an object or null")
    if problems:
        raise CheckpointError(
            f"config.json in {folder} is invalid: {'; '.join(problems)}. Save the classifier again with "
            "save_pretrained."
        )
    return architecture, labels, model_args


# model_args that would make timm load other files or override what the folder says: never taken from a config.json.
_LOADER_ARGS = {
    "num_classes",
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
    "features_only",
}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metrics(metrics: Any, keys: Sequence[str], fail: Callable[[str, str], None]) -> None:
    """A task file's ``metrics``: null, or an object with a finite number per key and an integer num_images."""
    if metrics is not None and (
        not isinstance(metrics, dict)
        or not all(is_number(metrics.get(k)) for k in keys)
        or not is_int(metrics.get("num_images"))
    ):
        fail("metrics", f"must be null or an object with {', '.join(keys)} and num_images")


def short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, (list, dict)) else f"<a {type(value).__name__} of {len(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    return frozenset(timm.list_models())


def _plain_timm_name(name: str) -> bool:
    """A model name timm's own registry defines: no ``hf-hub:`` / ``local-dir:`` / other source prefix, no path."""
    return ":" not in name and "/" not in name and name in _timm_names()


def synthesis_model_args() -> frozenset[str]:
    """The ``model_args`` keys synthesis can write (those ``SGPSConfig.target_model_args`` may hold)."""
    return frozenset(TARGET_MODEL_ARGS)


def _expected_config_model_args(
    architecture: str, num_classes: int, target_args: Mapping[str, Any]
) -> dict[str, Any] | None:
    """What save_pretrained writes as config.json's model_args for this model (timm adds its input and pooling
    args)."""
    try:
        from timm.models._input import get_model_args
    except ImportError:  # an older timm: save_for_hf wrote target_args only
        return dict(target_args)
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **target_args)
    args = get_model_args(model, dict(target_args))
    args.pop("num_classes", None)
    return json.loads(json.dumps(args))


def cross_check(
    folder: Path, info: Mapping[str, Any], architecture: str, label_names: list[str], model_args: Mapping[str, Any]
) -> None:
    """config.json and sgps_task.json must describe the same classifier (labels, architecture, args, preprocessing)."""
    task_file, config_file = folder / TASK_FILE, folder / "config.json"
    task_names = [c["name"] for c in info["task"]["classes"]]
    if label_names != task_names:
        raise CheckpointError(
            f"{config_file}: key 'label_names' {label_names[:10]} differs from the classes of {task_file} "
            f"{task_names[:10]} (order included): predictions would carry the wrong labels. Restore the files or save "
            "the classifier again."
        )
    target = info["target"]
    if architecture != target["architecture"]:
        raise CheckpointError(
            f"{config_file}: key 'architecture' is {architecture!r} but {task_file} records "
            f"{target['architecture']!r}; restore the files."
        )
    try:
        expected = _expected_config_model_args(architecture, len(label_names), target["model_args"])
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError, AttributeError) as exc:
        raise CheckpointError(
            f"{task_file}: key 'target' describes a model timm cannot build ({type(exc).__name__}: {exc})."
        ) from exc
    if dict(model_args) != expected:
        raise CheckpointError(
            f"{config_file}: key 'model_args' is {short(dict(model_args), 200)}, not what synthesis wrote "
            f"({short(expected, 200)}); other values change the predictions. Restore the file or save the classifier "
            "again."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    pretrained_cfg = config.get("pretrained_cfg") or {}
    for key, value in info["data_config"].items():
        if key not in pretrained_cfg:
            continue
        found = pretrained_cfg[key]
        same = (
            list(found) == list(value)
            if isinstance(value, list) and isinstance(found, (list, tuple))
            else found == value
        )
        if not same:
            raise CheckpointError(
                f"{config_file}: key 'pretrained_cfg.{key}' is {short(pretrained_cfg.get(key))} but {task_file} "
                f"records {short(value)}: timm and transformers would preprocess differently. Restore the files or "
                "save the classifier again."
            )


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_task_file(info: Any, folder: Path) -> None:
    """Every key of sgps_task.json that loading, prediction, updates and the model card read; CheckpointError naming
    it."""
    where = folder / TASK_FILE
    bad = [
        key
        for key in ("task", "target", "data_config")
        if not isinstance(info, dict) or not isinstance(info.get(key), dict)
    ]
    if not bad:
        data = info["data_config"]
        size, mean, std = data.get("input_size"), data.get("mean"), data.get("std")
        valid = (
            isinstance(size, list)
            and len(size) == 3
            and all(is_int(v) for v in size)
            and size[0] == 3
            and size[1] == size[2]
            and 8 <= size[2] <= MAX_INPUT_SIZE
            and isinstance(mean, list)
            and len(mean) == 3
            and all(is_number(v) for v in mean)
            and isinstance(std, list)
            and len(std) == 3
            and all(is_number(v) and v > 0 for v in std)
            and data.get("interpolation") in ("bilinear", "bicubic")
            and data.get("crop_pct", 1.0) == 1.0
            and data.get("crop_mode", "center") == "center"
        )
        if not valid:
            bad.append(
                f"data_config (input_size [3, S, S] with 8 <= S <= {MAX_INPUT_SIZE}, 3 finite mean and 3 positive std "
                "values, interpolation bilinear or bicubic, crop_pct 1.0, crop_mode center)"
            )
    if bad:
        raise CheckpointError(
            f"{TASK_FILE} in {folder} lacks a valid {', '.join(bad)}; save the classifier again with save_pretrained."
        )

    def fail(key: str, what: str) -> None:
        raise CheckpointError(
            f"{where}: key {key!r} {what}. Restore the file or save the classifier again with save_pretrained."
        )

    task = info["task"]
    if not isinstance(task.get("name"), str) or not isinstance(task.get("modality", ""), str):
        fail("task.name", "must be text (and task.modality too)")
    classes = task.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        fail("task.classes", "must be a list of at least 2 classes")
    for index, entry in enumerate(classes):
        key = f"task.classes[{index}]"
        if not isinstance(entry, dict):
            fail(key, "must be an object with name, description and num_images")
        if not isinstance(entry.get("name"), str) or not entry["name"].strip():
            fail(f"{key}.name", "must be a non-empty class name")
        if not isinstance(entry.get("description"), str):
            fail(f"{key}.description", "must be text (empty for an image-only class)")
        if not is_int(entry.get("num_images")) or entry["num_images"] < 0:
            fail(f"{key}.num_images", "must be a whole number of images")
        hashes = entry.get("image_sha256", [])
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            fail(f"{key}.image_sha256", "must be a list of sha256 texts")
    names = [entry["name"] for entry in classes]
    if len(set(names)) != len(names):
        fail("task.classes", "must have unique class names")
    target = info["target"]
    if not isinstance(target.get("architecture"), str) or not _plain_timm_name(target["architecture"]):
        fail("target.architecture", "must be a plain timm model name (no hf-hub:, local-dir: or other source)")
    args = target.get("model_args")
    allowed = synthesis_model_args()
    if (
        not isinstance(args, dict)
        or not set(args) <= allowed
        or not all(_is_scalar(v) and v is not None for v in args.values())
    ):
        fail(
            "target.model_args", f"must hold only what synthesis writes ({sorted(allowed)}), as plain numbers or texts"
        )
    if not isinstance(info.get("weights_sha256"), str) or not _SHA256.fullmatch(info["weights_sha256"]):
        fail("weights_sha256", "must be the 64-character sha256 of the weights")
    synthesizer = info.get("synthesizer")
    if not isinstance(synthesizer, dict) or not all(
        isinstance(synthesizer.get(k), str) for k in ("name_or_path", "revision")
    ):
        fail("synthesizer", "must be an object with name_or_path and revision texts")
    version = info.get("version", 1)
    if not is_int(version) or version < 1:
        fail("version", "must be a whole number of at least 1")
    if (
        not is_int(info.get("format_version", FORMAT_VERSION))
        or info.get("format_version", FORMAT_VERSION) > FORMAT_VERSION
    ):
        fail("format_version", f"must be at most {FORMAT_VERSION} (a newer sgps_hf wrote it: upgrade sgps_hf)")
    for key in ("created", "sgps_hf_version"):
        if not isinstance(info.get(key, ""), str):
            fail(key, "must be text")
    check_metrics(info.get("metrics"), ("accuracy", "macro_f1"), fail)
    history = info.get("history", [])
    if not isinstance(history, list):
        fail("history", "must be a list of changelog entries")
    for index, entry in enumerate(history):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("summary"), str)
            or not isinstance(entry.get("created"), str)
        ):
            fail(f"history[{index}]", "must be an object with summary and created texts")
        if "version" in entry and not is_int(entry["version"]):
            fail(f"history[{index}].version", "must be a whole number")
        added = entry.get("added", {})
        if not isinstance(added, dict) or not all(is_int(v) for v in added.values()):
            fail(f"history[{index}].added", "must map class names to numbers of images")


def buildable_tensors(build: Any, folder: Path) -> dict[str, Any]:
    """Tensor specs of the model config.json describes, or CheckpointError when timm cannot build it."""
    try:
        return expected_tensors(build)
    except (
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        AssertionError,
        AttributeError,
    ) as exc:  # unknown architecture, bad args
        raise CheckpointError(
            f"config.json in {folder} describes a model timm cannot build ({type(exc).__name__}: {exc})."
        ) from exc
