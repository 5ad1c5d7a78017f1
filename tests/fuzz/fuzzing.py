"""The property every fuzzed boundary must satisfy, shared by the fuzz modules (``import fuzzing``)."""

from __future__ import annotations

import sgps_hf.errors as errors

DOCUMENTED = tuple(
    getattr(errors, name)
    for name in (
        "InvalidTaskError",
        "ImageLoadError",
        "CheckpointError",
        "SynthesisError",
        "DataError",
        "OutputPathError",
    )
)
# Words with which every error message of the library tells the user what to do or what was wrong.
_ACTIONABLE = (
    "must",
    "need",
    "limit",
    "remove",
    "give",
    "keep",
    "check",
    "pass",
    "use",
    "re-",
    "save",
    "export",
    "downscale",
    "supported",
    "expected",
    "allowed",
    "at least",
    "at most",
    "not found",
    "not a",
    "not valid",
    "cannot",
    "unknown",
    "empty",
    "invalid",
    "no ",
    "fix",
)


def assert_actionable(error: BaseException, expected: type | tuple[type, ...] = DOCUMENTED) -> None:
    """``error`` is a documented sgps_hf error whose message says what to fix (not a bare library traceback)."""
    assert isinstance(error, expected), f"undocumented exception {type(error).__name__}: {error}"
    message = str(error)
    assert len(message) >= 20, f"message too short to be helpful: {message!r}"
    assert any(word in message.lower() for word in _ACTIONABLE), f"message does not say what to fix: {message!r}"
