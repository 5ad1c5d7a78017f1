"""Synthesizer checkpoints: where they are, which revision they are, and the checks made before loading them.

A synthesizer family's ``from_pretrained`` calls :func:`prepare_load` before transformers reads anything (pickle-only
folders and weights that do not match the config are refused, the Hub commit is resolved once and loaded exactly)
and :func:`check_loading_info` after it. :func:`synthesizer_reference` is how every card and task file names the
synthesizer that made a model: a Hub id and revision, or a package-relative name for the bundled checkpoints, never
a local absolute path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .safetensors_checks import check_tensors, expected_tensors, read_header, require_safetensors

#: The meta-trained checkpoints shipped inside the package (they work offline).
BUNDLED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
#: The bundled default classification synthesizer.
DEFAULT_CHECKPOINT = str(BUNDLED_CHECKPOINTS / "sgps-lite0-128")
#: The bundled segmentation synthesizer.
DEFAULT_SEG_CHECKPOINT = str(BUNDLED_CHECKPOINTS / "sgps-seg-lite0-128")
BUNDLED_PREFIX = "sgps_hf/checkpoints/"


def state_dict_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (independent of the file they are stored in)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_reference(name_or_path: str) -> str:
    """A loadable name for a checkpoint that holds no machine's path for the bundled ones:
    ``sgps_hf/checkpoints/<name>``.

    Hub ids and the user's own folders stay as given (``sgps update`` reloads the synthesizer from them).
    """
    if not name_or_path:
        return "unsaved"
    if os.path.isdir(name_or_path) and Path(name_or_path).resolve().parent == BUNDLED_CHECKPOINTS:
        return BUNDLED_PREFIX + Path(name_or_path).resolve().name
    return name_or_path


def resolve_checkpoint(reference: str) -> str:
    """What ``from_pretrained`` loads for a :func:`checkpoint_reference` (the bundled folder for a bundled name)."""
    if reference.startswith(BUNDLED_PREFIX) and (BUNDLED_CHECKPOINTS / reference[len(BUNDLED_PREFIX) :]).is_dir():
        return str(BUNDLED_CHECKPOINTS / reference[len(BUNDLED_PREFIX) :])
    return reference


def display_name(reference: str) -> str:
    """How a card names a checkpoint: a Hub id or bundled name as is, a local folder by its name, never by its path."""
    if reference.startswith(BUNDLED_PREFIX) or not (os.path.isabs(reference) or os.path.exists(reference)):
        return reference
    return f"local folder {Path(reference).name}"


def is_hub_id(reference: str) -> bool:
    return "/" in reference and display_name(reference) == reference and not reference.startswith(BUNDLED_PREFIX)


def synthesizer_reference(model: nn.Module) -> dict[str, str]:
    """Which synthesizer made a model: its name (see :func:`checkpoint_reference`) and a Hub commit or weight hash."""
    config = model.config
    revision = getattr(config, "_commit_hash", None) or "sha256:" + state_dict_sha256(model.state_dict())[:16]
    return {"name_or_path": checkpoint_reference(str(getattr(config, "name_or_path", "") or "")), "revision": revision}


def prepare_load(cls: type, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """Check a checkpoint before ``PreTrainedModel.from_pretrained`` loads it; returns the Hub commit it resolved.

    ``kwargs`` is updated in place: the resolved revision, and safetensors only (never a pickle fallback).
    """
    commit = None
    name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    if name is not None and not os.path.isdir(str(name)):
        commit = _resolve_commit(str(name), kwargs)
    if name is not None:
        _check_checkpoint(cls, str(name), kwargs, commit)
    kwargs["use_safetensors"] = True
    return commit


def checked_from_pretrained(cls: type, load: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """A synthesizer's ``from_pretrained`` (``load``: ``PreTrainedModel.from_pretrained`` bound to ``cls``), checked.

    Shared by the classification and segmentation synthesizers: the checkpoint is checked first (safetensors only,
    tensors against the config, see :func:`prepare_load`), every load failure is a CheckpointError, every tensor gets
    memory of its own (so synthesized weights depend only on the task and the checkpoint), and the Hub commit is
    recorded for provenance.
    """
    commit = prepare_load(cls, args, kwargs)
    want_info = bool(kwargs.pop("output_loading_info", False))
    name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    model, info = load_checked(lambda **kw: load(*args, **kw), name, kwargs)
    own_tensors(model)
    if commit:
        model.config._commit_hash = commit  # read by synthesizer_reference; never serialised
    return (model, info) if want_info else model


def _resolve_commit(name: str, kwargs: dict[str, Any]) -> str | None:
    # transformers >= 5 no longer records the Hub commit on the config: resolve it here (and load exactly that
    # commit), so that models synthesized by this checkpoint name the revision they came from.
    from transformers.utils.hub import resolve_revision

    revision = resolve_revision(
        name,
        kwargs.get("revision"),
        token=kwargs.get("token"),
        local_files_only=bool(kwargs.get("local_files_only", False)),
        cache_dir=kwargs.get("cache_dir"),
    )
    commit = getattr(revision, "resolved", None)
    if commit:
        kwargs["revision"] = revision
    return commit


def load_checked(
    load: Callable[..., tuple[nn.Module, dict]], name: object, kwargs: dict[str, Any]
) -> tuple[nn.Module, dict]:
    """``load(**kwargs, output_loading_info=True)`` with every load failure as a CheckpointError."""
    try:
        model, info = load(**kwargs, output_loading_info=True)
    except (RuntimeError, OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"Cannot load the synthesizer from {name}: {exc}") from exc
    check_loading_info(info, name)
    return model, info


def check_loading_info(info: dict, name: object) -> None:
    """Second line of defence (sharded or unusual checkpoints): transformers must have loaded every tensor exactly."""
    problems = {
        key: list(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    problems = {key: values for key, values in problems.items() if values}
    if problems:
        detail = "; ".join(f"{key}: {values[:5]}" for key, values in problems.items())
        raise CheckpointError(
            f"The weights of {name} do not match its config ({detail}); save the synthesizer again with "
            "save_pretrained."
        )


@torch.no_grad()
def own_tensors(model: nn.Module) -> None:
    """Move every tensor of ``model`` into freshly allocated (aligned) memory of its own.

    transformers can leave loaded tensors as views at arbitrary byte offsets of the checkpoint; CPU kernels take
    different SIMD paths for differently aligned inputs, so the same checkpoint would synthesize slightly different
    bits than the model that saved it.
    """
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                param.data = param.data.clone(memory_format=torch.contiguous_format)
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.clone(memory_format=torch.contiguous_format)


def _check_checkpoint(cls: type, name: str, kwargs: dict, commit: str | None) -> None:
    """Refuse pickle-only checkpoints and weights that do not match the config, before transformers loads anything."""
    folder = _checkpoint_folder(name, kwargs, commit)
    config = kwargs.get("config")
    if not isinstance(config, cls.config_class):
        config = _load_config(cls.config_class, folder)
    files = require_safetensors(folder, "SGPS synthesizer")
    try:
        expected = expected_tensors(lambda: cls(config))
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as exc:  # e.g. a target timm cannot build
        raise CheckpointError(
            f"The config.json in {folder} describes a synthesizer that cannot be built ({exc}); fix or re-save it."
        ) from exc
    check_tensors(read_header(files), expected, folder, "synthesizer")


def _checkpoint_folder(name: str, kwargs: dict, commit: str | None) -> Path:
    """The local folder holding the checkpoint's config and weights (downloaded first for a Hub repo)."""
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(name):
        return Path(name) / subfolder
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*" if subfolder else "*"]
    folder = snapshot_download(
        name,
        revision=commit or kwargs.get("revision"),
        token=kwargs.get("token"),
        cache_dir=kwargs.get("cache_dir"),
        local_files_only=bool(kwargs.get("local_files_only", False)),
        allow_patterns=[p + suffix for p in patterns for suffix in (".json", ".safetensors")],
    )
    return Path(folder) / subfolder


def _load_config(config_class: type, folder: Path) -> Any:
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"No config.json in {folder}; a synthesizer checkpoint needs its config next to model.safetensors."
        )
    try:
        return config_class.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"The config.json in {folder} is invalid ({exc}); fix the named value or re-save the synthesizer."
        ) from exc
