"""The ``sgps`` command line.

Each command group is a function that adds its subparsers and sets ``handler`` on each of them;
adding a command means writing one ``register_*`` function (in :mod:`.commands`, :mod:`.data`) and listing it in
:data:`COMMANDS`.
Handlers import what they need lazily, so ``sgps --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import SGPSError, SGPSWarning
from .commands import (
    register_demo,
    register_evaluate,
    register_push,
    register_quickstart,
    register_synthesize,
    register_train,
    register_update,
)
from .data import register_data
from .predict import register as register_predict
from .segment import register as register_segment
from .slides import register as register_slide
from .trust import register as register_trust

# --------------------------------------------------------------------------------------------------
# Entry point

#: Functions that add one command group each to the top-level subparsers.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_data,
    register_quickstart,
    register_synthesize,
    register_predict,
    register_push,
    register_train,
    register_update,
    register_demo,
    register_evaluate,
    register_trust,
    register_segment,
    register_slide,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``sgps`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="sgps", description="Synthesize few-shot medical image classifiers.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the full traceback instead of one line (anywhere on the line)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sgps`` command line; returns the exit status (2 for a user error, 1 for a bug).

    Every error is one line on stderr that says what to fix; ``--debug`` (anywhere before ``--``) shows the
    traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args, debug)


def run_handler(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace, debug: bool = False) -> int:
    """Call one command's handler and turn any exception into one ``sgps: error: ...`` line and an exit status."""
    try:
        with warnings_as_lines():
            return int(handler(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("sgps: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place where every error becomes a message
        if debug:
            raise
        message, status = describe_error(exc)
        print(f"sgps: error: {message}", file=sys.stderr)
        return status


@contextlib.contextmanager
def warnings_as_lines(stream=None) -> Iterator[None]:
    """Show sgps_hf's warnings (:class:`~sgps_hf.errors.SGPSWarning`) as ``sgps: warning: ...`` lines, each text
    once; other warnings are left to Python's defaults."""
    shown: set[str] = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, SGPSWarning):
            text = " ".join(str(message).split())
            if text not in shown:
                shown.add(text)
                print(f"sgps: warning: {text}", file=stream or sys.stderr)
            return
        previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SGPSWarning)
        warnings.showwarning = show
        yield


_MAX_MESSAGE = 600


def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one-line message saying what to fix, exit status): 2 for what the user can fix, 1 for a bug in sgps_hf."""
    import errno

    status = 2
    if isinstance(exc, SGPSError):
        message = str(exc)
    elif _is_hub_error(exc):
        message = (
            f"the Hugging Face Hub refused the request ({type(exc).__name__}: {exc}); "
            "check the repo id, your token and the network"
        )
    elif isinstance(exc, OSError):
        where = " ".join(str(p) for p in (exc.filename, exc.filename2) if p) or "a file"
        reason = exc.strerror or str(exc)
        hints = {
            errno.ENOSPC: "free some disk space or write elsewhere",
            errno.EDQUOT: "free some space in your quota or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "you lack permission there: choose a folder you can write to (or read)",
            errno.EPERM: "the operation is not permitted there: choose another folder",
            errno.ENOENT: "check the path",
            errno.EEXIST: "choose another output path",
            errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
            errno.EISDIR: "give a file, not a folder",
            errno.ENAMETOOLONG: "use a shorter path",
        }
        message = f"{reason}: {where}; {hints.get(exc.errno, 'check the path and try again')}"
    elif isinstance(exc, ValueError):  # invalid values from the libraries underneath (configs, arguments)
        message = f"{exc} (rerun with --debug for the traceback)"
    elif isinstance(exc, MemoryError):
        message = "out of memory; use fewer or smaller images, or a machine with more memory"
    else:
        status = 1
        message = (
            f"unexpected {type(exc).__name__}: {exc} "
            "(probably a bug in sgps-hf: rerun with --debug for the traceback and report it)"
        )
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return message, status


def _is_hub_error(exc: BaseException) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    try:
        from requests import RequestException
    except ImportError:  # pragma: no cover
        RequestException = ()  # type: ignore[assignment]
    return isinstance(exc, (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RequestException))
