"""TaskSpec / ClassSpec validation and task files (sgps_hf/task.py)."""

import hashlib
import json

import pytest
from sgps_testing import noise_image

from sgps_hf import ClassSpec, InvalidTaskError, TaskSpec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def two_classes(**first):
    return [
        ClassSpec(**{"name": "nevus", "description": "uniform brown macule", **first}),
        ClassSpec("melanoma", "asymmetric, several colours"),
    ]


# -- ClassSpec --------------------------------------------------------------------------------------------------
def test_class_spec_normalises_text_and_wraps_a_single_image(tmp_path):
    path = tmp_path / "a.png"
    noise_image(0).save(path)
    spec = ClassSpec("  melanoma \n", "Asymmetric\n\tlesion   with  irregular borders.", images=str(path))
    assert spec.name == "melanoma"
    assert spec.description == "Asymmetric lesion with irregular borders."
    assert spec.images == [str(path)]
    assert spec.has_text and spec.has_images
    assert spec.fingerprints() == [hashlib.sha256(path.read_bytes()).hexdigest()]
    (image,) = spec.load_images()
    assert image.mode == "RGB" and image.size == (48, 40)


def test_unicode_is_nfc_normalised():
    decomposed = "Cafe\u0301-au-lait macule"
    assert ClassSpec(decomposed, "x").name == "Caf\u00e9-au-lait macule"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": ""}, "Class name is empty"),
        ({"name": "   \n "}, "Class name is empty"),
        ({"name": "x" * 101}, "keep it under 100"),
        ({"name": 42}, "must be a string"),
        ({"name": "mela\x00noma"}, "control characters 0x0"),
        ({"name": "nevus", "description": "brown\x1b[31m macule"}, "control characters 0x1b"),
        ({"name": "nevus", "description": "a" * 20_001}, "the limit is 20000"),
        ({"name": "nevus", "description": "", "images": []}, "neither a description nor images"),
        ({"name": "nevus", "description": "   ", "images": []}, "neither a description nor images"),
        ({"name": "nevus", "description": "x", "images": ["a.png"] * 101}, "the limit is 100"),
    ],
)
def test_class_spec_rejects_bad_input_with_a_helpful_message(kwargs, message):
    with pytest.raises(InvalidTaskError, match=message.replace("[", r"\[")) as exc:
        ClassSpec(**kwargs)
    assert isinstance(exc.value, ValueError)  # callers who only know ValueError still catch it


def test_text_only_and_image_only_classes_are_valid(tmp_path):
    text_only = ClassSpec("nevus", "uniform brown macule")
    image_only = ClassSpec("melanoma", images=[noise_image(1)])
    assert text_only.has_text and not text_only.has_images
    assert image_only.has_images and not image_only.has_text and image_only.description == ""
    # None is accepted as "no description" when there are images
    assert ClassSpec("x", None, [noise_image(2)]).description == ""


# -- TaskSpec ---------------------------------------------------------------------------------------------------
def test_task_needs_at_least_two_classes():
    with pytest.raises(InvalidTaskError, match="at least 2 classes, got 1"):
        TaskSpec([ClassSpec("nevus", "brown")])
    with pytest.raises(InvalidTaskError, match="at least 2 classes, got 0"):
        TaskSpec([])


def test_task_rejects_too_many_classes():
    with pytest.raises(InvalidTaskError, match="at most 100 classes"):
        TaskSpec([ClassSpec(f"c{i}", "text") for i in range(101)])


@pytest.mark.parametrize("other", ["Melanoma", "MELANOMA", "  melanoma\n"])
def test_task_rejects_duplicate_names_case_insensitively(other):
    with pytest.raises(InvalidTaskError, match="Duplicate class name"):
        TaskSpec([ClassSpec("melanoma", "a"), ClassSpec("nevus", "b"), ClassSpec(other, "c")])


def test_duplicate_detection_sees_through_unicode_normalisation():
    with pytest.raises(InvalidTaskError, match="Duplicate class name"):
        TaskSpec([ClassSpec("caf\u00e9", "a"), ClassSpec("CAFE\u0301", "b")])


def test_task_rejects_non_class_spec_items():
    with pytest.raises(InvalidTaskError, match="list of ClassSpec"):
        TaskSpec([ClassSpec("a", "x"), {"name": "b", "description": "y"}])


def test_task_rejects_control_characters_in_task_name():
    with pytest.raises(InvalidTaskError, match="Task name contains control characters"):
        TaskSpec(two_classes(), name="derm\x07")


def test_task_properties_and_to_dict(tmp_path):
    image = tmp_path / "m.png"
    noise_image(3).save(image)
    pil = noise_image(4)
    task = TaskSpec(
        [
            ClassSpec("nevus", "uniform brown macule", [image]),
            ClassSpec("melanoma", "", [pil]),
            ClassSpec("bcc", "pearly papule"),
        ],
        name="  derm  demo ",
        modality="dermoscopy",
    )
    assert task.name == "derm demo"
    assert task.class_names == ["nevus", "melanoma", "bcc"]
    assert task.descriptions == ["uniform brown macule", "", "pearly papule"]
    data = task.to_dict()
    json.dumps(data)  # JSON-ready
    assert [c["num_images"] for c in data["classes"]] == [1, 1, 0]
    assert data["classes"][0]["image_sha256"] == [hashlib.sha256(image.read_bytes()).hexdigest()]
    assert len(data["classes"][1]["image_sha256"][0]) == 64 and data["classes"][2]["image_sha256"] == []
    assert "image_sha256" not in task.to_dict(include_fingerprints=False)["classes"][0]
    assert TaskSpec(two_classes(), name="").name == "custom-task"


