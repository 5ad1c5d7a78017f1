"""Helpers shared by the synthesizer-side tests (tiny configs, synthetic images, real-data tasks, subprocesses).

Import it from a test module as ``import sgps_testing`` (tests/conftest.py puts tests/ on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module, so a test can call its ``main()`` and helpers in-process
    (a subprocess would spend ~10 s importing the stack again)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_on_small_pools(name: str, subset: dict[str, str], per_class: int, monkeypatch, cache_dir: Path):
    """``scripts/<name>.py`` loaded with its ``build_pools`` cut down to one real task per split (``subset``: split ->
    task) and ``per_class`` images per class, and sgps_hf's caches in ``cache_dir``: a script's plumbing on real
    images in seconds."""
    from sgps_hf.data import build_pools

    module = load_script(name)

    def small_pools(split, image_size):
        pools = build_pools(split, image_size, tasks=[subset[split]])
        for pool in pools:
            pool.images = pool.images[:per_class]
        return pools

    monkeypatch.setattr(module, "build_pools", small_pools)
    monkeypatch.setenv("SGPS_CACHE_DIR", str(cache_dir))
    return module


#: The shared real medical images (``../shared/data`` relative to the project root); override with SGPS_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("SGPS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
DESCRIPTIONS = PROJECT_ROOT / "sgps_hf" / "data" / "descriptions"

#: A synthesizer small enough for unit tests on 2 shared CPU cores (a 0.25x/0.25x EfficientNetV2-B0 body, 32 px).
#: tf_efficientnet_lite0 (the default) takes no multipliers, so the tiny one scales tf_efficientnetv2_b0; its body
#: starts random (``body_init`` only matters to meta-training).
TINY = dict(
    target_architecture="tf_efficientnetv2_b0",
    channel_multiplier=0.25,
    depth_multiplier=0.25,
    image_size=32,
    body_init="none",
    support_views=["identity", "hflip"],  # two views and the body as it is: fast, and what the unit tests expect
    task_batchnorm_images=None,
)


# Autouse wherever a conftest imports it (tests/data, tests/evaluation): those suites build dataset caches.
@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Send the ``datasets`` cache and sgps_hf's array cache to a per-session temporary folder."""
    import datasets.config

    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "datasets")
        patch.setenv("SGPS_CACHE_DIR", str(root / "sgps"))
        yield root


def tiny_config(**overrides):
    from sgps_hf import SGPSConfig

    return SGPSConfig(**{**TINY, **overrides})


def with_random_text_memory(synth, seed: int = 3, entries: int = 5):
    """``synth`` with a random class memory: an untrained synthesizer's memory is empty, so its texts say nothing."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    synth.set_text_memory(
        torch.randn(entries, synth.config.text_embed_dim, generator=generator),
        torch.randn(entries, synth.target.num_features, generator=generator),
    )
    return synth


def tiny_synthesizer(seed: int = 0, **overrides):
    """A freshly initialised (untrained) tiny synthesizer in eval mode; same seed, same weights."""
    import torch

    from sgps_hf import SGPSSynthesizer

    torch.manual_seed(seed)
    return SGPSSynthesizer(tiny_config(**overrides)).eval()


def noise_image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A deterministic random image (different seeds give clearly different images)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    base = rng.integers(0, 256, size=(1, 1, channels))  # a per-image tint, so images differ in colour too
    pixels = (rng.integers(0, 256, size=(size[1], size[0], channels)) // 2 + base // 2).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def write_images(folder: Path, prefix: str, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}-{i}.png"
        noise_image(seed * 100 + i).save(path)
        paths.append(path)
    return paths


def synthetic_task(
    folder: Path,
    texts: Sequence[str | None] = ("round pink papule", "dark irregular plaque", "scaly red patch"),
    images_per_class: Sequence[int] = (2, 2, 2),
    name: str = "synthetic-task",
):
    """A TaskSpec whose class i has ``texts[i]`` (None: no text) and ``images_per_class[i]`` PNG files."""
    from sgps_hf import ClassSpec, TaskSpec

    classes = []
    for i, (text, count) in enumerate(zip(texts, images_per_class, strict=False)):
        images = write_images(folder, f"class{i}", count, seed=i + 1)
        classes.append(ClassSpec(name=f"class_{i}", description=text or "", images=images))
    return TaskSpec(classes=classes, name=name, modality="synthetic noise")


# -- real data ------------------------------------------------------------------------------------------------
REAL_TASK = "derm-smartphone-pad-ufes-20"


def real_data_available(task: str = REAL_TASK) -> bool:
    return (SHARED_DATA / task).is_dir() and (DESCRIPTIONS / f"{task}.json").is_file()


def skip_without_real_data(task: str = REAL_TASK):
    return pytest.mark.skipif(
        not real_data_available(task), reason=f"real data {SHARED_DATA / task} (or its descriptions) not available"
    )


def real_task(task: str = REAL_TASK, num_classes: int = 5, shots: int = 1, offset: int = 0):
    """A task on the shared real images: the first ``num_classes`` classes, ``shots`` images + the clinical text
    each."""
    from sgps_hf import ClassSpec, TaskSpec

    meta = json.loads((DESCRIPTIONS / f"{task}.json").read_text(encoding="utf-8"))
    names = sorted(p.name for p in (SHARED_DATA / task).iterdir() if p.is_dir())[:num_classes]
    classes = []
    for name in names:
        files = sorted((SHARED_DATA / task / name).iterdir())[offset : offset + shots]
        classes.append(ClassSpec(name=name, description=meta["classes"][name], images=files))
    return TaskSpec(classes=classes, name=task, modality=meta.get("modality", ""))


def real_queries(
    task: str = REAL_TASK, names: Sequence[str] = (), per_class: int = 2, offset: int = 10
) -> dict[str, list[Path]]:
    return {name: sorted((SHARED_DATA / task / name).iterdir())[offset : offset + per_class] for name in names}


# -- subprocesses ---------------------------------------------------------------------------------------------
def run_python(
    code: str, *args: str, env: dict | None = None, timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (same venv); fails the test with its stderr when it fails."""
    import torch

    threads = str(torch.get_num_threads())  # synthesized bits depend on the thread count: use this process's
    full_env = {
        **os.environ,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": threads,
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=str(PROJECT_ROOT.parent),
    )
    if check and result.returncode != 0:
        pytest.fail(f"subprocess failed (rc={result.returncode}):\n{result.stderr[-4000:]}")
    return result


def last_json_line(stdout: str):
    """The last line of a subprocess's stdout that parses as JSON (libraries may print progress bars before)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON line in subprocess output:\n{stdout[-2000:]}")


def sigkill_when_paused(code: str, args: Sequence[str], flag: Path, timeout: float = 150) -> None:
    """Run ``code`` in a fresh interpreter, wait until it writes ``flag`` (where it pauses), then SIGKILL it.

    The kill tests use this to interrupt a save at a chosen point, every time, without timing guesses.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        cwd=str(PROJECT_ROOT.parent),
    )
    try:
        deadline = time.monotonic() + timeout
        while not flag.exists():
            if child.poll() is not None:
                pytest.fail(f"child exited before pausing: {child.communicate()[1].decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child never reached the pause point")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
