"""Fuzzing the task boundary: ClassSpec / TaskSpec built in Python, clinical texts, and task files (YAML/JSON).

Property: whatever a user types or writes in a task file, the result is a valid task (normalised text, limits
respected, JSON-serialisable) or an InvalidTaskError that says what to fix. Nothing else escapes.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
import yaml
from fuzzing import assert_actionable
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sgps_hf import ClassSpec, InvalidTaskError, TaskSpec
from sgps_hf.task import MAX_CLASSES, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS

pytestmark = pytest.mark.timeout(180)

# Any code point, lone surrogates and control characters included (st.text() alone leaves surrogates out).
ANY_CHAR = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "\n\t ",
        "\x00",
        "\x1b[31m",
        "\u200b",
        "\ufeff",
        "\ud800",
        "e\u0301",
        "\u2028",
        "ß",
        "SS",
        "İ",
        "🩺",
        "a" * 101,
    ]
)
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=40), TRICKY, st.lists(TRICKY | st.text(max_size=5), max_size=6).map("".join)
)


def check_valid_class(spec: ClassSpec) -> None:
    """The invariants a ClassSpec that was accepted always has."""
    for text in (spec.name, spec.description):
        assert text == unicodedata.normalize("NFC", text)
        assert text == " ".join(text.split()), "whitespace is collapsed"
        assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)
        text.encode("utf-8")  # writable to a card, a task file and a JSON sidecar
    assert 0 < len(spec.name) <= MAX_NAME_CHARS
    assert len(spec.description) <= MAX_DESCRIPTION_CHARS
    assert spec.has_text or spec.has_images


@settings(max_examples=300)
@given(
    name=TEXT, description=st.one_of(TEXT, st.none(), st.integers(), st.binary(max_size=4)), with_image=st.booleans()
)
@example(name="melanoma", description="x" * 100_000, with_image=True)  # a 100k-character clinical text
@example(name="  ", description="\t\n", with_image=True)
@example(name="a", description="\x07bell", with_image=False)
def test_class_spec_accepts_or_explains(name, description, with_image):
    images = ["unused.png"] if with_image else []  # paths are not opened until synthesis
    try:
        spec = ClassSpec(name=name, description=description, images=images)
    except InvalidTaskError as error:
        assert_actionable(error, InvalidTaskError)
        return
    check_valid_class(spec)


@settings(max_examples=150)
@given(names=st.lists(TEXT, min_size=0, max_size=6), task_name=TEXT, modality=TEXT)
@example(names=["café", "CAFE\u0301"], task_name="t", modality="")  # duplicates after NFC + casefold
@example(names=[f"c{i}" for i in range(MAX_CLASSES + 1)], task_name="many", modality="")
def test_task_spec_accepts_or_explains(names, task_name, modality):
    try:
        task = TaskSpec([ClassSpec(name, "a clinical text") for name in names], name=task_name, modality=modality)
    except InvalidTaskError as error:
        assert_actionable(error, InvalidTaskError)
        return
    assert 2 <= len(task.classes) <= MAX_CLASSES
    keys = [n.casefold() for n in task.class_names]
    assert len(set(keys)) == len(keys), "class names are unique, case-insensitively"
    assert task.name and "\n" not in task.name
    data = task.to_dict()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data


# -- task files --------------------------------------------------------------------------------------------------
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=6),
    TRICKY,
)
ANY_DATA = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
IMAGE_PATH = st.one_of(
    st.sampled_from(["a.png", "../a.png", "/etc/passwd", "", ".", "img\x00.png", "a" * 300, "~/x.png"]),
    st.text(max_size=10),
)
CLASS_ITEM = st.fixed_dictionaries(
    {"name": st.one_of(TEXT, SCALAR)},
    optional={
        "description": st.one_of(TEXT, SCALAR),
        "images": st.one_of(st.lists(IMAGE_PATH, max_size=3), SCALAR),
        "label": SCALAR,
    },
)
# Mostly well-formed tasks with one fuzzed part, so that the deep checks (paths, texts) are reached, not only the
# first.
GOOD_CLASS = st.builds(
    lambda i, images: {"name": f"class-{i}", "description": "a clinical text", "images": images},
    st.integers(0, 1_000_000),
    st.lists(IMAGE_PATH, max_size=2),
)
TASK_DATA = st.one_of(
    ANY_DATA,
    st.fixed_dictionaries(
        {"classes": st.lists(CLASS_ITEM | ANY_DATA, max_size=5)},
        optional={"name": SCALAR, "modality": SCALAR, "author": SCALAR},
    ),
    st.fixed_dictionaries(
        {
            "classes": st.builds(
                lambda good, extra: good + extra,
                st.lists(GOOD_CLASS, min_size=1, max_size=3),
                st.lists(CLASS_ITEM, max_size=1),
            )
        },
        optional={"name": TEXT, "modality": TEXT},
    ),
)


def load_task_file(path):
    try:
        task = TaskSpec.from_file(path)
    except InvalidTaskError as error:
        assert_actionable(error, InvalidTaskError)
        return None
    for spec in task.classes:
        check_valid_class(spec)
    return task


@settings(max_examples=250)
@given(data=TASK_DATA, as_json=st.booleans())
@example(
    data={"classes": [{"name": "a", "images": ["img\x00.png"]}, {"name": "b", "description": "t"}]}, as_json=False
)
def test_task_file_structures_accept_or_explain(tmp_path_factory, data, as_json):
    folder = tmp_path_factory.mktemp("task")
    (folder / "a.png").write_bytes(b"not opened before synthesis")
    try:
        text = json.dumps(data) if as_json else yaml.safe_dump(data, allow_unicode=True)
    except (TypeError, ValueError, yaml.YAMLError):
        return  # not representable in that format (bytes in JSON, NaN keys): not a file a user can write
    (folder / "task.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    task = load_task_file(folder / "task.yaml")
    if task is not None:
        for spec in task.classes:  # relative image paths never escape the task folder
            for image in spec.images:
                assert image.is_absolute()


@settings(max_examples=150)
@given(
    raw=st.one_of(
        st.binary(max_size=200), st.text(ANY_CHAR, max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
)
@example(raw=b"a: &a [*a, *a]\nclasses: *a\n")  # self-referential YAML
@example(raw=b"classes: !!python/object/apply:os.system ['echo pwned']\n")  # code execution is refused by safe_load
@example(raw=b"\xef\xbb\xbfclasses: []\n")
@example(
    raw=json.dumps(
        {"classes": [{"name": "\U0001fa7a", "description": "t"}, {"name": "b", "description": "\U0001f600"}]}
    ).encode()
)
def test_arbitrary_task_file_bytes_accept_or_explain(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("raw") / "task.yaml"
    path.write_bytes(raw)
    load_task_file(path)


def test_yaml_alias_bomb_is_cheap(tmp_path):
    """A "billion laughs" task file: an alias that repeats a list is refused before anything expands."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines.append("classes: [*a8, *a8]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines))
    with pytest.raises(InvalidTaskError, match="aliases may only repeat a text"):
        TaskSpec.from_file(path)


