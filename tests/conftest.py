import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import hub_server`, package or not

from hub_server import HubServer, running_hub_server  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Local Hugging Face Hub (tests/hub_server.py)
# ---------------------------------------------------------------------------------------------------------------

# Libraries that copy the Hub endpoint / offline flag into module globals at import time.
# module -> function(endpoint, offline) -> {attribute: value}
_LIBRARY_HUB_GLOBALS = {
    "transformers.utils.hub": lambda ep, offline: {"_hf_api": None},  # cached HfApi, rebuilt from constants
    "datasets.config": lambda ep, offline: {
        "HF_ENDPOINT": ep,
        "HUB_DATASETS_URL": ep + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": offline,
        "HF_DATASETS_OFFLINE": offline,
    },
    "evaluate.config": lambda ep, offline: {
        "HF_ENDPOINT": ep,
        "HF_LIST_ENDPOINT": ep + "/api/spaces?filter={type}",
        "HUB_EVALUATE_URL": ep + "/spaces/{path}/resolve/{revision}/{name}",
    },
}


def _clear_hf_filesystem_cache() -> None:
    hffs = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs is not None:
        hffs.HfFileSystem.clear_instance_cache()  # fsspec caches instances, each with its endpoint


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory) -> HubServer:
    """A local Hub API server for the whole session: ``.url``, ``.token``, ``.new_repo_id()``, ``.require_token()``."""
    with running_hub_server(tmp_path_factory.mktemp("local-hub")) as server:
        yield server


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path) -> HubServer:
    """Point huggingface_hub (this process and subprocesses) at ``hub_server``, with a fresh cache per test.

    Sets HF_ENDPOINT / HF_TOKEN / HF_HUB_DISABLE_XET=1 / HF_HUB_CACHE in os.environ, unsets the offline flags, and
    patches the import-time copies of those settings (huggingface_hub.constants, the default ``HfApi`` behind the
    module-level functions, and transformers/datasets/evaluate when already imported). Yields ``hub_server``.
    """
    from huggingface_hub import constants, hf_api

    url, cache = hub_server.url, str(tmp_path / "hf-cache")
    original = (constants.ENDPOINT, constants.HF_HUB_OFFLINE)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # `huggingface_hub.upload_folder` & co. are bound to it

    patched = {mod for mod in _LIBRARY_HUB_GLOBALS if mod in sys.modules}
    for mod in patched:
        for attr, value in _LIBRARY_HUB_GLOBALS[mod](url, False).items():
            monkeypatch.setattr(sys.modules[mod], attr, value, raising=False)
    _clear_hf_filesystem_cache()

    yield hub_server

    # Libraries imported during the test captured the local endpoint: put back what they would have had.
    for mod in set(_LIBRARY_HUB_GLOBALS) - patched:
        if mod in sys.modules:
            for attr, value in _LIBRARY_HUB_GLOBALS[mod](*original).items():
                setattr(sys.modules[mod], attr, value)
    _clear_hf_filesystem_cache()


# ---------------------------------------------------------------------------------------------------------------
# Synthesizer-side tests (tiny models on 2 shared cores)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tiny models on one torch thread: on 2 busy shared cores, a second thread makes them ~10x slower.

    Use with ``pytestmark = pytest.mark.usefixtures("torch_single_thread")``. Subprocesses started with
    ``sgps_testing.run_python`` get the same thread count (bits of synthesized weights depend on it).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation (tests/seg_testing.py): a tiny untrained 32 px synthesizer and a task of synthetic blobs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_synth():
    from seg_testing import tiny_seg_synthesizer

    return tiny_seg_synthesizer(0)


@pytest.fixture(scope="module")
def tiny_task():
    from seg_testing import blob_pair

    from sgps_hf import SegmentationTask

    return SegmentationTask("blob", [blob_pair(i) for i in range(3)], description="bright disc")
