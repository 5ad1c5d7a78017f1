"""The classifier folder: timm's Hub layout plus the task file, support images, earlier versions and the card.

``model.safetensors`` + ``config.json`` (with ``label_names`` and ``pretrained_cfg``) load without sgps_hf:
``timm.create_model("local-dir:<dir>", pretrained=True)``, ``timm.create_model("hf-hub:<repo>", pretrained=True)`` or
``transformers.pipeline("image-classification", model=<dir>)``. Next to them: ``README.md`` (the model card),
``sgps_task.json`` (task, fingerprints, provenance), ``support/`` (see :mod:`.support_images`; left out of Hub pushes
by default because they are patient data) and ``versions/v<N>/sgps_task.json`` (earlier versions).

Saving is atomic and refuses to overwrite a folder another writer changed meanwhile; loading verifies the folder
(:mod:`.classifier_checks`, the weights' sha256) before any of it is used.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import timm
from torch import nn

from ..errors import CheckpointError, OutputPathError
from . import saved_folder
from .checkpoints import state_dict_sha256
from .classifier_checks import (
    TASK_FILE,
    buildable_tensors,
    check_task_file,
    cross_check,
    is_int,
    read_json,
    read_timm_config,
    short,
)
from .classifier_versions import VERSIONS_DIR, check_history, write_version_weights
from .model_card import classifier_card
from .safetensors_checks import WEIGHTS_FILE, check_tensors, pickle_files, read_header
from .support_images import SUPPORT_DIR, check_manifest, support_available, write_support

_VERSION_FOLDER = re.compile(r"v([0-9]{1,6})")
#: What save_classifier writes into a classifier folder. Anything else found there is the user's and is kept.
OWN_ENTRIES = frozenset({WEIGHTS_FILE, "config.json", TASK_FILE, "README.md", SUPPORT_DIR, VERSIONS_DIR})
CLASSIFIER = saved_folder.FolderKind("classifier", TASK_FILE, OWN_ENTRIES)


@dataclass
class LoadedFolder:
    """A verified classifier folder: the timm model and the records next to it."""

    folder: Path
    model: nn.Module
    label_names: list[str]
    info: dict[str, Any]
    versions: list[dict[str, Any]]


def load_classifier_folder(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> LoadedFolder:
    """Resolve (download for a Hub repo id), verify and load a classifier folder."""
    folder = saved_folder.resolve_folder(path_or_repo_id, revision, token, "classifier")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = pickle_files(folder)
        hint = f" It has {pickles}: pickle files are refused for safety; re-save as safetensors." if pickles else ""
        raise CheckpointError(f"No {WEIGHTS_FILE} in {folder}.{hint}")
    info = read_json(folder / TASK_FILE, "is it a classifier saved by sgps_hf?")
    check_task_file(info, folder)
    check_manifest(info.get("support"), info["task"], str(folder / TASK_FILE))
    architecture, label_names, model_args = read_timm_config(folder)
    cross_check(folder, info, architecture, label_names, model_args)
    target_args = dict(info["target"]["model_args"])

    def build() -> nn.Module:
        return timm.create_model(architecture, pretrained=False, num_classes=len(label_names), **target_args)

    check_tensors(read_header([folder / WEIGHTS_FILE]), buildable_tensors(build, folder), folder, "classifier")
    model = _load_weights(folder, build, info)
    versions = _read_versions(folder, info)
    support_available(folder, info.get("support"))  # refuses a partial support set now, not at the next save
    return LoadedFolder(folder, model, label_names, info, versions)


def save_classifier_folder(
    classifier: Any,
    save_directory: str | os.PathLike,
    repo_id: str | None,
    include_support: bool,
    overwrite: bool = False,
) -> Path:
    """Write ``classifier`` (a SynthesizedClassifier) as a folder, atomically; returns the resolved folder.

    ``classifier._base`` (folder, weights sha256 it was loaded from) guards against overwriting another writer's
    change; a folder holding a version history is only replaced by a classifier descended from it, unless
    ``overwrite`` (:func:`.classifier_versions.check_history`).
    """
    support = classifier.support if include_support else None
    support_included = support is not None and bool(classifier.info.get("support"))

    def write(staging: Path) -> None:
        _write_files(classifier, staging, support if support_included else None)
        classifier_card(classifier, repo_id=repo_id, support_included=support_included).save(staging / "README.md")

    def before(target: Path) -> None:
        check_base(classifier._base, target)
        check_history(target, classifier, overwrite)

    return saved_folder.guarded_save(save_directory, CLASSIFIER, write, before=before)


def _write_files(classifier: Any, staging: Path, support: Mapping[str, Any] | None) -> None:
    info = classifier.info
    descriptions = {c["name"]: c["description"] for c in info["task"]["classes"] if c["description"]}
    timm.models.save_for_hf(
        classifier.model,
        str(staging),
        model_config={"label_names": classifier.label_names, "label_descriptions": descriptions or None},
        model_args=info["target"]["model_args"],
        safe_serialization=True,
        data_config=dict(info["data_config"]),
    )
    _drop_num_classes_from_model_args(staging / "config.json")
    _write_json(staging / TASK_FILE, info)
    if support is not None:
        write_support(staging, info["support"], support)
    for previous in classifier.versions:
        version_dir = staging / VERSIONS_DIR / f"v{int(previous.get('version', 1))}"
        version_dir.mkdir(parents=True, exist_ok=True)
        _write_json(version_dir / TASK_FILE, previous)
    write_version_weights(classifier, staging)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def check_base(base: tuple[Path, str] | None, target: Path) -> None:
    """Refuse to overwrite a folder another writer changed since a classifier was loaded (or derived) from it."""
    if base is None or base[0] != target or not (target / TASK_FILE).is_file():
        return
    try:
        current = json.loads((target / TASK_FILE).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        current = None
    if current != base[1]:
        raise OutputPathError(
            f"{target} was changed by another writer after this classifier was loaded from it (its weights are now "
            f"{str(current)[:16]}..., not {base[1][:16]}...). Saving would discard that change: load the folder "
            "again and repeat the update, or save to another folder."
        )


def push_classifier(
    classifier: Any, repo_id: str, token: str | None, private: bool | None, commit_message: str, include_support: bool
) -> str:
    """Create ``repo_id`` if needed and upload the saved folder (support images only when asked); the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = classifier.save_pretrained(Path(tmp) / "classifier", repo_id=repo_id, include_support=include_support)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            delete_patterns=None if include_support else ["support/**"],  # never leave old support images behind
        )
    return str(commit)


