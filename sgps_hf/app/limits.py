"""The app's limits and errors: what one user may send to a shared (2-core) server, and how long a request may run.

Every rejection is an :class:`AppInputError` (an :class:`~sgps_hf.errors.SGPSError`) whose message is shown to the
user as is: it names the offending file by its base name only (never a server path) and says what to fix.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..errors import SGPSError

T = TypeVar("T")

#: The formats the app accepts, sniffed from the file's first bytes (DICOM files often have no extension).
ACCEPTED_FORMATS = "PNG, JPEG, TIFF or DICOM"


class AppInputError(SGPSError, ValueError):
    """Something a user sent to the app is unusable; the message is shown to them."""


class AppTimeoutError(SGPSError, TimeoutError):
    """A request ran past the app's per-request time limit."""


@dataclass(frozen=True)
class AppLimits:
    """Limits that keep one user from exhausting a shared (2-core) server; all user-visible in messages."""

    max_classes: int = 8
    max_images_per_class: int = 5
    max_support_per_class: int = 20  # after continuous-adaptation updates
    max_predict_images: int = 16
    max_upload_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000
    max_name_chars: int = 100
    max_text_chars: int = 2_000
    max_repo_id_chars: int = 96
    request_timeout_s: float = 120.0
    file_max_age_s: int = 3600  # the server deletes the files it made for users (downloads, uploads) after this
    concurrency_limit: int = 2
    queue_size: int = 256


DEFAULT_LIMITS = AppLimits()

# --------------------------------------------------------------------------------------------------
# Time limits


class RequestRunner:
    """Runs request work in a bounded pool with a per-request time limit.

    Python cannot kill a thread, so a request that times out keeps its worker until it finishes; the pool
    size bounds how much such work can pile up, and the user gets a clear message instead of a hung page.
    """

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sgps-app")

    def run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AppTimeoutError(
                f"{what} took longer than the app's {self.timeout_s:.0f} s limit; try fewer or smaller images."
            ) from None


#: Synthesis is not thread-safe (it switches the shared synthesizer's BatchNorm layers to train mode to
#: measure support statistics), so the app runs one synthesis at a time; predictions run concurrently.
SYNTHESIS_LOCK = threading.Lock()
