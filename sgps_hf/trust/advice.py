"""Warnings where a synthesized classifier's accuracy will be poor, raised as Python ``warnings``.

The CLI prints each as one ``sgps: warning: ...`` line and the app shows them next to the result; in Python they
are ``AccuracyWarning`` (or ``NoCoverageGuaranteeWarning``) and shown once per place by the default filter.
What is warned about, and why:

- a class with no image (text only): text-only classes score near chance in ``benchmarks/`` (text alone rarely
  separates look-alike findings);
- a clinical text that is not English: the text encoder (all-MiniLM-L6-v2) was trained on English only;
- more than 10 classes with one image each: probabilities become flat and the top class unreliable;
- one image given for two classes (:func:`label_conflicts`): at least one of its labels is wrong.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable, Sequence

from ..errors import AccuracyWarning, NoCoverageGuaranteeWarning

#: More classes than this at one shot get a warning.
MAX_ONE_SHOT_CLASSES = 10
_ENGLISH_WORDS = frozenset(
    "a an and are as at by for from in into is of on or the to with without which that than often usually may "
    "can be".split()
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def warn(message: str, category: type[Warning] = AccuracyWarning, stacklevel: int = 3) -> None:
    """Issue ``message`` as a warning of ``category``."""
    warnings.warn(message, category, stacklevel=stacklevel)


def warn_once(key: str, message: str) -> None:
    """The missing-coverage warning (``key`` names the situation; the default filter shows it once per place)."""
    warn(message, NoCoverageGuaranteeWarning if key == "no_coverage" else AccuracyWarning, stacklevel=4)


def looks_non_english(text: str) -> bool:
    """True for a text that is most likely not English: non-Latin or accented letters, or no English function
    word in a text of five or more words. (A heuristic: short keyword texts pass.)"""
    words = _WORD.findall(text or "")
    letters = "".join(words)
    if not letters:
        return False
    non_ascii = sum(1 for ch in letters if ord(ch) > 127)
    if non_ascii / len(letters) > 0.05:
        return True
    return len(words) >= 5 and not any(w.lower() in _ENGLISH_WORDS for w in words)


def task_advice(task: Any) -> list[str]:
    """What in ``task`` (a TaskSpec) makes a poor classifier likely, one message each (empty when nothing)."""
    messages = []
    text_only = [c.name for c in task.classes if not c.images]
    if text_only:
        messages.append(
            f"class(es) {', '.join(map(repr, text_only))} have no image (text only): text-only classes score near "
            "chance in our benchmark; add at least one example image per class."
        )
    foreign = [c.name for c in task.classes if c.description and looks_non_english(c.description)]
    if foreign:
        messages.append(
            f"the clinical text of {', '.join(map(repr, foreign))} does not look English: the text encoder was "
            "trained on English only, so write the descriptions in English."
        )
    shots = [len(c.images) for c in task.classes]
    if len(task.classes) > MAX_ONE_SHOT_CLASSES and min(shots) <= 1:
        messages.append(
            f"{len(task.classes)} classes with as few as one image each: probabilities will be flat and the top "
            f"class unreliable; use at most {MAX_ONE_SHOT_CLASSES} classes or add images to every class."
        )
    return messages


def label_conflicts(
    class_names: Sequence[str], fingerprints: Sequence[Sequence[str]], what: str = "support images"
) -> list[str]:
    """One message when an image (same fingerprint) is among the ``what`` of two or more classes, else none.

    Such a twin is a labelling mistake at least once (a data set can hold it too: PAD-UFES-20 has two images filed
    under both basal and squamous cell carcinoma), and it teaches the classifier that the two classes look the same.
    """
    owners: dict[str, list[str]] = {}
    for name, hashes in zip(class_names, fingerprints, strict=True):
        for digest in dict.fromkeys(hashes):
            owners.setdefault(digest, []).append(name)
    shared = {digest: names for digest, names in owners.items() if len(names) > 1}
    if not shared:
        return []
    digest, names = next(iter(shared.items()))
    return [
        f"{len(shared)} image(s) are {what} of more than one class, e.g. one of "
        f"{' and '.join(map(repr, names))} (sha256 {digest[:12]}...): an image can have only one label, so check "
        "which is right and remove it from the other class(es)."
    ]


def warn_about_task(task: Any) -> list[str]:
    """Warn (``AccuracyWarning``) about each :func:`task_advice` message; returns them."""
    messages = task_advice(task)
    for message in messages:
        warn(message, stacklevel=4)
    return messages


def collect(messages: Iterable[warnings.WarningMessage]) -> list[str]:
    """The distinct texts of sgps_hf's own warnings among caught ``messages``, in order."""
    seen: list[str] = []
    for item in messages:
        if issubclass(item.category, (AccuracyWarning, NoCoverageGuaranteeWarning)) and str(item.message) not in seen:
            seen.append(str(item.message))
    return seen
