"""SynthesizedClassifier: a plain timm EfficientNet-V2 plus the provenance of its synthesis.

Saved in timm's Hub layout (``model.safetensors`` + ``config.json`` with ``label_names`` and
``pretrained_cfg``), so it loads without this library:
``timm.create_model("local-dir:<dir>", pretrained=True)``, ``timm.create_model("hf-hub:<repo>",
pretrained=True)`` or ``transformers.pipeline("image-classification", model=<dir>)``. Next to it:
``README.md`` (the generated model card), ``sgps_task.json`` (task, fingerprints, provenance), the support
images (``support/``, see :mod:`sgps_hf.support`; left out of Hub pushes by default because they are patient
data) and the task files of earlier versions (``versions/v<N>/sgps_task.json``, see :mod:`sgps_hf.adaptation`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import timm
import torch
from torch import Tensor, nn

from . import __version__
from .atomic import atomic_directory, folder_lock
from .errors import CheckpointError, OutputPathError
from .image_processing_sgps import SGPSImageProcessor
from .imaging import ImageInput
from .safe_loading import check_tensors, expected_tensors, pickle_files, read_header
from .support import SUPPORT_DIR, Support, check_manifest, clean_image, read_support, support_available, support_manifest, write_support
from .target import materialize

if TYPE_CHECKING:
    from .modeling_sgps import SGPSSynthesizer
    from .task import TaskSpec

TASK_FILE = "sgps_task.json"
WEIGHTS_FILE = "model.safetensors"
VERSIONS_DIR = "versions"
FORMAT_VERSION = 1
_VERSION_FOLDER = re.compile(r"v([0-9]{1,6})")
#: What save_pretrained writes into a classifier folder. Anything else found there is the user's and is kept.
OWN_ENTRIES = frozenset({WEIGHTS_FILE, "config.json", TASK_FILE, "README.md", SUPPORT_DIR, VERSIONS_DIR})


class SynthesizedClassifier:
    """A task-specific classifier emitted by :meth:`SGPSSynthesizer.synthesize`.

    Attributes:
        model: the timm model (eval mode), usable directly as an ``nn.Module``.
        label_names: class names in output order.
        info: JSON-ready provenance: task (classes, clinical texts, support-image sha256),
            synthesizer id and revision, data config, metrics, version and changelog.
        versions: the ``info`` of every earlier version (oldest first), written to ``versions/``.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: Sequence[str],
        info: dict[str, Any],
        support: Support | None = None,
        versions: Sequence[dict[str, Any]] = (),
        support_folder: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.label_names = list(label_names)
        self.info = info
        self.versions = [copy.deepcopy(v) for v in versions]
        self.image_processor = SGPSImageProcessor(**_processor_kwargs(info["data_config"]))
        self._support = support
        self._support_folder = support_folder  # read lazily: predicting never needs the support images
        # (folder, weights sha256) this classifier was loaded from or derived from: saving back into that folder
        # after another writer changed it is refused, so that no concurrent update is silently overwritten.
        self._base: tuple[Path, str] | None = None

    @property
    def support(self) -> Support | None:
        """The support images per class (RGB, as the synthesizer saw them), or None when this copy lacks them."""
        if self._support is None and self._support_folder is not None:
            if support_available(self._support_folder, self.info.get("support")):
                self._support = read_support(self._support_folder, self.info["support"])
            self._support_folder = None
        return self._support

    @property
    def version(self) -> int:
        return int(self.info.get("version", 1))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls, synthesizer: "SGPSSynthesizer", weights: Mapping[str, Tensor], task: "TaskSpec", image_processor: SGPSImageProcessor
    ) -> "SynthesizedClassifier":
        config = synthesizer.config
        support = {cls.name: [clean_image(image) for image in cls.load_images()] for cls in task.classes}
        info = {
            "format_version": FORMAT_VERSION,
            "sgps_hf_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "task": task.to_dict(),
            "synthesizer": synthesizer_provenance(synthesizer),
            "target": {"architecture": config.target_architecture, "model_args": config.target_model_args},
            "data_config": image_processor.timm_data_config(),
            "weights_sha256": state_dict_sha256(weights),
            "metrics": None,
            "version": 1,
            "history": [],
            "support": support_manifest(task.class_names, support),
        }
        return cls(materialize(config, weights), task.class_names, info, support=support)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None) -> "SynthesizedClassifier":
        """Load a saved classifier from a folder or a Hub repo id (timm weights + ``sgps_task.json``).

        The folder is verified before it is used: every key of ``sgps_task.json`` and ``config.json`` that loading,
        prediction, updates or the model card read; the label names of both files against each other; the
        architecture (a plain timm name) and ``model_args`` (only what synthesis writes); sane preprocessing; and the
        weights' sha256 against the recorded one. Anything else gives a CheckpointError naming the file and key.
        """
        folder = _resolve_folder(path_or_repo_id, revision, token)
        if not (folder / WEIGHTS_FILE).is_file():
            pickles = pickle_files(folder)
            hint = f" It has {pickles}: pickle files are refused for safety; re-save as safetensors." if pickles else ""
            raise CheckpointError(f"No {WEIGHTS_FILE} in {folder}.{hint}")
        info = _read_json(folder / TASK_FILE, "is it a classifier saved by sgps_hf?")
        _check_task_file(info, folder)
        check_manifest(info.get("support"), info["task"], str(folder / TASK_FILE))
        architecture, label_names, model_args = _read_timm_config(folder)
        _cross_check(folder, info, architecture, label_names, model_args)
        target_args = dict(info["target"]["model_args"])
        num_classes = len(label_names)

        def build() -> nn.Module:
            return timm.create_model(architecture, pretrained=False, num_classes=num_classes, **target_args)

        expected = _buildable(build, folder)
        check_tensors(read_header([folder / WEIGHTS_FILE]), expected, folder, "classifier")
        model = _load_weights(folder, build, info)
        classifier = cls(model, label_names, info, versions=_read_versions(folder, info), support_folder=folder)
        support_available(folder, info.get("support"))  # refuses a partial support set now, not at the next save
        classifier._base = (folder.resolve(), str(info.get("weights_sha256")))
        return classifier

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> Tensor:
        """Class probabilities [num_images, num_classes]."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        logits = [self.model(self.image_processor(chunk)["pixel_values"]) for chunk in chunks]
        if not logits:
            return torch.zeros(0, len(self.label_names))
        return torch.cat(logits).softmax(-1)

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> list[dict[str, float]]:
        """For each image, a dict label -> probability (labels in output order)."""
        probs = self.predict_proba(images, batch_size)
        return [dict(zip(self.label_names, row.tolist())) for row in probs]

    def evaluate(self, labelled_images: Mapping[str, Sequence[ImageInput]]) -> dict[str, float]:
        """Accuracy and macro-F1 on labelled images ``{class name: [images]}``; stored for the model card."""
        from .evaluation.metrics import classification_metrics

        unknown = set(labelled_images) - set(self.label_names)
        if unknown:
            raise ValueError(f"Unknown classes {sorted(unknown)}; this classifier knows {self.label_names}.")
        images, labels = [], []
        for name, items in labelled_images.items():
            images.extend(items)
            labels.extend([self.label_names.index(name)] * len(items))
        probs = self.predict_proba(images)
        metrics = classification_metrics(probs.numpy(), labels, num_classes=len(self.label_names))
        self.info["metrics"] = {**metrics, "num_images": len(images)}
        return metrics

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, repo_id: str | None = None, include_support: bool = True) -> Path:
        """Write the classifier folder atomically (a crash never leaves a half-written folder).

        ``repo_id``: the Hub repo the folder is meant for; the model card's usage snippets then name it.
        ``include_support``: also store the support images (patient data) under ``support/``, which
        ``SGPSSynthesizer.update`` needs to re-synthesize; skipped when this copy has none.
        """
        from .model_card import classifier_card

        target = check_save_target(save_directory)
        support = self.support if include_support else None
        descriptions = {c["name"]: c["description"] for c in self.info["task"]["classes"] if c["description"]}
        with folder_lock(target):
            target = check_save_target(save_directory)  # again, now that no other writer can change it
            self._check_base(target)
            with atomic_directory(target) as staging:
                timm.models.save_for_hf(
                    self.model,
                    str(staging),
                    model_config={"label_names": self.label_names, "label_descriptions": descriptions or None},
                    model_args=self.info["target"]["model_args"],
                    safe_serialization=True,
                    data_config=dict(self.info["data_config"]),
                )
                _drop_num_classes_from_model_args(staging / "config.json")
                (staging / TASK_FILE).write_text(json.dumps(self.info, indent=2, ensure_ascii=False), encoding="utf-8")
                if support is not None and self.info.get("support"):
                    write_support(staging, self.info["support"], support)
                for previous in self.versions:
                    version_dir = staging / VERSIONS_DIR / f"v{int(previous.get('version', 1))}"
                    version_dir.mkdir(parents=True, exist_ok=True)
                    (version_dir / TASK_FILE).write_text(json.dumps(previous, indent=2, ensure_ascii=False), encoding="utf-8")
                card = classifier_card(self, repo_id=repo_id, support_included=support is not None and bool(self.info.get("support")))
                card.save(staging / "README.md")
                _carry_user_files(target, staging)
            self._base = (target, str(self.info.get("weights_sha256")))
        return Path(save_directory)

    def _check_base(self, target: Path) -> None:
        """Refuse to overwrite a folder another writer changed since this classifier was loaded (or derived) from it."""
        if self._base is None or self._base[0] != target or not (target / TASK_FILE).is_file():
            return
        try:
            current = json.loads((target / TASK_FILE).read_text(encoding="utf-8")).get("weights_sha256")
        except (OSError, ValueError, AttributeError):
            current = None
        if current != self._base[1]:
            raise OutputPathError(
                f"{target} was changed by another writer after this classifier was loaded from it (its weights are now "
                f"{str(current)[:16]}..., not {self._base[1][:16]}...). Saving would discard that change: load the folder "
                "again and repeat the update, or save to another folder."
            )

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Add synthesized classifier",
        include_support: bool = False,
    ) -> str:
        """Create ``repo_id`` if needed and upload the saved folder; returns the commit URL.

        ``include_support`` defaults to False: the support images are patient data and a Hub repo is
        easily made public, so only their sha256 fingerprints are uploaded unless you opt in (for example
        to a private repo of your institution, when consent and de-identification allow it). Without them
        the pushed copy classifies normally but cannot be adapted with ``SGPSSynthesizer.update``.
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "classifier", repo_id=repo_id, include_support=include_support)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                delete_patterns=None if include_support else ["support/**"],  # never leave old support images behind
            )
        return str(commit)

    def __repr__(self) -> str:
        return f"SynthesizedClassifier(classes={self.label_names}, architecture={self.info['target']['architecture']!r})"


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
    if not text or "\x00" in text:
        raise OutputPathError(f"Output folder {text!r} is empty or contains a NUL character; give a folder path.")
    try:
        target = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise OutputPathError(f"Output folder {text} cannot be resolved ({exc}); give another folder path.") from exc
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"Output path {text} is an existing file, not a folder; give a new folder for the classifier.")
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
        raise OutputPathError(f"Cannot write in {ancestor} (permission denied or read-only); choose a folder you can write to.")
    return target


