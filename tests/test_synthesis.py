"""Continuous adaptation: stored support sets, SGPSSynthesizer.update, version history, privacy of pushes."""

from __future__ import annotations

import json
import re

import huggingface_hub as hfh
import numpy as np
import pytest
from PIL import Image
from sgps_testing import noise_image, synthetic_task, tiny_synthesizer

from sgps_hf import CheckpointError, ClassSpec, InvalidTaskError, SynthesizedClassifier, TaskSpec
from sgps_hf.hub.checkpoints import state_dict_sha256
from sgps_hf.imaging import image_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return synthetic_task(
        tmp_path_factory.mktemp("adapt-task"),
        texts=("round pink papule", None, "scaly patch"),
        images_per_class=(2, 1, 0),
    )


@pytest.fixture(scope="module")
def saved(synth, task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapt") / "classifier"
    synth.synthesize(task).save_pretrained(folder)
    return folder


def enlarged(task: TaskSpec, additions: dict[str, list]) -> TaskSpec:
    classes = [ClassSpec(c.name, c.description, [*c.images, *additions.get(c.name, [])]) for c in task.classes]
    return TaskSpec(classes, name=task.name, modality=task.modality)


def test_support_images_are_stored_and_reloaded_exactly(saved, task):
    info = json.loads((saved / "sgps_task.json").read_text())
    files = info["support"]["files"]
    assert [len(files[c.name]) for c in task.classes] == [2, 1, 0]
    loaded = SynthesizedClassifier.from_pretrained(saved)
    for cls in task.classes:
        for path, original, stored in zip(files[cls.name], cls.load_images(), loaded.support[cls.name], strict=False):
            assert (saved / path).is_file() and path.startswith("support/")
            assert np.array_equal(
                np.asarray(original), np.asarray(stored)
            )  # lossless: exactly the synthesizer's pixels
            assert path.endswith(f"/{image_fingerprint(stored)}.png")
    assert "This folder contains the 3 support image(s) under `support/`" in (saved / "README.md").read_text()


def test_update_equals_a_fresh_synthesis_of_the_enlarged_task(synth, task, saved):
    classifier = SynthesizedClassifier.from_pretrained(saved)
    new_case = noise_image(77, (50, 44))
    updated = synth.update(classifier, {"class_1": [new_case], "class_2": new_case})
    fresh = synth.synthesize(enlarged(task, {"class_1": [new_case], "class_2": [new_case]}))
    assert (
        updated.info["weights_sha256"] == fresh.info["weights_sha256"] == state_dict_sha256(updated.model.state_dict())
    )
    assert updated.info["task"]["classes"][0]["image_sha256"] == classifier.info["task"]["classes"][0]["image_sha256"]
    assert updated.info["task"]["classes"][2]["image_sha256"] == [image_fingerprint(new_case)]
    assert classifier.version == 1 and updated.version == 2  # the original object is left as it was
    assert [h["version"] for h in updated.info["history"]] == [1, 2]
    assert updated.info["history"][-1]["added"] == {"class_1": 1, "class_2": 1}
    assert updated.info["history"][-1]["previous_weights_sha256"] == classifier.info["weights_sha256"]
    assert updated.versions == [classifier.info]


def test_version_history_is_saved_and_carried_across_updates(synth, saved, tmp_path):
    first = synth.update(SynthesizedClassifier.from_pretrained(saved), {"class_0": [noise_image(80)]})
    first.save_pretrained(tmp_path / "c")
    second = synth.update(SynthesizedClassifier.from_pretrained(tmp_path / "c"), {"class_0": [noise_image(81)]})
    second.save_pretrained(tmp_path / "c")  # in place, as `sgps update` does
    loaded = SynthesizedClassifier.from_pretrained(tmp_path / "c")
    assert loaded.version == 3 and [v["version"] for v in loaded.versions] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "c" / "versions").iterdir()) == ["v1", "v2"]
    assert (
        json.loads((tmp_path / "c" / "versions" / "v2" / "sgps_task.json").read_text())["weights_sha256"]
        == first.info["weights_sha256"]
    )
    card = (tmp_path / "c" / "README.md").read_text()
    assert (
        "## Changelog" in card
        and "**v3**" in card
        and "(version 3)" in card
        and "(v1, v2) are kept under `versions/v<N>/`: each its task file and its weights" in card
    )
    assert sum(len(v) for v in loaded.support.values()) == 5


