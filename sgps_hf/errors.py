"""Exception types raised at the library's boundaries.

Every error a user can trigger with bad input is one of these, and its message says what to fix.
They subclass the built-in type a caller would naturally catch (``ValueError``, ``OSError``), so
``except ValueError`` keeps working for code that does not know about sgps_hf.
"""


class SGPSError(Exception):
    """Base class of every sgps_hf error."""


class DataError(SGPSError, ValueError):
    """A dataset, split or episode request cannot be satisfied."""


class InvalidTaskError(SGPSError, ValueError):
    """A TaskSpec / ClassSpec (or the task file describing one) is malformed."""


class ImageLoadError(SGPSError, ValueError):
    """An image could not be read or is not a usable medical image."""


class CheckpointError(SGPSError, ValueError):
    """A synthesizer or classifier checkpoint is missing, unsafe or inconsistent with its config."""


class SynthesisError(SGPSError, RuntimeError):
    """Synthesis produced unusable weights (NaN/Inf) or could not run."""


class OutputPathError(SGPSError, OSError):
    """An output location cannot be written without harming what is there (a folder of other files, a file)."""


class UsageError(SGPSError, ValueError):
    """A command-line argument or option value is invalid (the message names the option and the fix)."""


class SGPSWarning(UserWarning):
    """Base class of every sgps_hf warning; the command line shows each as one ``sgps: warning: ...`` line."""


class AccuracyWarning(SGPSWarning):
    """The input is one where synthesized classifiers are known to do poorly (see :mod:`sgps_hf.trust.advice`)."""


class NoCoverageGuaranteeWarning(SGPSWarning):
    """Prediction sets were asked for, but the classifier has no conformal calibration: no coverage guarantee."""


class InputWarning(SGPSWarning):
    """Something the user gave was changed or assumed (a name normalised, a slide's resolution assumed, tiles
    enlarged); the message says what and how to avoid it."""
