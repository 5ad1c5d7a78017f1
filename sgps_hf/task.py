"""The task a user describes: classes, each with a clinical text and a few example images.

Validation of everything a user types or points at happens here, before any model code runs.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from .errors import InputWarning, InvalidTaskError
from .imaging import DecodedImage, ImageInput, check_path_text, decode_image, image_fingerprint, load_image
from .task_file import MAX_TASK_NESTING, load_yaml, read_task_text, short, unique_keys

MAX_CLASSES = 100
MAX_IMAGES_PER_CLASS = 100
MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 20_000


# Bidirectional controls reorder how text is displayed (a name can read as another): refused in every text.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Invisible characters outside category Cf (Hangul fillers, combining grapheme joiner, Mongolian vowel separator).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u3164\uffa0")
# Letters of other scripts that look like Latin ones (after case folding): two class names that differ only in these
# are refused as duplicates ("a" and Cyrillic "\u0430").
_LOOKALIKES = str.maketrans(
    {
        **dict(
            zip(
                "\u0430\u0432\u0435\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u051b\u051d\u04cf",
                "abekmhopctyxijshdqwl",
                strict=False,
            )
        ),
        **dict(
            zip(
                "\u03b1\u03b2\u03b5\u03b6\u03b7\u03b9\u03ba\u03bc\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7",
                "abezhikmnoptyx",
                strict=False,
            )
        ),
    }
)


def _clean_text(text: str, what: str) -> str:
    """Normalise Unicode and whitespace; reject control characters that would corrupt files/cards."""
    if not isinstance(text, str):
        raise InvalidTaskError(f"{what} must be a string, got {type(text).__name__}.")
    text = unicodedata.normalize("NFC", text)
    bad = sorted({hex(ord(ch)) for ch in text if unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\n\t\r"})
    if bad:
        raise InvalidTaskError(f"{what} contains control characters {', '.join(bad)}; remove them.")
    bidi = sorted({f"U+{ord(ch):04X}" for ch in text if ch in _BIDI_CONTROLS})
    if bidi:
        raise InvalidTaskError(
            f"{what} contains bidirectional-control characters {', '.join(bidi)} (they change how text reads); remove "
            "them."
        )
    return " ".join(text.split())


def _clean_name(text: str, what: str) -> str:
    """A class or task name: clean text, no invisible characters, NFKC-normalised (a warning says when that changed
    it).

    NFKC turns full-width letters, ligatures, superscripts and other compatibility forms into their plain form, so
    names that look alike are stored alike.
    """
    text = _clean_text(text, what)
    invisible = sorted(
        {
            f"U+{ord(ch):04X}"
            for ch in text
            if unicodedata.category(ch) == "Cf"
            or ch in _INVISIBLE
            or 0xFE00 <= ord(ch) <= 0xFE0F
            or 0xE0100 <= ord(ch) <= 0xE01EF
        }
    )
    if invisible:
        raise InvalidTaskError(
            f"{what} {text[:40]!r} contains invisible characters {', '.join(invisible[:5])} (zero-width, formatting "
            "or variation selectors) that make different names look the same; remove them."
        )
    normalized = " ".join(unicodedata.normalize("NFKC", text).split())
    if normalized != text:
        import warnings

        warnings.warn(
            f"{what} {text[:40]!r} was normalised to {normalized[:40]!r} (NFKC: full-width, ligature and other "
            "compatibility characters take their plain form).",
            InputWarning,
            stacklevel=4,
        )
    return normalized


def name_key(name: str) -> str:
    """What two names must not share: case-folded, NFKC, look-alike letters of other scripts mapped to Latin."""
    return unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKES)


@dataclass
class ClassSpec:
    """One class of a task.

    Args:
        name: the label the classifier predicts, e.g. ``"melanoma"``.
        description: clinical text of what the finding looks like in this modality. May be empty when
            the class has images (image-only synthesis).
        images: example (support) images: file paths, PIL images, numpy arrays or bytes. May be empty
            when the class has a description (text-only, zero-shot synthesis).
    """

    name: str
    description: str = ""
    images: Sequence[ImageInput] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = _clean_name(self.name, "Class name")
        if not self.name:
            raise InvalidTaskError("Class name is empty; give every class a short label such as 'melanoma'.")
        if len(self.name) > MAX_NAME_CHARS:
            raise InvalidTaskError(
                f"Class name {self.name[:40]!r}... is {len(self.name)} characters; keep it under {MAX_NAME_CHARS}."
            )
        self.description = _clean_text(
            self.description if self.description is not None else "", f"Description of class {self.name!r}"
        )
        if len(self.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidTaskError(
                f"Description of class {self.name!r} is {len(self.description)} characters; "
                f"the limit is {MAX_DESCRIPTION_CHARS} (only the first {128} tokens are read anyway)."
            )
        if isinstance(self.images, (str, os.PathLike, bytes, Image.Image)):
            self.images = [self.images]  # a single image given without a list
        self.images = list(self.images)
        if len(self.images) > MAX_IMAGES_PER_CLASS:
            raise InvalidTaskError(
                f"Class {self.name!r} has {len(self.images)} images; the limit is {MAX_IMAGES_PER_CLASS}."
            )
        if not self.images and not self.description:
            raise InvalidTaskError(
                f"Class {self.name!r} has neither a description nor images; give it a clinical text, "
                "at least one example image, or both."
            )

    @property
    def has_text(self) -> bool:
        return bool(self.description)

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def load_images(self) -> list[Image.Image]:
        """Decode this class's images to RGB (raises ImageLoadError naming the bad one)."""
        return [load_image(image) for image in self.images]

    def decode_images(self) -> list[DecodedImage]:
        """Decode each image once, with its fingerprint: all a synthesis needs of it."""
        return [decode_image(image) for image in self.images]

    def fingerprints(self) -> list[str]:
        return [image_fingerprint(image) for image in self.images]


