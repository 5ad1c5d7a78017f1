"""SynthesizedClassifier: a plain timm classifier that loads without sgps_hf (plain timm, transformers pipeline)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from sgps_testing import (
    TINY,
    last_json_line,
    noise_image,
    real_data_available,
    real_queries,
    real_task,
    run_python,
    skip_without_real_data,
    synthetic_task,
    tiny_config,
    tiny_synthesizer,
)

from sgps_hf import CheckpointError, SynthesizedClassifier
from sgps_hf.errors import OutputPathError
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "README.md",
    "sgps_task.json",
    "support",
}  # support/: the support images (sgps_hf.hub.support_images)


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def toy(synth, tmp_path_factory):
    """A classifier for a synthetic 3-class task (no real data needed)."""
    task = synthetic_task(
        tmp_path_factory.mktemp("toy-task"),
        texts=("round pink papule", None, "scaly | red patch"),
        images_per_class=(2, 2, 0),
    )
    return synth.synthesize(task)


@pytest.fixture(scope="module")
def real(synth):
    """A 5-class classifier from one real image + the clinical text per class."""
    if not real_data_available():
        pytest.skip("real data not available")
    return synth.synthesize(real_task(num_classes=5, shots=1))


@pytest.fixture(scope="module")
def real_saved(real, tmp_path_factory):
    folder = tmp_path_factory.mktemp("real-classifier") / "derm-classifier"
    assert real.save_pretrained(folder) == folder
    return folder


@pytest.fixture(scope="module")
def real_query_paths(real):
    return [str(p) for paths in real_queries(names=real.label_names, per_class=2).values() for p in paths]


# -- basics on a synthetic task -----------------------------------------------------------------------------------
def test_predict_and_predict_proba(toy):
    images = [noise_image(s) for s in range(5)]
    probs = toy.predict_proba(images)
    assert probs.shape == (5, 3) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    torch.testing.assert_close(
        toy.predict_proba(images, batch_size=2), probs, rtol=1e-5, atol=1e-6
    )  # batches are independent
    predictions = toy.predict(images)
    assert len(predictions) == 5 and all(list(p) == toy.label_names for p in predictions)
    assert predictions[0] == pytest.approx(dict(zip(toy.label_names, probs[0].tolist(), strict=False)))
    assert toy.predict_proba([]).shape == (0, 3)
    assert toy.predict(noise_image(1))[0] == pytest.approx(predictions[1])  # a single image without a list
    assert "class_0" in repr(toy) and "tf_efficientnetv2_b0" in repr(toy)


def test_info_records_the_task_and_provenance(toy):
    info = toy.info
    json.dumps(info)
    assert info["task"]["classes"][2] == {
        "name": "class_2",
        "description": "scaly | red patch",
        "num_images": 0,
        "image_sha256": [],
    }
    assert len(info["task"]["classes"][0]["image_sha256"]) == 2
    assert info["target"] == {
        "architecture": "tf_efficientnetv2_b0",
        "model_args": {"channel_multiplier": 0.25, "depth_multiplier": 0.25},
    }
    assert info["data_config"]["input_size"] == [3, 32, 32]
    assert info["weights_sha256"] == state_dict_sha256(toy.model.state_dict())
    assert info["synthesizer"]["name_or_path"] == "unsaved" and info["synthesizer"]["revision"].startswith("sha256:")


def test_evaluate_stores_metrics(synth, tmp_path):
    task = synthetic_task(tmp_path, texts=(None, None), images_per_class=(2, 2))
    classifier = synth.synthesize(task)
    support = {c.name: list(c.images) for c in task.classes}
    metrics = classifier.evaluate(support)
    scalars = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")
    assert set(scalars) <= set(metrics) and all(0.0 <= metrics[k] <= 1.0 for k in scalars)
    probs = classifier.predict_proba(support["class_0"] + support["class_1"])
    accuracy = (probs.argmax(-1) == torch.tensor([0, 0, 1, 1])).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert classifier.info["metrics"] == {**metrics, "num_images": 4}
    with pytest.raises(ValueError, match="Unknown classes"):
        classifier.evaluate({"melanoma": support["class_0"]})


def test_save_pretrained_replaces_an_existing_classifier_folder_and_keeps_the_users_files(toy, tmp_path):
    folder = tmp_path / "out"
    toy.save_pretrained(folder)
    (folder / "notes.txt").write_text("the user's own notes")
    toy.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES | {"notes.txt"}
    assert (folder / "notes.txt").read_text() == "the user's own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.lock",
        "out",
    ]  # no staging or retired folders left behind
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        toy.save_pretrained(tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "x"


def test_save_pretrained_refuses_a_folder_of_other_files(toy, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "task.yaml").write_text("classes: []")
    (folder / "images").mkdir()
    (folder / "images" / "a.png").write_bytes(b"png")
    with pytest.raises(OutputPathError, match=r"already holds other files \(images, task.yaml\).*untouched"):
        toy.save_pretrained(folder)
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png", "images", "task.yaml"]


def test_a_pickle_only_folder_is_refused(toy, tmp_path):
    torch.save(toy.model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "tf_efficientnetv2_b0", "num_classes": 3}))
    with pytest.raises(
        CheckpointError, match=r"No model.safetensors.*\['pytorch_model.bin'\].*pickle files are refused"
    ):
        SynthesizedClassifier.from_pretrained(tmp_path)


def test_a_plain_timm_folder_without_task_file_is_refused(toy, tmp_path):
    toy.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "sgps_task.json").unlink()
    with pytest.raises(CheckpointError, match="no readable sgps_task.json"):
        SynthesizedClassifier.from_pretrained(tmp_path / "c")


# -- the real 5-class classifier ----------------------------------------------------------------------------------
@pytest.mark.integration
@skip_without_real_data()
def test_saved_folder_layout(real, real_saved):
    assert {p.name for p in real_saved.iterdir()} == EXPECTED_FILES
    config = json.loads((real_saved / "config.json").read_text())
    assert config["architecture"] == TINY["target_architecture"]
    assert config["num_classes"] == 5 and config["label_names"] == real.label_names
    assert "num_classes" not in config["model_args"]  # transformers' timm wrapper passes it itself
    assert config["model_args"]["channel_multiplier"] == 0.25 and config["model_args"]["depth_multiplier"] == 0.25
    cfg = config["pretrained_cfg"]
    size, mean, std = TINY["image_size"], tiny_config().image_mean, tiny_config().image_std
    assert cfg["input_size"] == [3, size, size] and cfg["mean"] == mean and cfg["std"] == std
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert set(config["label_descriptions"]) == set(real.label_names)

    weights = load_file(real_saved / "model.safetensors")
    assert state_dict_sha256(weights) == state_dict_sha256(real.model.state_dict()) == real.info["weights_sha256"]
    task_file = json.loads((real_saved / "sgps_task.json").read_text(encoding="utf-8"))
    assert task_file == json.loads(json.dumps(real.info))
    assert [c["name"] for c in task_file["task"]["classes"]] == real.label_names
    assert all(c["description"] and len(c["image_sha256"]) == 1 for c in task_file["task"]["classes"])


@pytest.mark.integration
@pytest.mark.e2e
@skip_without_real_data()
def test_plain_timm_and_transformers_pipeline_agree_with_predict(real, real_saved, real_query_paths):
    expected = real.predict(real_query_paths)
    result = run_python(
        """
        import json, sys
        import timm, torch
        from PIL import Image
        from transformers import pipeline
        folder, paths = sys.argv[1], sys.argv[2:]
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        config = timm.data.resolve_data_config(model=model)
        transform = timm.data.create_transform(**config)
        with torch.no_grad():
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
            timm_probs = model(batch).softmax(-1).tolist()
        classify = pipeline("image-classification", model=folder)
        pipe = [{r["label"]: r["score"] for r in classify(p, top_k=None)} for p in paths]
        print(json.dumps({"labels": model.pretrained_cfg["label_names"], "timm": timm_probs, "pipeline": pipe,
                          "sgps_imported": any(m.startswith("sgps_hf") for m in sys.modules)}))
        """,
        real_saved,
        *real_query_paths,
        env={"HF_HUB_OFFLINE": "1"},
    )
    out = last_json_line(result.stdout)
    assert out["sgps_imported"] is False
    assert out["labels"] == real.label_names
    for row, timm_row, pipe_row in zip(expected, out["timm"], out["pipeline"], strict=False):
        assert set(pipe_row) == set(real.label_names)
        for i, label in enumerate(real.label_names):
            assert timm_row[i] == pytest.approx(row[label], abs=1e-4)
            assert pipe_row[label] == pytest.approx(row[label], abs=1e-4)
    # the comparison is not vacuous: the classifier does not give the same answer for every image
    assert (
        len({max(row, key=row.get) for row in expected}) > 1
        or max(abs(a - b) for a, b in zip(expected[0].values(), expected[-1].values(), strict=False)) > 1e-3
    )


@pytest.mark.integration
@skip_without_real_data()
def test_from_pretrained_round_trip(real, real_saved, real_query_paths):
    loaded = SynthesizedClassifier.from_pretrained(real_saved)
    assert loaded.label_names == real.label_names
    assert loaded.info == json.loads(json.dumps(real.info))
    assert state_dict_sha256(loaded.model.state_dict()) == state_dict_sha256(real.model.state_dict())
    assert not loaded.model.training
    assert torch.equal(loaded.predict_proba(real_query_paths), real.predict_proba(real_query_paths))
    # and a loaded classifier saves the same folder again
    loaded.save_pretrained(real_saved.parent / "again")
    assert (
        load_file(real_saved.parent / "again" / "model.safetensors").keys()
        == load_file(real_saved / "model.safetensors").keys()
    )
    assert (real_saved.parent / "again" / "sgps_task.json").read_text() == (real_saved / "sgps_task.json").read_text()


@pytest.mark.integration
@skip_without_real_data()
def test_evaluate_on_real_images_goes_into_the_saved_files(synth, tmp_path):
    classifier = synth.synthesize(real_task(num_classes=5, shots=1))
    queries = real_queries(names=classifier.label_names, per_class=2)
    metrics = classifier.evaluate(queries)
    assert classifier.info["metrics"]["num_images"] == 10
    classifier.save_pretrained(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "sgps_task.json").read_text())["metrics"] == {**metrics, "num_images": 10}
    assert SynthesizedClassifier.from_pretrained(tmp_path / "c").info["metrics"] == {**metrics, "num_images": 10}
