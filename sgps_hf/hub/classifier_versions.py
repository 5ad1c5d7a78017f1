"""Earlier versions of a classifier folder: what each keeps, how saves carry them over, how to load one.

A version ``N`` below the current one is ``versions/v<N>/``:

* ``sgps_task.json``: its complete task file (task, fingerprints, support manifest, synthesizer name and revision,
  weights sha256, metrics, changelog up to that version);
* ``model.safetensors``: its exact weights (their sha256 is the task file's ``weights_sha256``, checked whenever they
  are copied or loaded);
* its support images are the files its manifest names under the folder's ``support/``: updates only add images, and
  every file is named by the sha256 of its pixels, so the current support set holds every earlier version's images.

Re-synthesizing or saving another classifier over a folder that holds a version history (version 2 or later) is
refused unless the classifier being saved descends from it (an update of it) or the caller asks to replace it
(``save_pretrained(..., overwrite=True)``, ``sgps synthesize --force``): verified cases are never dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, OutputPathError
from .checkpoints import state_dict_sha256
from .classifier_checks import TASK_FILE, buildable_tensors, check_task_file
from .safetensors_checks import WEIGHTS_FILE, check_tensors, read_header
from .support_images import check_manifest

VERSIONS_DIR = "versions"


def version_dir(folder: Path, version: int) -> Path:
    return folder / VERSIONS_DIR / f"v{int(version)}"


def check_history(target: Path, classifier: Any | None, overwrite: bool) -> None:
    """Refuse to replace a classifier folder that holds a version history by a classifier not descended from it.

    ``classifier`` None: the check before a synthesis (nothing descends from the folder yet).
    """
    if overwrite or not (target / TASK_FILE).is_file():
        return
    try:
        existing = json.loads((target / TASK_FILE).read_text(encoding="utf-8"))
        version = int(existing.get("version", 1))
        history = existing.get("history") or []
        sha = existing.get("weights_sha256")
        name = existing["task"]["name"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return  # not a loadable classifier (nothing sgps_hf could reload from it): replaced as before
    if version <= 1 and not history:
        return
    if classifier is not None:
        lineage = {classifier.info.get("weights_sha256")} | {v.get("weights_sha256") for v in classifier.versions}
        if sha in lineage:
            return
    added = sum(sum((entry.get("added") or {}).values()) for entry in history if isinstance(entry, dict))
    raise OutputPathError(
        f"{target} holds version {version} of the classifier {name!r} ({added} verified case(s) added by updates, and "
        f"its version history); replacing it would drop them. To add cases, run `sgps update --classifier {target} "
        "--add CLASS=IMAGE`; to keep both, save to another folder; to replace it on purpose, pass --force "
        "(save_pretrained(..., overwrite=True))."
    )


def write_version_weights(classifier: Any, staging: Path) -> None:
    """Write ``versions/v<N>/model.safetensors`` for every earlier version whose weights are at hand.

    Sources, in order: weights held in memory (an update keeps the previous version's), the folder the classifier
    was loaded from (its ``versions/`` and, for the version it was loaded as, its ``model.safetensors``). Every file is
    checked against the version's recorded sha256 before it is written.
    """
    from safetensors.torch import load_file, save_file

    in_memory: Mapping[int, Mapping[str, Any]] = getattr(classifier, "_version_weights", {}) or {}
    base = classifier._base[0] if getattr(classifier, "_base", None) else None
    for previous in classifier.versions:
        version, expected = int(previous.get("version", 1)), previous.get("weights_sha256")
        target = version_dir(staging, version) / WEIGHTS_FILE
        if version in in_memory:
            state = {name: tensor.contiguous() for name, tensor in in_memory[version].items()}
        else:
            source = _stored_weights(base, version, expected)
            if source is None:
                continue  # a version saved by an older sgps_hf: its task file only
            try:
                state = load_file(str(source))
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt data
                raise CheckpointError(f"{source} is not a valid safetensors file ({exc}); restore it.") from exc
        if state_dict_sha256(state) != expected:
            raise CheckpointError(
                f"The weights of version {version} do not match its recorded weights_sha256 {str(expected)[:16]}...; "
                f"restore {VERSIONS_DIR}/v{version}/{WEIGHTS_FILE} from a backup, or delete it to keep that version's "
                "task file only."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target), metadata={"format": "pt"})


def _stored_weights(base: Path | None, version: int, expected: Any) -> Path | None:
    if base is None:
        return None
    archived = version_dir(base, version) / WEIGHTS_FILE
    if archived.is_file():
        return archived
    try:
        current = json.loads((base / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(current, dict) and current.get("weights_sha256") == expected and (base / WEIGHTS_FILE).is_file():
        return base / WEIGHTS_FILE
    return None


def read_version(current: Any, version: int) -> tuple[Any, list[str], dict[str, Any], int]:
    """The verified pieces of version ``version`` of the loaded classifier ``current`` (an earlier one).

    Returns ``(model, labels, info, index)``: the timm network holding that version's weights, its labels, its task
    record and its position in ``current.versions``. Its task file, weights (against the recorded sha256) and
    support manifest are verified; :meth:`SynthesizedClassifier.load_version` builds the classifier.
    """
    import timm
    from safetensors.torch import load_file

    folder = Path(current._base[0])
    known = [int(v.get("version", 1)) for v in current.versions]
    if int(version) not in known:
        raise CheckpointError(
            f"{folder} has no version {version}: it keeps versions {known} and the current version {current.version}."
        )
    index = known.index(int(version))
    info = current.versions[index]
    where = version_dir(folder, version)
    check_task_file(info, where)
    check_manifest(info.get("support"), info["task"], str(where / TASK_FILE))
    weights = where / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"Version {version} of {folder} keeps its task file but not its weights (saved by an older sgps_hf); "
            "re-synthesize it from that task file and its support images with the synthesizer it records."
        )
    labels = [entry["name"] for entry in info["task"]["classes"]]
    target = info["target"]

    def build():
        return timm.create_model(
            target["architecture"], pretrained=False, num_classes=len(labels), **target["model_args"]
        )

    check_tensors(read_header([weights]), buildable_tensors(build, where), where, "classifier")
    state = load_file(str(weights))
    if state_dict_sha256(state) != info["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match the weights_sha256 of {where / TASK_FILE}: it was replaced or corrupted; "
            "restore it."
        )
    model = build()
    model.load_state_dict(state, strict=True)
    model.pretrained_cfg = {**dict(current.model.pretrained_cfg), "label_names": labels}
    model.default_cfg = model.pretrained_cfg
    return model, labels, info, index
