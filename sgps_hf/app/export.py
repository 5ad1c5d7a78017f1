"""Download (a zip of the classifier folder) and push to the Hub from the app."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import weakref
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .limits import DEFAULT_LIMITS, AppInputError, AppLimits

if TYPE_CHECKING:
    from ..models.sgps.classifier import SynthesizedClassifier


# --------------------------------------------------------------------------------------------------
# Download and push


def safe_filename(name: str, default: str = "classifier") -> str:
    """A file name made only of [A-Za-z0-9._-], never starting with a dot: no traversal, no hidden files."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip(".-")[:60]
    return slug or default


class ExportArea:
    """A private temp folder for zips; exports older than ``max_age_s`` are removed as new ones are made.

    A folder it created itself (``root`` None) is removed with everything in it by :meth:`close`, when the area is
    garbage-collected, or when the process exits: a server restarted many times must not leave its zips behind. A
    ``root`` the caller gave is never removed.
    """

    def __init__(self, root: Path | None = None, max_age_s: float = DEFAULT_LIMITS.file_max_age_s) -> None:
        owned = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="sgps-app-exports-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self._remove = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True) if owned else None

    def close(self) -> None:
        """Remove the area's own folder now (nothing when the caller gave the folder)."""
        if self._remove is not None:
            self._remove()

    def new_folder(self) -> Path:
        self._prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def _prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for entry in self.root.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


def zip_saved(save: Callable[[Path], Path], area: ExportArea, stem: str) -> Path:
    """``save(folder)`` into a fresh folder of ``area``, zipped; only the zip is kept (the area prunes old ones).

    The archive holds only relative paths under one top folder ``stem/``, so unzipping makes one folder.
    """
    folder = area.new_folder()
    saved = save(folder / stem)
    archive = folder / f"{stem}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(saved.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, arcname=f"{stem}/{path.relative_to(saved).as_posix()}")
    # Remove the saved folder and its save lock: a Space that serves many zips must not fill its disk.
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry != archive:
            entry.unlink(missing_ok=True)
    return archive


def export_zip(classifier: "SynthesizedClassifier | None", area: ExportArea, include_support: bool) -> Path:
    """Save the classifier and zip it (see :func:`zip_saved`)."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    stem = safe_filename(classifier.info["task"]["name"])
    return zip_saved(lambda target: classifier.save_pretrained(target, include_support=include_support), area, stem)


_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def scrub_token(message: str, token: str | None) -> str:
    """``message`` with the token (and anything shaped like a Hub token) replaced by ***."""
    if token:
        message = message.replace(token, "***")
    return _TOKEN_PATTERN.sub("***", message)


def push_from_app(
    classifier: "SynthesizedClassifier | None",
    repo_id: Any,
    token: Any,
    private: bool,
    include_support: bool,
    limits: AppLimits = DEFAULT_LIMITS,
) -> str:
    """Push to the Hub (HF_ENDPOINT is respected) with the token typed in the app, used once and never stored.

    The app never falls back to a server-side token (HF_TOKEN, saved login): on a shared Space that would let
    any visitor push to the Space owner's account.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise AppInputError("Enter the Hub repo id to push to, e.g. my-user/skin-lesions-classifier.")
    repo_id = repo_id.strip()
    if len(repo_id) > limits.max_repo_id_chars or repo_id.count("/") != 1:
        raise AppInputError(f"Repo id {repo_id[:100]!r} must look like <user or org>/<name>.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise AppInputError(f"Invalid repo id: {exc}") from None
    token = token.strip() if isinstance(token, str) else ""
    if not token:
        raise AppInputError("Paste a Hub access token with write permission; the app never uses a server-side token.")
    try:
        return classifier.push_to_hub(
            repo_id, token=token, private=bool(private) or None, include_support=bool(include_support)
        )
    except Exception as exc:  # HTTP, network, permission errors: report them without the token
        raise AppInputError(
            f"Push to {repo_id} failed: {scrub_token(f'{type(exc).__name__}: {exc}', token)[:500]}"
        ) from None
