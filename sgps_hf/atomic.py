"""Atomic saves: a folder is written next to its destination and renamed into place.

A crash, kill or full disk midway leaves the previous version untouched (and at worst a hidden
``.<name>.tmp-*`` folder that the next save removes), never a half-written checkpoint. Replacing an existing
folder is one atomic swap on Linux (``renameat2(RENAME_EXCHANGE)``); elsewhere it takes two renames, and a
save killed between them is repaired by the next save to the same place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``destination`` in one rename."""
    destination = Path(destination).resolve()
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a folder; choose another output path.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    _recover(destination)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if not destination.exists():
            os.replace(staging, destination)
        elif _exchange(staging, destination):
            shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous version
        else:  # no atomic swap on this platform: two renames, repaired by the next save if killed in between
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            os.replace(destination, retired / "previous")
            os.replace(staging, destination)
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_update(destination: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_directory`, but the staging folder starts as a copy of ``destination``'s current files.

    For ``save_pretrained`` methods that add their files to a folder (transformers semantics) rather than
    replacing it: what the caller writes overwrites the copies, the rest of the folder survives the swap.
    The files are copied, never hard-linked: an in-place rewrite of a hard link would change the live version too.
    """
    source = Path(destination)
    with atomic_directory(destination) as staging:
        if source.is_dir():
            shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True)
        yield staging


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically: a temporary file in the same folder, fsynced, then renamed over ``path``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _recover(destination: Path) -> None:
    """Clean up after an earlier interrupted save: put a retired previous version back, drop staging folders."""
    retired = sorted(destination.parent.glob(f".{destination.name}.old-*"))
    if not destination.exists():
        for folder in retired:
            if (folder / "previous").is_dir():
                os.replace(folder / "previous", destination)  # killed between the two renames of the fallback
                break
    for stale in retired + sorted(destination.parent.glob(f".{destination.name}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc symbol (old glibc, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel or filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