def is_classifier_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like a classifier folder written by save_pretrained (its task file and config)."""
    return CLASSIFIER.holds(folder)


def check_save_target(save_directory: str | os.PathLike) -> Path:
    """The resolved folder to save a classifier into (:func:`.saved_folder.check_save_target`)."""
    return saved_folder.check_save_target(save_directory, CLASSIFIER)


def _read_versions(folder: Path, info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The task files of earlier versions (``versions/v<N>/sgps_task.json``), oldest first."""
    versions = []
    root = folder / VERSIONS_DIR
    if not root.is_dir():
        return versions
    current = int(info.get("version", 1)) if info else None
    for entry in root.iterdir():
        match = _VERSION_FOLDER.fullmatch(entry.name)
        if match and (entry / TASK_FILE).is_file():
            previous = read_json(entry / TASK_FILE, "restore it or delete that version folder.")
            where = f"{entry / TASK_FILE}"
            if not isinstance(previous, dict):
                raise CheckpointError(f"{where} must be a JSON object; restore it or delete that version folder.")
            version = previous.get("version", 1)
            if not is_int(version) or version != int(match.group(1)) or (current is not None and version >= current):
                raise CheckpointError(
                    f"{where}: key 'version' is {short(version)}, not {int(match.group(1))} (below the current "
                    f"version {current}); fix or restore the file, or delete that version folder."
                )
            versions.append((version, previous))
    return [item for _, item in sorted(versions, key=lambda item: item[0])]


def _load_weights(folder: Path, build: Any, info: Mapping[str, Any]) -> nn.Module:
    """Build the model from the verified config and load exactly the weights whose sha256 the task file records."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt data
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); it may be truncated or corrupt: re-download or re-save "
            "it."
        ) from exc
    digest = state_dict_sha256(state)
    if digest != info["weights_sha256"]:
        raise CheckpointError(
            f"{path} has sha256 {digest[:16]}... but {folder / TASK_FILE} records key 'weights_sha256' "
            f"{info['weights_sha256'][:16]}...: the weights were replaced or corrupted. Restore the file or save the "
            "classifier again."
        )
    try:
        model = build()
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"timm cannot load the classifier in {folder} ({exc}); save it again with save_pretrained."
        ) from exc
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = {**dict(getattr(model, "pretrained_cfg", {}) or {}), **(config.get("pretrained_cfg") or {})}
    cfg.update(
        architecture=config["architecture"],
        label_names=config["label_names"],
        label_descriptions=config.get("label_descriptions"),
        file=str(folder),
        source="local-dir",
    )
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model.eval()


def _drop_num_classes_from_model_args(config_path: Path) -> None:
    """transformers' timm wrapper passes ``num_classes`` itself and rejects a second copy in ``model_args``."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
