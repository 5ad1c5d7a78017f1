"""Hub round trips against the local Hub server (tests/hub_server.py): classifier and synthesizer, for real."""

import io
import json

import huggingface_hub as hfh
import pytest
import torch
from huggingface_hub import ModelCard
from sgps_testing import last_json_line, noise_image, run_python, synthetic_task, tiny_synthesizer
from transformers import AutoModel, AutoProcessor

from sgps_hf import CheckpointError, SGPSProcessor, SGPSSynthesizer, SynthesizedClassifier
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.e2e]


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return synthetic_task(
        tmp_path_factory.mktemp("hub-task"),
        texts=("round pink papule", None, "scaly patch"),
        images_per_class=(1, 2, 1),
    )


@pytest.fixture(scope="module")
def classifier(synth, task):
    return synth.synthesize(task)


def test_classifier_push_then_load_with_plain_timm_and_sgps_hf(hub_env, classifier):
    repo_id = hub_env.new_repo_id("derm-classifier")
    url = classifier.push_to_hub(repo_id)
    assert repo_id in url
    assert {"model.safetensors", "config.json", "README.md", "sgps_task.json"} <= set(hfh.list_repo_files(repo_id))
    assert not [f for f in hfh.list_repo_files(repo_id) if f.endswith((".bin", ".pt", ".pth"))]
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "timm" and f'"hf-hub:{repo_id}"' in card.text  # the usage snippet names the repo

    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = classifier.model(x)
    result = run_python(
        """
        import json, sys
        import timm, torch
        model = timm.create_model(f"hf-hub:{sys.argv[1]}", pretrained=True).eval()
        torch.manual_seed(0)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            logits = model(x)
        print(json.dumps({"logits": logits.tolist(), "labels": model.pretrained_cfg["label_names"],
                          "sgps_imported": any(m.startswith("sgps_hf") for m in sys.modules)}))
        """,
        repo_id,
    )
    out = last_json_line(result.stdout)
    assert out["sgps_imported"] is False and out["labels"] == classifier.label_names
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)

    loaded = SynthesizedClassifier.from_pretrained(repo_id)
    assert loaded.label_names == classifier.label_names
    assert loaded.info == json.loads(json.dumps(classifier.info))
    assert state_dict_sha256(loaded.model.state_dict()) == state_dict_sha256(classifier.model.state_dict())
    images = [noise_image(1), noise_image(2)]
    assert torch.equal(loaded.predict_proba(images), classifier.predict_proba(images))


def test_classifier_revisions(hub_env, synth, classifier, tmp_path):
    repo_id = hub_env.new_repo_id("versions")
    classifier.push_to_hub(repo_id)
    first = hfh.model_info(repo_id).sha
    other = synth.synthesize(synthetic_task(tmp_path, texts=("a", "b"), images_per_class=(1, 1)))
    other.push_to_hub(repo_id, commit_message="Second version")  # exist_ok: pushing again updates the repo
    assert hfh.model_info(repo_id).sha != first
    assert SynthesizedClassifier.from_pretrained(repo_id).label_names == other.label_names
    assert SynthesizedClassifier.from_pretrained(repo_id, revision=first).label_names == classifier.label_names


def test_pickle_only_hub_repo_is_refused(hub_env, classifier):
    repo_id = hub_env.new_repo_id("pickle")
    hfh.create_repo(repo_id)
    buffer = io.BytesIO()
    torch.save(classifier.model.state_dict(), buffer)
    hfh.upload_file(path_or_fileobj=buffer.getvalue(), path_in_repo="pytorch_model.bin", repo_id=repo_id)
    hfh.upload_file(
        path_or_fileobj=b'{"architecture": "tf_efficientnetv2_b0"}', path_in_repo="config.json", repo_id=repo_id
    )
    with pytest.raises(CheckpointError, match="pickle files are refused"):
        SynthesizedClassifier.from_pretrained(repo_id)


def test_synthesizer_and_processor_push_and_load_bit_exact(hub_env, synth, task, classifier, tmp_path):
    repo_id = hub_env.new_repo_id("sgps-tiny")
    processor = SGPSProcessor.from_sgps_config(synth.config)
    synth.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    files = set(hfh.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith(".bin")]
    commit = hfh.model_info(repo_id).sha

    reference = state_dict_sha256(synth.state_dict())
    for loaded in (SGPSSynthesizer.from_pretrained(repo_id), AutoModel.from_pretrained(repo_id)):
        assert type(loaded) is SGPSSynthesizer
        assert state_dict_sha256(loaded.state_dict()) == reference

    texts, images = ["round pink papule", "dark plaque"], [noise_image(3), noise_image(4, size=(70, 50))]
    expected = processor(images=images, text=texts)
    for loaded_processor in (SGPSProcessor.from_pretrained(repo_id), AutoProcessor.from_pretrained(repo_id)):
        assert type(loaded_processor) is SGPSProcessor
        out = loaded_processor(images=images, text=texts)
        assert all(torch.equal(out[k], expected[k]) for k in ("pixel_values", "input_ids", "attention_mask"))

    # a classifier synthesized by the Hub copy is bit-identical and records where it came from
    hub_synth = SGPSSynthesizer.from_pretrained(repo_id)
    made = hub_synth.synthesize(task, processor=SGPSProcessor.from_pretrained(repo_id))
    assert state_dict_sha256(made.model.state_dict()) == state_dict_sha256(classifier.model.state_dict())
    assert made.info["synthesizer"] == {"name_or_path": repo_id, "revision": commit}
    from sgps_hf.hub.model_card import classifier_card

    assert classifier_card(made).data.base_model == repo_id
    hub_synth.save_pretrained(tmp_path / "copy")  # the recorded commit is provenance, not configuration
    assert "_commit_hash" not in json.loads((tmp_path / "copy" / "config.json").read_text())