def test_json_task_file_with_non_bmp_characters(tmp_path):
    """json.dumps writes an emoji as a surrogate-pair escape; the task must keep the character, not reject it."""
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps(
            {
                "classes": [
                    {"name": "rash \U0001fa7a", "description": "red \U0001f600"},
                    {"name": "b", "description": "t"},
                ]
            }
        )
    )
    task = TaskSpec.from_file(path)
    assert task.class_names == ["rash \U0001fa7a", "b"] and task.descriptions[0] == "red \U0001f600"


# -- task files written by hand: YAML's implicit typing, anchors, duplicates and nesting ----------------------------
# Plain YAML scalars that an implicit-typing loader would turn into booleans, nulls, numbers or dates.
LITERAL_NAMES = [
    "yes",
    "no",
    "null",
    "Null",
    "~",
    "on",
    "off",
    "true",
    "False",
    "0123",
    "0x1F",
    "1e3",
    ".inf",
    "-.nan",
    "2024-01-01",
    "12:30",
    "0o17",
    "+1",
    "1_000",
    "y",
    "n",
]


@settings(max_examples=150)
@given(
    names=st.lists(st.sampled_from(LITERAL_NAMES), min_size=2, max_size=6, unique_by=str.casefold),
    duplicate_key=st.sampled_from([None, "name", "description", "classes"]),
    depth=st.integers(0, 40),
    alias=st.sampled_from([None, "text", "list"]),
)
def test_hand_written_yaml_is_literal_bounded_and_strict(tmp_path_factory, names, duplicate_key, depth, alias):
    lines = ["name: demo"]
    if duplicate_key == "name":
        lines.append("name: again")
    lines.append("classes:")
    for i, name in enumerate(names):
        description = "&t shared text" if alias == "text" and i == 0 else ("*t" if alias == "text" else f"text {i}")
        lines += [f"  - name: {name}", f"    description: {description}"]
        if duplicate_key == "description" and i == 1:
            lines.append("    description: again")
    if alias == "list":
        lines += ["  - &l {name: z, description: zz}", "  - *l"]
    if depth:
        lines += ["  - name: deep", "    description: " + "[" * depth + "x" + "]" * depth]
    if duplicate_key == "classes":
        lines.append("classes: []")
    path = tmp_path_factory.mktemp("yaml") / "task.yaml"
    path.write_text("\n".join(lines) + "\n")
    task = load_task_file(path)
    clean = duplicate_key is None and alias != "list" and depth == 0
    assert (task is not None) == clean
    if task is not None:
        assert task.class_names == names  # each name is exactly the text written, never True, None or 83