def test_update_errors_say_what_to_fix(synth, saved, tmp_path):
    classifier = SynthesizedClassifier.from_pretrained(saved)
    with pytest.raises(InvalidTaskError, match=r"Unknown class\(es\) \['melanoma'\]"):
        synth.update(classifier, {"melanoma": [noise_image(1)]})
    with pytest.raises(InvalidTaskError, match="No new images"):
        synth.update(classifier, {"class_0": []})
    with pytest.raises(InvalidTaskError, match="at least one image"):
        synth.update(classifier, {})
    classifier.save_pretrained(tmp_path / "no-support", include_support=False)
    bare = SynthesizedClassifier.from_pretrained(tmp_path / "no-support")
    assert (
        bare.support is None and "are **not** part of this copy" in (tmp_path / "no-support" / "README.md").read_text()
    )
    with pytest.raises(InvalidTaskError, match="no stored support images"):
        synth.update(bare, {"class_0": [noise_image(1)]})
    with pytest.raises(CheckpointError, match="emits .* at 48 px"):
        tiny_synthesizer(seed=0, image_size=48).update(classifier, {"class_0": [noise_image(1)]})


def test_a_case_already_in_its_class_is_refused_and_nothing_is_added(synth, saved, task, tmp_path):
    """The same image again (its original file, a copy under another name, or twice in one addition) would count
    twice: refused, naming it; the classifier is unchanged. The same image for another class is a label conflict
    (a warning), not a repeat."""
    import shutil
    import warnings

    from sgps_hf.errors import AccuracyWarning

    classifier = SynthesizedClassifier.from_pretrained(saved)
    original = task.classes[0].images[0]
    renamed = tmp_path / "renamed.png"
    shutil.copy(original, renamed)
    repeats = [
        ({"class_0": [original]}, f"{original.name} for 'class_0'"),
        ({"class_0": [renamed]}, "renamed.png for 'class_0'"),
        ({"class_1": [renamed, noise_image(5), renamed]}, "renamed.png for 'class_1'"),  # twice in one addition
    ]
    for addition, named in repeats:
        message = f"Already one of its class's images (same pixels): {named}."
        with pytest.raises(InvalidTaskError, match=re.escape(message)):
            synth.update(classifier, addition)
    assert classifier.version == 1 and len(classifier.support["class_0"]) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        updated = synth.update(classifier, {"class_1": [renamed]})
    assert updated.version == 2 and len(updated.support["class_1"]) == 2
    assert any(issubclass(w.category, AccuracyWarning) and "more than one class" in str(w.message) for w in caught)


def test_tampered_support_files_are_refused(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    info = json.loads((copy / "sgps_task.json").read_text())
    first = info["support"]["files"]["class_0"][0]
    noise_image(99).save(copy / first)  # same path, different pixels
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        _ = SynthesizedClassifier.from_pretrained(copy).support
    info["support"]["files"]["class_0"][0] = "support/../../../etc/passwd"
    (copy / "sgps_task.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="not of the form support/"):
        _ = SynthesizedClassifier.from_pretrained(copy).support


def test_stored_support_keeps_no_metadata(synth, tmp_path):
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x0112] = 6  # rotated: load_image applies it, the stored PNG holds the upright pixels only
    noise_image(5, (40, 30)).save(photo, exif=exif, comment=b"patient 1234")
    task = TaskSpec([ClassSpec("a", "x", [photo]), ClassSpec("b", "y", [noise_image(6)])])
    folder = synth.synthesize(task).save_pretrained(tmp_path / "c")
    stored = Image.open(next((folder / "support").glob("000-a/*.png")))
    assert stored.size == (30, 40) and not stored.info and not stored.getexif()


def test_push_leaves_support_out_by_default(hub_env, synth, saved):
    classifier = SynthesizedClassifier.from_pretrained(saved)
    repo_id = hub_env.new_repo_id("adapt-push")
    classifier.push_to_hub(repo_id, include_support=True)
    assert any(f.startswith("support/") for f in hfh.list_repo_files(repo_id))
    classifier.push_to_hub(repo_id)  # default: images removed from the repo, fingerprints kept
    files = hfh.list_repo_files(repo_id)
    assert not any(f.startswith("support/") for f in files) and "sgps_task.json" in files
    pulled = SynthesizedClassifier.from_pretrained(repo_id)
    assert pulled.support is None and pulled.info["task"] == classifier.info["task"]
    with pytest.raises(InvalidTaskError, match="no stored support images"):
        synth.update(pulled, {"class_0": [noise_image(3)]})