# -- task files -------------------------------------------------------------------------------------------------
def write_task(folder, text):
    path = folder / "task.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_from_file_resolves_relative_paths_against_the_task_folder(tmp_path, monkeypatch):
    (tmp_path / "img" / "nevus").mkdir(parents=True)
    noise_image(0).save(tmp_path / "img" / "nevus" / "a.png")
    noise_image(1).save(tmp_path / "mel.png")
    absolute = tmp_path / "abs.png"
    noise_image(2).save(absolute)
    path = write_task(
        tmp_path,
        f"""
name: derm
modality: dermoscopy
classes:
  - name: nevus
    description: Uniform brown macule.
    images: [img/nevus/a.png, ./mel.png]
  - name: melanoma
    images: ["{absolute}"]
  - name: bcc
    description: Pearly papule.
""",
    )
    monkeypatch.chdir("/")  # relative to the file, not to the working directory
    task = TaskSpec.from_file(path)
    assert task.name == "derm" and task.modality == "dermoscopy"
    assert task.class_names == ["nevus", "melanoma", "bcc"]
    assert task.classes[0].images == [(tmp_path / "img/nevus/a.png").resolve(), (tmp_path / "mel.png").resolve()]
    assert task.classes[1].images == [absolute] and task.classes[1].description == ""
    assert task.classes[2].images == []
    assert all(img.size == (48, 40) for c in task.classes for img in c.load_images())


def test_from_file_accepts_json(tmp_path):
    noise_image(0).save(tmp_path / "a.png")
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps({"classes": [{"name": "a", "images": ["a.png"]}, {"name": "b", "description": "text"}]})
    )
    task = TaskSpec.from_file(path)
    assert task.class_names == ["a", "b"] and task.name == "custom-task"


@pytest.mark.parametrize("image", ["../outside.png", "img/../../outside.png", "img/../../../etc/passwd"])
def test_from_file_rejects_path_traversal(tmp_path, image):
    task_dir = tmp_path / "task"
    (task_dir / "img").mkdir(parents=True)
    noise_image(0).save(tmp_path / "outside.png")
    path = write_task(task_dir, f"classes:\n  - {{name: a, images: ['{image}']}}\n  - {{name: b, description: t}}\n")
    with pytest.raises(InvalidTaskError, match="points outside the task folder"):
        TaskSpec.from_file(path)


def test_from_file_allows_dotdot_that_stays_inside(tmp_path):
    (tmp_path / "img").mkdir()
    noise_image(0).save(tmp_path / "a.png")
    path = write_task(tmp_path, "classes:\n  - {name: a, images: ['img/../a.png']}\n  - {name: b, description: t}\n")
    assert TaskSpec.from_file(path).classes[0].images == [(tmp_path / "a.png").resolve()]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "classes:\n  - {name: a, description: x, label: 1}\n  - {name: b, description: y}\n",
            r"Class #1 has unknown keys \['label'\]",
        ),
        ("clases:\n  - {name: a, description: x}\n", "needs a 'classes' list"),
        (
            "classes:\n  - {name: a, description: x}\n  - {name: b, description: y}\nauthor: me\n",
            r"Unknown task keys \['author'\]",
        ),
        ("classes: {a: x}\n", "needs a 'classes' list"),
        ("- a\n- b\n", "must contain a mapping"),
        ("classes:\n  - just-a-string\n  - {name: b, description: y}\n", "Class #1 must be a mapping"),
        (
            "classes:\n  - {description: x}\n  - {name: b, description: y}\n",
            "Class #1 must be a mapping with at least a 'name'",
        ),
        ("classes:\n  - {name: a, images: a.png}\n  - {name: b, description: y}\n", "must be a list of file paths"),
        (
            "classes:\n  - {name: a, images: [[a.png]]}\n  - {name: b, description: y}\n",
            "must be a list of file paths",
        ),
        ("classes:\n  - {name: a\n", "not valid YAML/JSON"),
        ("classes:\n  - {name: a, description: x}\n  - {name: A, description: y}\n", "Duplicate class name"),
        ("classes:\n  - {name: a}\n  - {name: b, description: y}\n", "neither a description nor images"),
    ],
)
def test_from_file_rejects_malformed_tasks(tmp_path, text, message):
    with pytest.raises(InvalidTaskError, match=message):
        TaskSpec.from_file(write_task(tmp_path, text))


def test_from_file_missing_or_binary_file(tmp_path):
    with pytest.raises(InvalidTaskError, match="Cannot read task file"):
        TaskSpec.from_file(tmp_path / "nope.yaml")
    binary = tmp_path / "task.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidTaskError, match="Cannot read task file"):
        TaskSpec.from_file(binary)
