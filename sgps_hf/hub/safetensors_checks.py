"""Checks that run before any checkpoint is loaded: safetensors only, and tensors that match the config.

Both loaders (:meth:`SGPSSynthesizer.from_pretrained` and :meth:`SynthesizedClassifier.from_pretrained`) read
weights only from ``model.safetensors`` (no pickle is ever unpickled) and compare the file's header (names,
shapes, dtypes; read without loading any tensor data) with a skeleton of the model built on the ``meta``
device from the config. A checkpoint that does not match is refused with a :class:`CheckpointError` before
any memory is allocated for it, so a config that asks for an enormous model cannot exhaust memory either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_MAX_LISTED = 5

# safetensors header dtype codes of the torch dtypes a checkpoint may hold.
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

TensorSpec = tuple[tuple[int, ...], str]


def pickle_files(folder: Path) -> list[str]:
    """Names of pickle-based weight files in ``folder`` (never loaded, only named in error messages)."""
    return sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)


def require_safetensors(folder: Path, what: str) -> list[Path]:
    """The safetensors weight file(s) of ``folder``; CheckpointError when there are none (pickles are refused)."""
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if (folder / WEIGHTS_INDEX_FILE).is_file():
        return _shards(folder)
    pickles = pickle_files(folder)
    hint = (
        f" It has {pickles}: pickle files are refused because loading them can run arbitrary code; "
        "re-save the weights as safetensors (save_pretrained does)."
        if pickles
        else ""
    )
    raise CheckpointError(f"No {WEIGHTS_FILE} in {folder}, so this is not a loadable {what}.{hint}")


def _shards(folder: Path) -> list[Path]:
    try:
        weight_map = json.loads((folder / WEIGHTS_INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{folder / WEIGHTS_INDEX_FILE} is unreadable or has no 'weight_map' ({exc}); re-save the checkpoint."
        ) from exc
    shards = [folder / name for name in names]
    if not all(isinstance(name, str) and name.endswith(".safetensors") and "/" not in name for name in names):
        raise CheckpointError(
            f"{folder / WEIGHTS_INDEX_FILE} names non-safetensors or nested shard files {names[:_MAX_LISTED]}; "
            "re-save the checkpoint."
        )
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"Shards {missing[:_MAX_LISTED]} listed in {WEIGHTS_INDEX_FILE} are missing from {folder}."
        )
    return shards


def read_header(files: list[Path]) -> dict[str, TensorSpec]:
    """Name -> (shape, dtype code) of every tensor in ``files``, from the headers only (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    header: dict[str, TensorSpec] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    view = handle.get_slice(name)
                    header[name] = (tuple(view.get_shape()), view.get_dtype())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a valid safetensors file ({exc}); it may be truncated or corrupt: re-download or "
                "re-save it."
            ) from exc
    return header


def expected_tensors(build: Callable[[], nn.Module]) -> dict[str, TensorSpec]:
    """Name -> (shape, dtype code) of the state dict of ``build()``, built on the meta device (no memory used)."""
    with torch.device("meta"):
        module = build()
    return {
        name: (tuple(t.shape), _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)))
        for name, t in module.state_dict().items()
    }


def check_tensors(
    found: Mapping[str, TensorSpec], expected: Mapping[str, TensorSpec], source: Path, what: str
) -> None:
    """CheckpointError listing every missing, unexpected, wrongly shaped or wrongly typed tensor."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[:_MAX_LISTED]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:_MAX_LISTED]})")
    shapes = [
        f"{n}: {list(found[n][0])} instead of {list(expected[n][0])}"
        for n in sorted(set(found) & set(expected))
        if found[n][0] != expected[n][0]
    ]
    dtypes = [
        f"{n}: {found[n][1]} instead of {expected[n][1]}"
        for n in sorted(set(found) & set(expected))
        if found[n][1] != expected[n][1]
    ]
    if shapes:
        problems.append(f"{len(shapes)} tensors with the wrong shape ({'; '.join(shapes[:_MAX_LISTED])})")
    if dtypes:
        problems.append(f"{len(dtypes)} tensors with the wrong dtype ({'; '.join(dtypes[:_MAX_LISTED])})")
    if problems:
        raise CheckpointError(
            f"The weights in {source} do not match its config.json: {', '.join(problems)}. The config and the weights "
            f"come from different {what}s, or the file was edited; save the {what} again with save_pretrained."
        )
