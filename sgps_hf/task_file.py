"""Reading a task file safely: a bounded regular file, literal YAML (no tags, aliases only to texts), no duplicate
keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InvalidTaskError
from .imaging import check_path_text

MAX_TASK_FILE_BYTES = 4 * 1024 * 1024  # 100 classes with long texts fit; a 120 MB file would take minutes to parse
MAX_TASK_NESTING = 16  # a task is 5 levels deep (task -> classes -> class -> images -> path)
MAX_YAML_ALIASES = 200  # and each may only repeat a text (a scalar), so nothing expands


def read_task_text(path: Path) -> str:
    """The file's text: regular files only (no FIFO, device or /dev/zero), size-limited, UTF-8."""
    import stat

    check_path_text(str(path), "Task file path", InvalidTaskError)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidTaskError(
                f"Task file {path} is not a regular file (a folder, pipe or device); give the path of a YAML or JSON "
                "file."
            )
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, opening it does not wait for a writer.
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(handle, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise InvalidTaskError(
                    f"Task file {path} is not a regular file; give the path of a YAML or JSON file."
                )
            data = stream.read(MAX_TASK_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidTaskError(f"Cannot read task file {path}: {exc}") from exc
    if len(data) > MAX_TASK_FILE_BYTES:
        raise InvalidTaskError(
            f"Task file {path} is larger than the limit of {MAX_TASK_FILE_BYTES // 2**20} MiB; a task file needs far "
            "less."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTaskError(
            f"Cannot read task file {path}: it is not UTF-8 text ({exc}). Save it as UTF-8."
        ) from exc


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidTaskError(f"the key {short(key)} appears twice in one mapping; keep one.")
        result[key] = value
    return result


def load_yaml(text: str, path: Path) -> Any:
    import yaml

    loader = None
    try:
        loader = _TaskLoader(text)  # the reader already refuses some characters here
        return loader.get_single_data()
    except InvalidTaskError as exc:
        raise InvalidTaskError(f"Task file {path}: {exc}") from None
    except RecursionError:
        raise InvalidTaskError(
            f"Task file {path} is nested too deeply; a task needs only {MAX_TASK_NESTING} levels."
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidTaskError(f"Task file {path} is not valid YAML/JSON: {exc}") from exc
    finally:
        if loader is not None:
            loader.dispose()


def _task_loader_class() -> type:
    import yaml

    class TaskLoader(yaml.SafeLoader):
        """SafeLoader that keeps every plain scalar as text and bounds nesting, aliases and duplicate keys."""

        yaml_implicit_resolvers: dict = {}  # no implicit bool/null/int/float/timestamp/merge: scalars stay text

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise InvalidTaskError(
                        f"more than {MAX_YAML_ALIASES} YAML aliases (*name); remove some and write the texts out."
                    )
                target = self.anchors.get(event.anchor)
                if target is not None and not isinstance(target, yaml.ScalarNode):
                    raise InvalidTaskError(
                        f"the YAML alias *{event.anchor} (line {event.start_mark.line + 1}) repeats a list or "
                        "mapping; aliases may only repeat a text: remove the alias and write the entries out."
                    )
            self._depth += 1
            try:
                if self._depth > MAX_TASK_NESTING:
                    raise InvalidTaskError(
                        f"it is nested more than {MAX_TASK_NESTING} levels deep; a task needs only 5."
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise InvalidTaskError(
                        f"the key {short(key)} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                        "keep one."
                    )
            return super().construct_mapping(node, deep=deep)

    return TaskLoader


_TASK_LOADER: type | None = None


def _TaskLoader(text: str) -> Any:  # noqa: N802 - a factory that looks like the class it builds
    global _TASK_LOADER
    if _TASK_LOADER is None:
        _TASK_LOADER = _task_loader_class()
    return _TASK_LOADER(text)


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value for an error message, cut short (a value may be huge or deeply nested)."""
    if isinstance(value, (list, dict, tuple, set)):
        return f"<a {type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
