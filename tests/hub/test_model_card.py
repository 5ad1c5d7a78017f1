"""Model cards (sgps_hf/hub/templates/*.j2 via sgps_hf.hub.model_card): valid Hub metadata and everything a reader must
know."""

import re

import pytest
from huggingface_hub import ModelCard
from sgps_testing import (
    noise_image,
    real_data_available,
    real_queries,
    real_task,
    synthetic_task,
    tiny_config,
    tiny_synthesizer,
)

from sgps_hf import ClassSpec, SGPSConfig, TaskSpec
from sgps_hf.hub.model_card import classifier_card, synthesizer_card

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def classifier(synth, tmp_path_factory):
    if real_data_available():
        task = real_task(num_classes=5, shots=1)
    else:  # the card does not depend on the pixels: synthetic images keep the test running without the data
        task = synthetic_task(
            tmp_path_factory.mktemp("card-task"),
            texts=("round pink papule", "dark plaque", "scaly patch"),
            images_per_class=(1, 1, 1),
        )
    return synth.synthesize(task)


def saved_card(classifier, folder):
    classifier.save_pretrained(folder)
    return ModelCard.load(folder / "README.md")


def table_rows(text):
    return [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]


def test_metadata_without_metrics(classifier, tmp_path):
    card = saved_card(classifier, tmp_path / "c")
    data = card.data
    assert data.library_name == "timm"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-classification"
    assert {"image-classification", "timm", "medical-imaging", "sgps-hf", "synthesized"} <= set(data.tags)
    assert data.eval_results is None and "model-index" not in data.to_dict()
    assert "accuracy of this classifier is **unknown**" in card.text


def test_metadata_with_metrics_after_evaluate(synth, tmp_path):
    if real_data_available():
        classifier = synth.synthesize(real_task(num_classes=5, shots=1))
        labelled = {k: [str(p) for p in v] for k, v in real_queries(names=classifier.label_names, per_class=1).items()}
    else:
        task = synthetic_task(tmp_path / "t", texts=("a", "b"), images_per_class=(1, 1))
        classifier = synth.synthesize(task)
        labelled = {c.name: list(c.images) for c in task.classes}
    metrics = classifier.evaluate(labelled)
    card = saved_card(classifier, tmp_path / "c")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) - {"auroc"} == {"accuracy", "macro_f1", "balanced_accuracy", "ece"}  # auroc: if defined
    for name in ("accuracy", "macro_f1"):
        assert results[name].metric_value == pytest.approx(round(metrics[name], 4))
        assert results[name].task_type == "image-classification"
        assert f"n={len(labelled)}" in results[name].dataset_name
    index = card.data.to_dict()["model-index"]
    assert index[0]["results"][0]["metrics"][0]["type"] in ("accuracy", "macro_f1")
    assert f"accuracy **{metrics['accuracy']:.3f}**" in card.text and "unknown" not in card.text


def test_lists_every_class_with_its_clinical_text(classifier, tmp_path):
    card = saved_card(classifier, tmp_path / "c")
    rows = table_rows(card.text)
    assert len(rows) == len(classifier.label_names)
    for index, (row, cls) in enumerate(zip(rows, classifier.info["task"]["classes"], strict=False)):
        assert row.startswith(f"| {index} | `{cls['name']}` | {cls['num_images']} |")
        assert cls["description"] and cls["description"] in row


def test_fingerprints_provenance_and_warning(classifier, tmp_path):
    text = saved_card(classifier, tmp_path / "c").text
    for cls in classifier.info["task"]["classes"]:
        assert cls["image_sha256"]
        for digest in cls["image_sha256"]:
            assert digest[:16] in text
    assert classifier.info["weights_sha256"] in text
    assert f"`{classifier.info['synthesizer']['name_or_path']}`" in text
    assert f"revision `{classifier.info['synthesizer']['revision']}`" in text
    assert "**Not for clinical use without local validation.**" in text
    assert "## Intended use" in text and "## Limitations" in text and "## License" in text
    assert "channel_multiplier=0.25, depth_multiplier=0.25" in text


def test_text_only_and_image_only_classes_and_table_safety(synth):
    task = TaskSpec(
        [
            ClassSpec("text only", "grey | white plaque\nwith scale"),
            ClassSpec("image|only", images=[noise_image(1), noise_image(2)]),
            ClassSpec("both", "dark", [noise_image(3)]),
        ],
        name='derm: "v2" # test',
    )
    classifier = synth.synthesize(task)
    card = classifier_card(classifier)
    reparsed = ModelCard(str(card))  # YAML front matter survives quotes, colons and hashes
    assert reparsed.data.model_name == 'derm: "v2" # test'
    rows = table_rows(card.text)
    assert len(rows) == 3
    for row in rows:  # every row has exactly 4 cells: no pipe from a name or text splits one
        assert len(re.findall(r"(?<!\\)\|", row)) == 5, row
    assert "grey / white plaque with scale" in rows[0]
    assert rows[1].startswith(r"| 1 | `image\|only` |") and "(image-only)" in rows[1]  # GFM: \| is a literal pipe
    assert re.search(r"`text only` \(0\): none \(text only\)", card.text)


def test_repo_id_and_base_model(classifier):
    card = classifier_card(classifier, repo_id="someone/derm-classifier")
    assert 'timm.create_model("hf-hub:someone/derm-classifier", pretrained=True)' in card.text
    assert card.data.model_name == "someone/derm-classifier"
    assert card.data.base_model is None  # a local / unsaved synthesizer is not a Hub model
    info = dict(classifier.info, synthesizer={"name_or_path": "sgps-hf/sgps-lite0-128", "revision": "abc123"})
    hub_made = type(classifier)(classifier.model, classifier.label_names, info)
    assert classifier_card(hub_made).data.base_model == "sgps-hf/sgps-lite0-128"


def test_synthesizer_card_renders():
    config = tiny_config()
    card = synthesizer_card(
        "someone/sgps-tiny", config, training={"episodes": 1200, "meta-train tasks": "derm, pathology"}
    )
    reparsed = ModelCard(str(card))
    assert reparsed.data.library_name == "transformers" and reparsed.data.license == "apache-2.0"
    assert {"sgps-hf", "hypernetwork", "medical-imaging"} <= set(reparsed.data.tags)
    text = card.text
    assert "# SGPS synthesizer: `someone/sgps-tiny`" in text
    assert 'SGPSSynthesizer.from_pretrained("someone/sgps-tiny")' in text
    assert "**tf_efficientnetv2_b0**\n(32 px, channel multiplier 0.25, depth multiplier 0.25)" in text
    assert "- **episodes**: 1200" in text and "Research use only" in text
    assert "every support image also enters under identity, hflip" in text
    assert "attends over the texts of 0 meta-training classes" in text
    assert "FiLM" not in text and "rank-" not in text and "set transformer" not in text  # v1 features are gone
    # an architecture with its own width and depth names no multipliers
    assert "multiplier" not in synthesizer_card("x/lite", SGPSConfig()).text.split("## Usage")[0]
    untrained = synthesizer_card("local/dir", config).text
    assert "has not been meta-trained" in untrained


def test_synthesizer_card_describes_the_class_memory_text_generator():
    text = synthesizer_card("x/memory", tiny_config(text_generator="class_memory", text_memory_size=225)).text
    assert "attends over the texts of 225 meta-training classes" in text
    assert "generator of width" not in text