@dataclass
class TaskSpec:
    """A diagnostic task: at least two classes with unique names.

    Args:
        classes: the classes, in the order the classifier's outputs will have.
        name: a short identifier of the task (used in model cards and repo names).
        modality: free text such as ``"dermoscopy"`` or ``"chest X-ray"`` (shown in model cards).
    """

    classes: Sequence[ClassSpec]
    name: str = "custom-task"
    modality: str = ""

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        if not all(isinstance(c, ClassSpec) for c in self.classes):
            raise InvalidTaskError("TaskSpec.classes must be a list of ClassSpec objects.")
        if len(self.classes) < 2:
            raise InvalidTaskError(f"A task needs at least 2 classes, got {len(self.classes)}; add another class.")
        if len(self.classes) > MAX_CLASSES:
            raise InvalidTaskError(f"A task may have at most {MAX_CLASSES} classes, got {len(self.classes)}.")
        seen: dict[str, str] = {}
        for cls in self.classes:
            key = name_key(cls.name)
            if key in seen:
                alike = (
                    ""
                    if cls.name.casefold() == seen[key].casefold()
                    else " (they differ only in look-alike letters of another script)"
                )
                raise InvalidTaskError(
                    f"Duplicate class name {cls.name!r} (same as {seen[key]!r}{alike}); class names must be unique."
                )
            seen[key] = cls.name
        self.name = _clean_name(self.name, "Task name") or "custom-task"
        self.modality = _clean_text(self.modality, "Modality")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def descriptions(self) -> list[str]:
        return [c.description for c in self.classes]

    def to_dict(
        self, include_fingerprints: bool = True, fingerprints: Sequence[Sequence[str]] | None = None
    ) -> dict[str, Any]:
        """JSON-ready description of the task (images replaced by their sha256 fingerprints).

        ``fingerprints``: those of each class's images when already known (a synthesis decoded them), else computed.
        """
        classes = []
        for index, cls in enumerate(self.classes):
            entry: dict[str, Any] = {"name": cls.name, "description": cls.description, "num_images": len(cls.images)}
            if include_fingerprints:
                entry["image_sha256"] = list(fingerprints[index]) if fingerprints is not None else cls.fingerprints()
            classes.append(entry)
        return {"name": self.name, "modality": self.modality, "classes": classes}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> "TaskSpec":
        """Build a task from plain data (the parsed task YAML/JSON).

        Relative image paths are resolved against ``base_dir`` and must stay inside it.
        """
        if not isinstance(data, dict):
            raise InvalidTaskError("A task file must contain a mapping with a 'classes' list.")
        raw_classes = data.get("classes")
        if not isinstance(raw_classes, list):
            raise InvalidTaskError("A task needs a 'classes' list; each item has 'name', 'description' and 'images'.")
        base = Path(base_dir).resolve() if base_dir is not None else None
        classes = []
        for index, item in enumerate(raw_classes):
            if not isinstance(item, dict) or "name" not in item:
                raise InvalidTaskError(f"Class #{index + 1} must be a mapping with at least a 'name'.")
            unknown = set(item) - {"name", "description", "images"}
            if unknown:
                raise InvalidTaskError(
                    f"Class #{index + 1} has unknown keys {_key_list(unknown)}; allowed: name, description, images."
                )
            name = _text_field(item["name"], f"The name of class #{index + 1}")
            images = item.get("images") or []
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                raise InvalidTaskError(f"'images' of class {short(name)} must be a list of file paths.")
            classes.append(
                ClassSpec(
                    name=name,
                    description=_text_field(item.get("description"), f"The description of class {short(name)}"),
                    images=[_resolve_image_path(p, base) for p in images],
                )
            )
        unknown = set(data) - {"name", "modality", "classes"}
        if unknown:
            raise InvalidTaskError(f"Unknown task keys {_key_list(unknown)}; allowed: name, modality, classes.")
        return cls(
            classes=classes,
            name=_text_field(data.get("name"), "The task name") or "custom-task",
            modality=_text_field(data.get("modality"), "The modality"),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TaskSpec":
        """Load a task from a YAML or JSON file (see ``docs/task-format.md``).

        Bounded and literal: a regular file of at most :data:`MAX_TASK_FILE_BYTES`, at most
        :data:`MAX_TASK_NESTING` levels deep, no duplicate keys, YAML aliases only to texts, and every YAML
        scalar kept as the text the user wrote (``yes``, ``null`` and ``0123`` stay ``"yes"``, ``"null"``, ``"0123"``).
        """
        path = Path(path)
        text = read_task_text(path)
        try:
            # JSON first: PyYAML reads the JSON escapes of a non-BMP character ("\\ud83e\\ude7a", what json.dumps
            # writes for an emoji) as two unpaired surrogates, which would then be rejected as invalid text.
            data = json.loads(text, object_pairs_hook=unique_keys)
        except RecursionError:
            raise InvalidTaskError(
                f"Task file {path} is nested too deeply; a task needs only {MAX_TASK_NESTING} levels."
            ) from None
        except InvalidTaskError as exc:
            raise InvalidTaskError(f"Task file {path}: {exc}") from None
        except ValueError:
            data = load_yaml(text, path)
        return cls.from_dict(data, base_dir=path.parent)


def _key_list(keys: Any) -> list[str]:
    return sorted((k if isinstance(k, str) else short(k))[:60] for k in keys)[:10]


def _text_field(value: Any, what: str) -> str:
    """A name or text exactly as the user wrote it; numbers, booleans and lists are refused rather than converted
    (``str(True)`` would turn a class written ``yes`` into ``"True"``)."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # JSON 12 is the text 12
    if not isinstance(value, str):
        raise InvalidTaskError(f"{what} must be text, got {type(value).__name__} {short(value)}; put it in quotes.")
    return value


def _resolve_image_path(path: str, base: Path | None) -> Path:
    check_path_text(path, "Image path", InvalidTaskError)
    candidate = Path(path)
    if candidate.is_absolute() or base is None:
        return candidate
    resolved = (base / candidate).resolve()
    if base != resolved and base not in resolved.parents:
        raise InvalidTaskError(
            f"Image path {path!r} points outside the task folder {base}; keep images inside it or use an absolute "
            "path."
        )
    return resolved