def _carry_user_files(target: Path, staging: Path) -> None:
    """Copy what the user keeps in a classifier folder (notes, .git...) into the new version, so the swap loses none of it."""
    import shutil

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


def synthesizer_provenance(synthesizer: "SGPSSynthesizer") -> dict[str, str]:
    """Which synthesizer made a classifier: its name/path and a revision (Hub commit or weight hash)."""
    config = synthesizer.config
    revision = getattr(config, "_commit_hash", None) or "sha256:" + state_dict_sha256(synthesizer.state_dict())[:16]
    return {"name_or_path": str(getattr(config, "name_or_path", "") or "unsaved"), "revision": revision}


def state_dict_sha256(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
            previous = _read_json(entry / TASK_FILE, "restore it or delete that version folder.")
            where = f"{entry / TASK_FILE}"
            if not isinstance(previous, dict):
                raise CheckpointError(f"{where} must be a JSON object; restore it or delete that version folder.")
            version = previous.get("version", 1)
            if not _is_int(version) or version != int(match.group(1)) or (current is not None and version >= current):
                raise CheckpointError(
                    f"{where}: key 'version' is {_short(version)}, not {int(match.group(1))} (below the current version "
                    f"{current}); restore the file or delete that version folder."
                )
            versions.append((version, previous))
    return [item for _, item in sorted(versions, key=lambda item: item[0])]


def _resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None, token: str | None) -> Path:
    """The local folder to load: the path itself, or a Hub snapshot when it is not a local path.

    A path that does not exist is reported as a missing folder, not as an invalid Hub repo id.
    """
    text = os.fspath(path_or_repo_id)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise CheckpointError(f"Classifier location {text!r} is empty or contains a NUL character; give a folder or a Hub repo id.")
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{text} is a file, not a classifier folder; give the folder that save_pretrained or `sgps synthesize` wrote.")
    if not _REPO_ID.fullmatch(text) or ".." in text or text.startswith(("~", ".")):
        raise CheckpointError(f"Classifier folder {text} does not exist (relative paths start at {Path.cwd()}); check the path.")
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


