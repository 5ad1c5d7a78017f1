"""The guarded save and load paths shared by every model folder sgps_hf writes (classifiers and segmenters).

One implementation for both families: a save checks its target (a new path, an empty folder or a folder of the same
kind; never a file or a folder of other files), holds the folder's writer lock, writes into a staging folder that gets
the user's umask or the replaced folder's mode, carries over every file that is not the model's own (notes, ``.git``)
and swaps the result in atomically (:mod:`.atomic`). Loading resolves a local folder or a Hub snapshot with messages
that say which of the two was meant.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, OutputPathError
from ..imaging import check_path_text
from .atomic import atomic_directory, current_umask, folder_lock


@dataclass(frozen=True)
class FolderKind:
    """What identifies a kind of saved folder and which of its entries its saves own (all others are the user's)."""

    what: str  # "classifier", "segmenter": used in messages
    task_file: str  # the sidecar that marks a folder of this kind (next to config.json)
    own_entries: frozenset[str]

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` looks like a folder of this kind (its sidecar and config.json)."""
        return (folder / self.task_file).is_file() and (folder / "config.json").is_file()


def check_save_target(save_directory: str | os.PathLike, kind: FolderKind) -> Path:
    """The resolved folder to save into; OutputPathError when saving there could harm other files.

    A new path, an empty folder or an existing folder of the same kind are fine. A file, or a folder holding other
    files (a project folder, the current directory with the examples...), is refused: a save replaces the folder as a
    whole, so it never writes into a folder it did not create.
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
            f"Output path {text} is an existing file, not a folder; give a new folder for the {kind.what}."
        )
    if target.is_dir():
        entries = sorted(entry.name for entry in target.iterdir())
        if entries and not kind.holds(target):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputPathError(
                f"Output folder {text} already holds other files ({shown}) and is not a {kind.what} folder; nothing "
                f"was written, so they are untouched. Save into a new or empty folder, e.g. {Path(text) / kind.what}."
            )
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"Cannot write in {ancestor} (permission denied or read-only); choose a folder you can write to."
        )
    return target


def guarded_save(
    save_directory: str | os.PathLike,
    kind: FolderKind,
    write: Callable[[Path], None],
    before: Callable[[Path], None] | None = None,
) -> Path:
    """``write(staging)`` swapped in atomically at ``save_directory`` under its writer lock; the resolved folder.

    ``before(target)`` runs under the lock, before anything is written (checks against the folder's current state).
    """
    target = check_save_target(save_directory, kind)
    with folder_lock(target):
        target = check_save_target(save_directory, kind)  # again, now that no other writer can change it
        if before is not None:
            before(target)
        with atomic_directory(target) as staging:
            write(staging)
            follow_umask(staging)
            carry_user_files(target, staging, kind.own_entries)
    return target


def follow_umask(staging: Path) -> None:
    """Give what a save wrote the modes the user's umask gives new files and folders.

    Some writers (transformers' ``save_pretrained`` writes its weights through a private temporary file) leave 0600
    files whatever the umask; a shared folder would then hold weights its group cannot read.
    """
    mask = current_umask()
    for path in staging.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def carry_user_files(target: Path, staging: Path, own_entries: frozenset[str]) -> None:
    """Copy what the user keeps in a saved folder (notes, .git...) into the new version: the swap loses none of it."""
    if not target.is_dir():
        return
    for entry in target.iterdir():
        if entry.name in own_entries or (staging / entry.name).exists() or (staging / entry.name).is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staging / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name)


def resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None, token: str | None, what: str) -> Path:
    """The local folder to load: the path itself, or a Hub snapshot when it is not a local path.

    A path that does not exist is reported as a missing folder, not as an invalid Hub repo id.
    """
    text = os.fspath(path_or_repo_id)
    if not isinstance(text, str) or not text:
        raise CheckpointError(f"{what.capitalize()} location {text!r} is empty; give a folder or a Hub repo id.")
    check_path_text(text, f"{what.capitalize()} location", CheckpointError)
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{text} is a file, not a {what} folder; give the folder that save_pretrained wrote.")
    if not _REPO_ID.fullmatch(text) or ".." in text or text.startswith(("~", ".")):
        raise CheckpointError(
            f"{what.capitalize()} folder {text} does not exist (relative paths start at {Path.cwd()}); check the path."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, token=token))
    except Exception as exc:  # noqa: BLE001 - not found, invalid id, offline, HTTP errors: all mean "cannot get it"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"No {what} folder {text} here (relative paths start at {Path.cwd()}), and no Hub repo {text} could be "
            f"downloaded ({type(exc).__name__}: {first}). Check the path, or the repo id, revision and token."
        ) from exc


_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
