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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import timm
from torch import nn

from ..errors import CheckpointError, OutputPathError
from ..imaging import check_path_text
from .atomic import atomic_directory, folder_lock
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
from .model_card import classifier_card
from .safetensors_checks import WEIGHTS_FILE, check_tensors, pickle_files, read_header
from .support_images import SUPPORT_DIR, check_manifest, support_available, write_support

VERSIONS_DIR = "versions"
_VERSION_FOLDER = re.compile(r"v([0-9]{1,6})")
#: What save_classifier writes into a classifier folder. Anything else found there is the user's and is kept.
OWN_ENTRIES = frozenset({WEIGHTS_FILE, "config.json", TASK_FILE, "README.md", SUPPORT_DIR, VERSIONS_DIR})


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
    folder = _resolve_folder(path_or_repo_id, revision, token)
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
    classifier: Any, save_directory: str | os.PathLike, repo_id: str | None, include_support: bool
) -> Path:
    """Write ``classifier`` (a SynthesizedClassifier) as a folder, atomically; returns the resolved folder.

    ``classifier._base`` (folder, weights sha256 it was loaded from) guards against overwriting another writer's change.
    """
    target = check_save_target(save_directory)
    support = classifier.support if include_support else None
    support_included = support is not None and bool(classifier.info.get("support"))
    with folder_lock(target):
        target = check_save_target(save_directory)  # again, now that no other writer can change it
        check_base(classifier._base, target)
        with atomic_directory(target) as staging:
            _write_files(classifier, staging, support if support_included else None)
            classifier_card(classifier, repo_id=repo_id, support_included=support_included).save(staging / "README.md")
            _carry_user_files(target, staging)
    return target


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
    return (folder / TASK_FILE).is_file() and (folder / "config.json").is_file()


def check_save_target(save_directory: str | os.PathLike) -> Path:
    """The resolved folder to save a classifier into; OutputPathError when saving there could harm other files.

    A new path, an empty folder or an existing classifier folder are fine. A file, or a folder holding other
    files (a project folder, the current directory with the task file and images...), is refused: save_pretrained
    replaces the folder as a whole, so it never writes into a folder it did not create.
    """
    text = os.fspath(save_directory)
    if not text:
        raise OutputPathError("The output folder is empty; give a folder path.")
    check_path_text(text, "Output folder", OutputPathError)
    try:
        target = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputPathError(f"Output folder {text} cannot be resolved ({exc}); give another folder path.") from exc
    if target.exists() and not target.is_dir():
        raise OutputPathError(
            f"Output path {text} is an existing file, not a folder; give a new folder for the classifier."
        )
    if target.is_dir():
        entries = sorted(entry.name for entry in target.iterdir())
        if entries and not is_classifier_folder(target):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputPathError(
                f"Output folder {text} already holds other files ({shown}) and is not a classifier folder; nothing was "
                f"written, so they are untouched. Save into a new or empty folder, e.g. {Path(text) / 'classifier'}."
            )
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"Cannot write in {ancestor} (permission denied or read-only); choose a folder you can write to."
        )
    return target


def _carry_user_files(target: Path, staging: Path) -> None:
    """Copy what the user keeps in a classifier folder (notes, .git...) into the new version, so the swap loses none of it."""
    if not target.is_dir():
        return
    for entry in target.iterdir():
        if entry.name in OWN_ENTRIES or (staging / entry.name).exists() or (staging / entry.name).is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staging / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name)


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
                    f"{where}: key 'version' is {short(version)}, not {int(match.group(1))} (below the current version "
                    f"{current}); fix or restore the file, or delete that version folder."
                )
            versions.append((version, previous))
    return [item for _, item in sorted(versions, key=lambda item: item[0])]


def _resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None, token: str | None) -> Path:
    """The local folder to load: the path itself, or a Hub snapshot when it is not a local path.

    A path that does not exist is reported as a missing folder, not as an invalid Hub repo id.
    """
    text = os.fspath(path_or_repo_id)
    if not isinstance(text, str) or not text:
        raise CheckpointError(f"Classifier location {text!r} is empty; give a folder or a Hub repo id.")
    check_path_text(text, "Classifier location", CheckpointError)
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(
            f"{text} is a file, not a classifier folder; give the folder that save_pretrained or `sgps synthesize` wrote."
        )
    if not _REPO_ID.fullmatch(text) or ".." in text or text.startswith(("~", ".")):
        raise CheckpointError(
            f"Classifier folder {text} does not exist (relative paths start at {Path.cwd()}); check the path."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, token=token))
    except Exception as exc:  # noqa: BLE001 - not found, invalid id, offline, HTTP errors: all mean "cannot get it"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"No classifier folder {text} here (relative paths start at {Path.cwd()}), and no Hub repo {text} could be "
            f"downloaded ({type(exc).__name__}: {first}). Check the path, or the repo id, revision and token."
        ) from exc


_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


def _load_weights(folder: Path, build: Any, info: Mapping[str, Any]) -> nn.Module:
    """Build the model from the verified config and load exactly the weights whose sha256 the task file records."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt data
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); it may be truncated or corrupt: re-download or re-save it."
        ) from exc
    digest = state_dict_sha256(state)
    if digest != info["weights_sha256"]:
        raise CheckpointError(
            f"{path} has sha256 {digest[:16]}... but {folder / TASK_FILE} records key 'weights_sha256' {info['weights_sha256'][:16]}...: "
            "the weights were replaced or corrupted. Restore the file or save the classifier again."
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