def _read_json(path: Path, hint: str) -> Any:
    """Parsed JSON of a sidecar file, or CheckpointError naming it (bounded size, duplicate keys refused)."""
    try:
        if path.stat().st_size > _MAX_SIDECAR_BYTES:
            raise CheckpointError(f"{path} is larger than {_MAX_SIDECAR_BYTES // 2**20} MiB, far more than sgps_hf writes; restore it.")
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_pairs(path))
    except CheckpointError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path.parent} has no readable {path.name} (missing or not valid JSON: {type(exc).__name__}: {exc}); {hint}") from exc


_MAX_SIDECAR_BYTES = 64 * 1024 * 1024


def _unique_pairs(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise CheckpointError(f"{path}: key {key!r} appears twice in one object; restore the file or save the classifier again.")
            result[key] = value
        return result

    return hook


def _read_timm_config(folder: Path) -> tuple[str, list[str], dict[str, Any]]:
    """(architecture, label names, model_args) of a saved classifier's config.json; CheckpointError naming what is wrong."""
    config = _read_json(folder / "config.json", "save the classifier again with save_pretrained.")
    if not isinstance(config, dict):
        raise CheckpointError(f"config.json in {folder} must be a JSON object with architecture, num_classes and label_names.")
    architecture, labels, model_args = config.get("architecture"), config.get("label_names"), config.get("model_args", {})
    problems = []
    if not isinstance(architecture, str) or not architecture:
        problems.append("'architecture' must name a timm model")
    elif not _plain_timm_name(architecture):
        problems.append(f"'architecture' {_short(architecture)} must be a plain timm model name (no hf-hub:, local-dir: or other source)")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        problems.append("'label_names' must be a list of at least 2 class names")
    elif not all(label.strip() for label in labels) or len(set(labels)) != len(labels):
        problems.append("'label_names' must be unique, non-empty class names")
    elif not _is_int(config.get("num_classes", len(labels))) or config.get("num_classes", len(labels)) != len(labels):
        problems.append(f"'num_classes' is {_short(config.get('num_classes'))} but there are {len(labels)} label_names")
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        problems.append("'pretrained_cfg' must be an object (input_size, mean, std, ...)")
    if not isinstance(model_args, dict) or set(model_args) & _LOADER_ARGS or not all(_is_scalar(v) for v in model_args.values()):
        problems.append(f"'model_args' must be an object of plain timm model arguments (none of {sorted(_LOADER_ARGS)})")
    if not isinstance(config.get("label_descriptions") or {}, dict):
        problems.append("'label_descriptions' must be an object or null")
    if problems:
        raise CheckpointError(f"config.json in {folder} is invalid: {'; '.join(problems)}. Save the classifier again with save_pretrained.")
    return architecture, labels, model_args


# model_args that would make timm load other files or override what the folder says: never taken from a config.json.
_LOADER_ARGS = {"num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "features_only"}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
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
    from .configuration_sgps import TARGET_MODEL_ARGS

    return frozenset(TARGET_MODEL_ARGS)


def _expected_config_model_args(architecture: str, num_classes: int, target_args: Mapping[str, Any]) -> dict[str, Any] | None:
    """What save_pretrained writes as config.json's model_args for this model (timm adds its input and pooling args)."""
    try:
        from timm.models._input import get_model_args
    except ImportError:  # an older timm: save_for_hf wrote target_args only
        return dict(target_args)
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **target_args)
    args = get_model_args(model, dict(target_args))
    args.pop("num_classes", None)
    return json.loads(json.dumps(args))


def _cross_check(folder: Path, info: Mapping[str, Any], architecture: str, label_names: list[str], model_args: Mapping[str, Any]) -> None:
    """config.json and sgps_task.json must describe the same classifier (labels, architecture, args, preprocessing)."""
    task_file, config_file = folder / TASK_FILE, folder / "config.json"
    task_names = [c["name"] for c in info["task"]["classes"]]
    if label_names != task_names:
        raise CheckpointError(
            f"{config_file}: key 'label_names' {label_names[:10]} differs from the classes of {task_file} {task_names[:10]} "
            "(order included): predictions would carry the wrong labels. Restore the files or save the classifier again."
        )
    target = info["target"]
    if architecture != target["architecture"]:
        raise CheckpointError(f"{config_file}: key 'architecture' is {architecture!r} but {task_file} records {target['architecture']!r}; restore the files.")
    try:
        expected = _expected_config_model_args(architecture, len(label_names), target["model_args"])
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError, AttributeError) as exc:
        raise CheckpointError(f"{task_file}: key 'target' describes a model timm cannot build ({type(exc).__name__}: {exc}).") from exc
    if dict(model_args) != expected:
        raise CheckpointError(
            f"{config_file}: key 'model_args' is {_short(dict(model_args), 200)}, not what synthesis wrote ({_short(expected, 200)}); "
            "other values change the predictions. Restore the file or save the classifier again."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    pretrained_cfg = config.get("pretrained_cfg") or {}
    for key, value in info["data_config"].items():
        if key not in pretrained_cfg:
            continue
        found = pretrained_cfg[key]
        same = list(found) == list(value) if isinstance(value, list) and isinstance(found, (list, tuple)) else found == value
        if not same:
            raise CheckpointError(
                f"{config_file}: key 'pretrained_cfg.{key}' is {_short(pretrained_cfg.get(key))} but {task_file} records "
                f"{_short(value)}: timm and transformers would preprocess differently. Restore the files or save the classifier again."
            )


def _load_weights(folder: Path, build: Any, info: Mapping[str, Any]) -> nn.Module:
    """Build the model from the verified config and load exactly the weights whose sha256 the task file records."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt data
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc}); it may be truncated or corrupt: re-download or re-save it.") from exc
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
        raise CheckpointError(f"timm cannot load the classifier in {folder} ({exc}); save it again with save_pretrained.") from exc
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = {**dict(getattr(model, "pretrained_cfg", {}) or {}), **(config.get("pretrained_cfg") or {})}
    cfg.update(architecture=config["architecture"], label_names=config["label_names"], label_descriptions=config.get("label_descriptions"),
               file=str(folder), source="local-dir")
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model.eval()


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_task_file(info: Any, folder: Path) -> None:
    """Every key of sgps_task.json that loading, prediction, updates and the model card read; CheckpointError naming it."""
    from .image_processing_sgps import MAX_INPUT_SIZE

    where = folder / TASK_FILE
    bad = [key for key in ("task", "target", "data_config") if not isinstance(info, dict) or not isinstance(info.get(key), dict)]
    if not bad:
        data = info["data_config"]
        size, mean, std = data.get("input_size"), data.get("mean"), data.get("std")
        valid = (
            isinstance(size, list) and len(size) == 3 and all(_is_int(v) for v in size) and size[0] == 3 and size[1] == size[2]
            and 8 <= size[2] <= MAX_INPUT_SIZE
            and isinstance(mean, list) and len(mean) == 3 and all(_is_number(v) for v in mean)
            and isinstance(std, list) and len(std) == 3 and all(_is_number(v) and v > 0 for v in std)
            and data.get("interpolation") in ("bilinear", "bicubic")
            and data.get("crop_pct", 1.0) == 1.0 and data.get("crop_mode", "center") == "center"
        )
        if not valid:
            bad.append(f"data_config (input_size [3, S, S] with 8 <= S <= {MAX_INPUT_SIZE}, 3 finite mean and 3 positive std values, "
                       "interpolation bilinear or bicubic, crop_pct 1.0, crop_mode center)")
    if bad:
        raise CheckpointError(f"{TASK_FILE} in {folder} lacks a valid {', '.join(bad)}; save the classifier again with save_pretrained.")

    def fail(key: str, what: str) -> None:
        raise CheckpointError(f"{where}: key {key!r} {what}. Restore the file or save the classifier again with save_pretrained.")

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
        if not _is_int(entry.get("num_images")) or entry["num_images"] < 0:
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
    if not isinstance(args, dict) or not set(args) <= allowed or not all(_is_scalar(v) and v is not None for v in args.values()):
        fail("target.model_args", f"must hold only what synthesis writes ({sorted(allowed)}), as plain numbers or texts")
    if not isinstance(info.get("weights_sha256"), str) or not _SHA256.fullmatch(info["weights_sha256"]):
        fail("weights_sha256", "must be the 64-character sha256 of the weights")
    synthesizer = info.get("synthesizer")
    if not isinstance(synthesizer, dict) or not all(isinstance(synthesizer.get(k), str) for k in ("name_or_path", "revision")):
        fail("synthesizer", "must be an object with name_or_path and revision texts")
    version = info.get("version", 1)
    if not _is_int(version) or version < 1:
        fail("version", "must be a whole number of at least 1")
    if not _is_int(info.get("format_version", FORMAT_VERSION)) or info.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        fail("format_version", f"must be at most {FORMAT_VERSION} (a newer sgps_hf wrote it: upgrade sgps_hf)")
    for key in ("created", "sgps_hf_version"):
        if not isinstance(info.get(key, ""), str):
            fail(key, "must be text")
    metrics = info.get("metrics")
    if metrics is not None and (not isinstance(metrics, dict) or not all(_is_number(metrics.get(k)) for k in ("accuracy", "macro_f1"))
                                or not _is_int(metrics.get("num_images"))):
        fail("metrics", "must be null or an object with accuracy, macro_f1 and num_images")
    history = info.get("history", [])
    if not isinstance(history, list):
        fail("history", "must be a list of changelog entries")
    for index, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("summary"), str) or not isinstance(entry.get("created"), str):
            fail(f"history[{index}]", "must be an object with summary and created texts")
        if "version" in entry and not _is_int(entry["version"]):
            fail(f"history[{index}].version", "must be a whole number")
        added = entry.get("added", {})
        if not isinstance(added, dict) or not all(_is_int(v) for v in added.values()):
            fail(f"history[{index}].added", "must map class names to numbers of images")


def _buildable(build: Any, folder: Path) -> dict[str, Any]:
    """Tensor specs of the model config.json describes, or CheckpointError when timm cannot build it."""
    try:
        return expected_tensors(build)
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError, AttributeError) as exc:  # unknown architecture, bad args
        raise CheckpointError(f"config.json in {folder} describes a model timm cannot build ({type(exc).__name__}: {exc}).") from exc


def _drop_num_classes_from_model_args(config_path: Path) -> None:
    """transformers' timm wrapper passes ``num_classes`` itself and rejects a second copy in ``model_args``."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _processor_kwargs(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "image_size": int(data_config["input_size"][-1]),
        "image_mean": data_config["mean"],
        "image_std": data_config["std"],
        "interpolation": data_config["interpolation"],
    }
