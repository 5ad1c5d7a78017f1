"""Atomic saves: a folder is written next to its destination and renamed into place.

A crash, kill or full disk midway leaves the previous version untouched (and at worst a hidden
``.<name>.tmp-*`` folder that the next save removes), never a half-written checkpoint. Replacing an existing
folder is one atomic swap on Linux (``renameat2(RENAME_EXCHANGE)``); elsewhere it takes two renames, and a
save killed between them is repaired by the next save to the same place.

Every staging folder is held with an exclusive ``flock`` by the process writing it, so the clean-up of an
earlier interrupted save only ever removes folders whose writer is gone, never a live writer's staging folder.
The folder that is swapped in gets the permissions of the folder it replaces, or those the user's umask gives
a new folder (not ``mkdtemp``'s 0700). :func:`folder_lock` serialises whole read-modify-write cycles (saves and
updates of a classifier folder) across threads and processes with ``filelock``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

#: How long :func:`folder_lock` waits for another writer of the same folder before giving up.
LOCK_TIMEOUT_S = 1800.0
#: Without ``flock`` (Windows), a leftover staging folder younger than this is assumed to belong to a live writer.
_STALE_AFTER_S = 3600.0


@contextmanager
def atomic_directory(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``destination`` in one rename."""
    destination = Path(destination).resolve()
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a folder; choose another output path.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    _recover(destination)
    staging, held = _new_staging(destination, "tmp")
    try:
        os.chmod(staging, _folder_mode(destination))  # mkdtemp's 0700 would otherwise replace the user's mode
        yield staging
        _fsync_tree(staging)
        if not destination.exists():
            os.replace(staging, destination)
        elif _exchange(staging, destination):
            shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous version
        else:  # no atomic swap on this platform: two renames, repaired by the next save if killed in between
            retired, held_retired = _new_staging(destination, "old")
            try:
                os.replace(destination, retired / "previous")
                os.replace(staging, destination)
            finally:
                _release(held_retired)
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _release(held)


_LOCKS: dict[str, object] = {}
_LOCKS_GUARD = threading.Lock()


def lock_path(destination: str | os.PathLike) -> Path:
    """The lock file of ``destination``: a hidden ``.<name>.lock`` next to it (kept; it is harmless to delete when
    idle)."""
    destination = Path(destination).resolve()
    return destination.parent / f".{destination.name}.lock"


@contextmanager
def folder_lock(destination: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive writer lock of ``destination`` (re-entrant in one thread, exclusive across threads and
    processes).

    Hold it around a whole load-modify-save cycle (``sgps update``) so that no concurrent writer's result is lost.
    """
    from filelock import FileLock, Timeout

    path = lock_path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(str(path), FileLock(str(path), mode=_file_mode(None)))
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        from ..errors import OutputPathError

        raise OutputPathError(
            f"Another process has been writing {Path(destination)} for over {wait:.0f} s (lock {path}); "
            "wait for it to finish and try again."
        ) from None
    try:
        yield
    finally:
        lock.release()


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
        os.chmod(temporary, _file_mode(path))  # mkstemp's 0600 would otherwise replace the user's mode
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _recover(destination: Path) -> None:
    """Clean up after an earlier interrupted save: put a retired previous version back, drop staging folders.

    Only folders whose writer is gone are touched: a live writer holds a ``flock`` on each of its folders.
    """
    retired = [f for f in sorted(destination.parent.glob(f".{destination.name}.old-*")) if not _is_live(f)]
    if not destination.exists():
        for folder in retired:
            if (folder / "previous").is_dir():
                os.replace(folder / "previous", destination)  # killed between the two renames of the fallback
                break
    staging = [f for f in sorted(destination.parent.glob(f".{destination.name}.tmp-*")) if not _is_live(f)]
    for stale in retired + staging:
        shutil.rmtree(stale, ignore_errors=True)


def _new_staging(destination: Path, kind: str) -> tuple[Path, int | None]:
    """A fresh ``.<name>.<kind>-*`` folder next to ``destination``, already held (see :func:`_hold`)."""
    for _ in range(8):
        folder = Path(tempfile.mkdtemp(prefix=f".{destination.name}.{kind}-", dir=destination.parent))
        try:
            held = _hold(folder)
        except FileNotFoundError:  # removed by a concurrent clean-up before we could hold it: take another
            continue
        try:
            if held is None or os.fstat(held).st_ino == folder.stat().st_ino:
                return folder, held
        except FileNotFoundError:
            pass
        _release(held)
    raise OSError(f"Cannot create a staging folder next to {destination}: it keeps disappearing.")


def _hold(folder: Path) -> int | None:
    """Take an exclusive flock on ``folder`` (released by :func:`_release` or when the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: liveness falls back to the folder's age
        return None
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        os.close(handle)
        return None
    return handle


def _release(handle: int | None) -> None:
    if handle is not None:
        os.close(handle)  # closing the descriptor drops its flock


def _is_live(folder: Path) -> bool:
    """Whether a writer still holds ``folder`` (its flock), so that clean-up must leave it alone."""
    try:
        import fcntl
    except ImportError:
        try:
            return time.time() - folder.stat().st_mtime < _STALE_AFTER_S
        except OSError:
            return False
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return False  # vanished meanwhile, or unreadable: nothing a writer of ours holds
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(handle)  # also drops the probe's lock
    return False


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _folder_mode(destination: Path) -> int:
    """The mode of the folder being replaced, or what the umask gives a new folder."""
    try:
        return stat.S_IMODE(destination.stat().st_mode)
    except OSError:
        return 0o777 & ~current_umask()


def _file_mode(path: Path | None) -> int:
    """The mode of the file being replaced, or what the umask gives a new file."""
    if path is not None:
        try:
            return stat.S_IMODE(path.stat().st_mode)
        except OSError:
            pass
    return 0o666 & ~current_umask()


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


def save_pretrained_atomically(
    save: Callable[..., Any], save_directory: str | os.PathLike, *args: Any, **kwargs: Any
) -> Any:
    """``save(staging, *args, **kwargs)`` of a transformers ``save_pretrained``, swapped in atomically.

    A crash or kill midway leaves the previous folder intact; files already there that this save does not write (a
    processor saved first, a README) are kept, as with transformers' own save_pretrained. Returned paths are named
    where they are after the swap.
    """
    if kwargs.get("push_to_hub"):
        kwargs.setdefault("repo_id", Path(save_directory).name)  # not the name of the staging folder
    with atomic_update(save_directory) as staging:
        result = save(str(staging), *args, **kwargs)
    if isinstance(result, list):
        return [str(Path(save_directory) / Path(f).relative_to(staging)) for f in result]
    return result
