"""The saved segmenter is a plain transformers model: fresh-process load equals predict, locally and via the Hub."""

import json

import huggingface_hub as hfh
import numpy as np
import pytest
from huggingface_hub import ModelCard
from seg_testing import PLAIN_TRANSFORMERS, check_plain, write_query_images
from sgps_testing import last_json_line, run_python

from sgps_hf import SynthesizedSegmenter

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.e2e]


@pytest.fixture(scope="module")
def segmenter(tiny_synth, tiny_task):
    return tiny_synth.synthesize(tiny_task)


@pytest.fixture(scope="module")
def query_files(tmp_path_factory):
    return write_query_images(tmp_path_factory.mktemp("queries"), 50)


def test_saved_folder_loads_with_plain_transformers_in_a_fresh_process(segmenter, query_files, tmp_path):
    folder = segmenter.save_pretrained(tmp_path / "seg")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "sgps_seg_task.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    sidecar = json.loads((folder / "sgps_seg_task.json").read_text())
    assert sidecar["task"]["name"] == "blob" and sidecar["task"]["num_examples"] == 3
    out = last_json_line(run_python(PLAIN_TRANSFORMERS, str(folder), *query_files).stdout)
    check_plain(out, segmenter, query_files)


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
    assert all(
        np.array_equal(a, b) for a, b in zip(loaded.predict(query_files), segmenter.predict(query_files), strict=False)
    )
    out = last_json_line(run_python(PLAIN_TRANSFORMERS, repo_id, *query_files).stdout)
    check_plain(out, segmenter, query_files)
