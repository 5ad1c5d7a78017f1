"""The saved segmenter is a plain transformers model: fresh-process load equals predict, locally and via the Hub."""

import json

import huggingface_hub as hfh
import numpy as np
import pytest
from huggingface_hub import ModelCard

from seg_testing import blob_pair
from sgps_testing import last_json_line, run_python
from sgps_hf import SynthesizedSegmenter

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.e2e]

PLAIN_TRANSFORMERS = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
source, images = sys.argv[1], sys.argv[2:]
model = AutoModelForSemanticSegmentation.from_pretrained(source).eval()
processor = AutoImageProcessor.from_pretrained(source)
segment = pipeline("image-segmentation", model=source)
auto, piped = [], []
for path in images:
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    seg = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
    auto.append((seg.numpy() == 1).astype(int).tolist())
    found = {r["label"]: np.asarray(r["mask"]) > 127 for r in segment(image)}
    piped.append(found.get("foreground", np.zeros((image.height, image.width), bool)).astype(int).tolist())
print(json.dumps({"auto": auto, "pipeline": piped, "labels": model.config.id2label,
                  "use_pretrained_backbone": model.config.backbone_config.to_dict().get("use_pretrained_backbone"),
                  "sgps_imported": any(m.startswith("sgps_hf") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def segmenter(tiny_synth, tiny_task):
    return tiny_synth.synthesize(tiny_task)


@pytest.fixture(scope="module")
def query_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("queries")
    paths = []
    for i, size in enumerate([(40, 32), (23, 61)]):
        path = folder / f"q{i}.png"
        blob_pair(50 + i, size)[0].save(path)
        paths.append(str(path))
    return paths


def _check_plain(out, segmenter, query_files):
    assert out["sgps_imported"] is False
    assert out["labels"] == {"0": "background", "1": "foreground"} and out["use_pretrained_backbone"] is False
    expected = segmenter.predict(query_files)
    assert any(m.any() for m in expected)  # the comparison is not between two empty masks
    for mine, auto, piped in zip(expected, out["auto"], out["pipeline"]):
        np.testing.assert_array_equal(np.asarray(auto, bool), mine)
        np.testing.assert_array_equal(np.asarray(piped, bool), mine)


def test_saved_folder_loads_with_plain_transformers_in_a_fresh_process(segmenter, query_files, tmp_path):
    folder = segmenter.save_pretrained(tmp_path / "seg")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "sgps_seg_task.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    sidecar = json.loads((folder / "sgps_seg_task.json").read_text())
    assert sidecar["task"]["name"] == "blob" and sidecar["task"]["num_examples"] == 3
    out = last_json_line(run_python(PLAIN_TRANSFORMERS, str(folder), *query_files).stdout)
    _check_plain(out, segmenter, query_files)


def test_hub_round_trip(hub_env, segmenter, query_files):
    repo_id = hub_env.new_repo_id("blob-segmenter")
    url = segmenter.push_to_hub(repo_id)
    assert repo_id in url
    files = set(hfh.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "sgps_seg_task.json"} <= files
    card = ModelCard.load(repo_id)
    assert card.data.pipeline_tag == "image-segmentation" and f'"{repo_id}"' in card.text
    loaded = SynthesizedSegmenter.from_pretrained(repo_id)
    assert loaded.info["weights_sha256"] == segmenter.info["weights_sha256"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.predict(query_files), segmenter.predict(query_files)))
    out = last_json_line(run_python(PLAIN_TRANSFORMERS, repo_id, *query_files).stdout)
    _check_plain(out, segmenter, query_files)
