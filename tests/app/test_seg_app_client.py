"""The segmentation tab end to end over HTTP (gradio_client on 127.0.0.1): synthesize, segment, download, push."""

import socket
import zipfile

import huggingface_hub as hfh
import numpy as np
import pytest
from PIL import Image
from seg_testing import write_task_folder

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tab_url(tiny_synth):
    import gradio as gr

    from sgps_hf.app.segmentation import build_segmentation_tab

    with gr.Blocks(analytics_enabled=False) as demo:
        build_segmentation_tab(tiny_synth)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield url.rstrip("/")
    demo.close()


def test_tab_over_http(tab_url, tmp_path, hub_env):
    from gradio_client import Client, handle_file

    folder = write_task_folder(tmp_path / "task", 3)
    images = sorted((folder / "images").iterdir())
    masks = sorted((folder / "masks" / "lesion").iterdir())
    client = Client(tab_url, verbose=False)
    status, card = client.predict(
        [handle_file(str(p)) for p in images],
        [handle_file(str(p)) for p in masks],
        "blob",
        "bright disc",
        api_name="/seg_synthesize",
    )
    assert "from 3 example(s)" in status and "bright disc" in card
    gallery, outcome = client.predict([handle_file(str(images[0]))], api_name="/seg_predict")
    assert len(gallery) == 1 and "Segmented 1 image" in outcome
    assert "0000.png" in gallery[0]["caption"] and "% blob" in gallery[0]["caption"]
    image = gallery[0]["image"]
    overlay = np.asarray(Image.open(image if isinstance(image, str) else image["path"]))
    assert overlay.shape[:2] == (32, 40)
    archive, message = client.predict(api_name="/seg_download")
    names = {name.split("/", 1)[1] for name in zipfile.ZipFile(archive).namelist()}  # under one top folder
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    repo_id = hub_env.new_repo_id("tab-seg")
    pushed = client.predict(repo_id, hub_env.token, False, api_name="/seg_push")
    assert "Pushed" in pushed and "model.safetensors" in hfh.list_repo_files(repo_id)

    error, _ = client.predict(
        [handle_file(str(images[0]))], [handle_file(str(p)) for p in masks], "blob", "", api_name="/seg_synthesize"
    )
    assert "1 images but 3 masks" in error
