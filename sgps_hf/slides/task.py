"""SlideTask: a whole-slide pathology task given as a few labelled slides per class, with a clinical text per class."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidTaskError
from ..task_file import load_yaml, read_task_text, short, unique_keys

MAX_SLIDES_PER_CLASS = 10


@dataclass
class SlideClassSpec:
    """One class: its name, a clinical text (may be empty) and 1-10 slide files labelled with it."""

    name: str
    description: str = ""
    slides: Sequence[str | os.PathLike] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidTaskError("Every slide class needs a non-empty name.")
        if not isinstance(self.description, str):
            raise InvalidTaskError(f"The description of class {short(self.name)} must be a text.")
        slides = [self.slides] if isinstance(self.slides, (str, os.PathLike)) else list(self.slides)
        if not 1 <= len(slides) <= MAX_SLIDES_PER_CLASS:
            raise InvalidTaskError(
                f"Class {short(self.name)} has {len(slides)} slides; give between 1 and {MAX_SLIDES_PER_CLASS}."
            )
        paths = []
        for slide in slides:
            if not isinstance(slide, (str, os.PathLike)):
                raise InvalidTaskError(f"Slides of class {short(self.name)} must be file paths, got {short(slide)}.")
            path = Path(slide).expanduser()
            if not path.is_file():
                raise InvalidTaskError(f"Slide {path} of class {short(self.name)} does not exist; check the path.")
            paths.append(path)
        if len({p.resolve() for p in paths}) != len(paths):
            raise InvalidTaskError(f"Class {short(self.name)} lists the same slide twice.")
        self.slides = paths


@dataclass
class SlideTask:
    """A slide-level task: two or more classes, each with slides (see :class:`SlideClassSpec`)."""

    classes: Sequence[SlideClassSpec]
    name: str = "slide-task"
    modality: str = "histopathology whole-slide image"

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        if len(self.classes) < 2:
            raise InvalidTaskError("A slide task needs at least two classes.")
        if not all(isinstance(c, SlideClassSpec) for c in self.classes):
            raise InvalidTaskError("SlideTask classes must be SlideClassSpec objects.")
        seen: dict[Path, str] = {}
        for cls in self.classes:
            for slide in cls.slides:
                other = seen.setdefault(slide.resolve(), cls.name)
                if other != cls.name:
                    raise InvalidTaskError(f"Slide {slide} is labelled both {short(other)} and {short(cls.name)}.")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | os.PathLike | None = None) -> "SlideTask":
        """From plain data: ``{name, modality, classes: [{name, description, slides: [paths]}]}``.

        Relative slide paths are resolved against ``base_dir`` (the task file's folder).
        """
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise InvalidTaskError(
                "A slide task file needs a 'classes' list; each has 'name', 'description', 'slides'."
            )
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        classes = []
        for index, item in enumerate(data["classes"]):
            if not isinstance(item, dict) or "name" not in item:
                raise InvalidTaskError(f"Class #{index + 1} must be a mapping with 'name' and 'slides'.")
            unknown = set(item) - {"name", "description", "slides"}
            if unknown:
                raise InvalidTaskError(
                    f"Class #{index + 1} has unknown keys {sorted(map(str, unknown))}; "
                    "allowed: name, description, slides."
                )
            slides = item.get("slides") or []
            if not isinstance(slides, list) or not all(isinstance(s, str) for s in slides):
                raise InvalidTaskError(f"'slides' of class {short(item['name'])} must be a list of file paths.")
            classes.append(
                SlideClassSpec(
                    name=item["name"],
                    description=item.get("description") or "",
                    slides=[base / s for s in slides],
                )
            )
        extra = {k: data[k] for k in ("name", "modality") if isinstance(data.get(k), str)}
        return cls(classes=classes, **extra)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SlideTask":
        """Load a slide task from a YAML or JSON file (the same bounded reader as image task files)."""
        path = Path(path)
        text = read_task_text(path)
        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except ValueError:
            data = load_yaml(text, path)
        return cls.from_dict(data, base_dir=path.parent)
