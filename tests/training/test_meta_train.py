"""End-to-end meta-training through ``scripts/train.py`` on tiny synthetic imagefolders.

Every run is a real subprocess (``accelerate launch`` or ``python scripts/train.py``) of a tiny synthesizer
(about 0.2 M parameters, 32 px) for a dozen steps with one torch thread: start-up (imports, text encoder)
dominates the ~30 s each run takes. One uninterrupted run (``reference_run``) is shared: its artifacts are
checked, its exported synthesizer is loaded back, and the interrupted runs must reproduce its weights bit for
bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sgps_testing
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = PROJECT_ROOT / "scripts" / "train.py"

STEPS = 12
CHECKPOINT_EVERY = 3
KEEP = 2
EVAL_EVERY = 4
LOG_EVERY = 2
LEARNING_RATE = 0.003
WARMUP = 8  # longer than STEPS / 2, so the learning rate still changes across the resume point
CLASSES = ("stripes_h", "stripes_v", "checker", "disc")


# -- data ------------------------------------------------------------------------------------------------------


def _pattern(kind: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Horizontal stripes, vertical stripes, a checkerboard or a disc, in random colours, with noise."""
    y, x = np.mgrid[0:size, 0:size]
    period = int(rng.integers(4, 9))
    mask = [
        (y // period) % 2,
        (x // period) % 2,
        ((x // period) + (y // period)) % 2,
        ((x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2).astype(int),
    ][kind]
    foreground, background = rng.integers(130, 256, 3), rng.integers(0, 110, 3)
    image = np.where(mask[..., None] == 1, foreground, background) + rng.integers(-20, 21, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_pattern_folder(root: Path, name: str, seed: int, per_class: int = 8) -> Path:
    """An imagefolder ``<root>/<name>/<class>/*.png`` of 4 visually distinct synthetic classes."""
    rng = np.random.default_rng(seed)
    for kind, class_name in enumerate(CLASSES):
        folder = root / name / class_name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_pattern(kind, rng)).save(folder / f"{i:02d}.png")
    return root / name


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("synthetic-data")
    return {
        "train": [
            make_pattern_folder(root, "synth-train-a", seed=1),
            make_pattern_folder(root, "synth-train-b", seed=2),
        ],
        "val": make_pattern_folder(root, "synth-val", seed=3),
    }


@pytest.fixture(scope="module")
def train_env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment: private caches, offline, one thread, no user accelerate config."""
    caches = tmp_path_factory.mktemp("train-caches")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ACCELERATE_", "SGPS_"))}
    env.update(
        SGPS_CACHE_DIR=str(caches / "sgps"),
        HF_DATASETS_CACHE=str(caches / "datasets"),
        HF_HOME=str(caches / "hf-home"),  # also where accelerate looks for a default config: none here
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def train_args(output: Path, sources: dict, **overrides) -> list[str]:
    options = {
        "output-dir": str(output),
        "model": json.dumps(sgps_testing.TINY),
        "steps": STEPS,
        "n-way": 3,
        "k-shot": "1 3",
        "q-query": 2,
        "log-every": LOG_EVERY,
        "eval-every": EVAL_EVERY,
        "eval-episodes": 3,
        "checkpoint-every": CHECKPOINT_EVERY,
        "keep-checkpoints": KEEP,
        "schedule": "constant",
        "warmup-steps": WARMUP,
        "learning-rate": LEARNING_RATE,
        "base-learning-rate": 0.001,
        "seed": 7,
        "num-threads": 1,
        **overrides,
    }
    args = ["--train-sources", *map(str, sources["train"]), "--val-sources", str(sources["val"])]
    for key, value in options.items():
        if value is True:
            args.append(f"--{key}")
        elif key == "k-shot":
            args += ["--k-shot", *str(value).split()]
        else:
            args += [f"--{key}", str(value)]
    return args


def accelerate_cmd(num_processes: int = 1) -> list[str]:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes == 1:
        return [
            *accelerate,
            "--num_processes",
            "1",
            "--cpu",
            "--num_cpu_threads_per_process",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    # `--cpu --num_processes 2` would silently start ONE process (accelerate's simple launcher needs mpirun for
    # multi-CPU); torchrun through --multi_gpu with ACCELERATE_USE_CPU gives real CPU DDP (gloo).
    return [
        *accelerate,
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--num_cpu_threads_per_process",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def run_training(
    args: list[str], env: dict, launcher: list[str] | None = None, timeout: float = 300, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(TRAIN_SCRIPT), *args]
    result = subprocess.run(
        command, env={**env, **(extra_env or {})}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"training failed (rc={result.returncode}): {' '.join(command)}\n{result.stderr[-6000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_log(output: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of log.csv, numbers parsed."""
    with (output / "log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [{k: float(v) for k, v in row.items() if v} for row in rows if row["loss"]]
    val = [{k: float(v) for k, v in row.items() if v} for row in rows if row["val_accuracy"]]
    assert len(train) + len(val) == len(rows), "every row is either a training row or a validation row"
    return train, val


def _last_logged_step(output: Path) -> int:
    try:
        lines = (output / "log.csv").read_text().splitlines()
    except FileNotFoundError:
        return -1
    steps = [int(line.split(",")[0]) for line in lines[1:] if line.split(",")[0].isdigit()]
    return max(steps, default=-1)


def checkpoint_steps(output: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
    )


def assert_same_tensors(
    path_a: Path, path_b: Path, ignore: tuple[str, ...] = (), only_in_a: tuple[str, ...] = ()
) -> None:
    """Every tensor of two safetensors files bit-identical (same names, dtypes, shapes and bytes), but ``ignore``
    (and ``only_in_a``, which only the first file holds)."""
    from safetensors.torch import load_file

    a, b = load_file(path_a), load_file(path_b)
    assert sorted(set(a) - set(only_in_a)) == sorted(b) and set(only_in_a) <= set(a)
    different = [
        name
        for name in a
        if name not in ignore + only_in_a
        and (a[name].dtype != b[name].dtype or a[name].shape != b[name].shape or not a[name].equal(b[name]))
    ]
    assert not different, f"{len(different)}/{len(a)} tensors differ, e.g. {different[:5]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sources, train_env) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted STEPS-step run through ``accelerate launch --num_processes 1 --cpu``."""
    output = tmp_path_factory.mktemp("reference") / "run"
    result = run_training(train_args(output, sources), train_env, launcher=accelerate_cmd(1))
    return output, result


# -- one process -----------------------------------------------------------------------------------------------


def test_single_process_run_writes_log_curve_checkpoints_and_exports(reference_run, sources):
    output, result = reference_run
    train, val = read_log(output)
    assert [int(r["step"]) for r in train] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert [int(r["step"]) for r in val] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for row in train:
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert 0 <= row["episode_accuracy"] <= 1 and row["episodes_per_s"] > 0
    assert all(0 <= r["val_accuracy"] <= 1 for r in val)
    # constant schedule with linear warm-up over WARMUP optimizer steps (the logged lr is the generators' group)
    assert [r["lr"] for r in train] == pytest.approx([LEARNING_RATE * min(1.0, r["step"] / WARMUP) for r in train])

    assert (output / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(output / "learning_curve.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200

    assert checkpoint_steps(output) == [STEPS - CHECKPOINT_EVERY, STEPS]  # rotated down to keep_checkpoints
    assert not list(output.glob(".*")), "no staging folders left behind"
    newest = output / f"checkpoint-{STEPS}"
    for name in (
        "model.safetensors",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "custom_checkpoint_0.pkl",
    ):
        assert (newest / name).is_file(), name

    saved = json.loads((output / "training_config.json").read_text())
    assert saved["steps"] == STEPS and saved["train_sources"] == [str(p) for p in sources["train"]]

    best_val = max(r["val_accuracy"] for r in val)
    for name in ("best", "final"):
        folder = output / name
        for file in (
            "model.safetensors",
            "config.json",
            "processor_config.json",
            "tokenizer.json",
            "README.md",
            "training_config.json",
        ):
            assert (folder / file).is_file(), f"{name}/{file}"
        assert json.loads((folder / "config.json").read_text())["model_type"] == "sgps"
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and "library_name: transformers" in card
        for source in sources["train"]:
            assert str(source) in card, "the card names the training data"
        assert "meta-val classes**: 4" in card and "meta-train classes**: 8" in card
        assert f"best meta-val accuracy**: {best_val:.4f}" in card
        assert "validation curve" in card
        assert f"# SGPS synthesizer: `{output.name}`" in card, "the card is named after the run, not the export folder"
    final_card = (output / "final" / "README.md").read_text()
    assert f"{STEPS} optimizer steps" in final_card
    assert ", ".join(f"{int(r['step'])}: {r['val_accuracy']:.3f}" for r in val) in final_card
    # the exported synthesizer is the state of the last step, with the class memory built from the meta-train classes
    # and the ridge, the text prior's strength and the temperatures calibrated on meta-val
    calibrated = (
        "ridge_coefficients",
        "prior_coefficients",
        "log_logit_scale",
        "log_zero_shot_scale",
        "log_text_temperature",
    )
    memory = ("text_memory_keys", "text_memory_features")
    assert_same_tensors(
        output / "final" / "model.safetensors", newest / "model.safetensors", ignore=calibrated, only_in_a=memory
    )
    from safetensors.torch import load_file

    match = re.search(r"ridge multiplier at 1 / 5 shots \(chosen on meta-val\)\*\*: (\{.*\})", final_card)
    assert match, "the card records the calibrated ridge multipliers"
    trained_ridge = load_file(newest / "model.safetensors")["ridge_coefficients"]
    exported_ridge = load_file(output / "final" / "model.safetensors")["ridge_coefficients"]
    for shots, multiplier in json.loads(match.group(1)).items():
        log_ridge = lambda c, shots=shots: (c[0] + c[1] * math.log1p(int(shots))).item()  # noqa: E731
        assert math.exp(log_ridge(exported_ridge) - log_ridge(trained_ridge)) == pytest.approx(multiplier, rel=1e-4)

    match = re.search(r"logit-scale multiplier \(temperature, fitted on meta-val\)\*\*: ([0-9.]+)", final_card)
    assert match, "the card records the fitted temperature"
    trained = load_file(newest / "model.safetensors")["log_logit_scale"].item()
    exported = load_file(output / "final" / "model.safetensors")["log_logit_scale"].item()
    assert math.exp(exported - trained) == pytest.approx(float(match.group(1)), rel=1e-3)

    match = re.search(r"text prior strength \(chosen on meta-val\)\*\*: (\{.*\})", final_card)
    assert match, "the card records the calibrated prior strength"
    chosen = json.loads(match.group(1))
    assert set(chosen) == {"1", "5"}
    low, slope = load_file(output / "final" / "model.safetensors")["prior_coefficients"].tolist()
    for shots, strength in chosen.items():
        assert math.exp(low + slope * math.log(int(shots))) == pytest.approx(max(strength, 1e-6), rel=1e-5)
    assert f"Exported synthesizer: {output / 'final'}" in result.stdout


def test_exported_synthesizer_loads_and_synthesizes(reference_run, sources, tmp_path):
    import torch

    from sgps_hf import ClassSpec, SGPSProcessor, SGPSSynthesizer, TaskSpec

    final = reference_run[0] / "final"
    synthesizer, info = SGPSSynthesizer.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = SGPSProcessor.from_pretrained(final)
    assert processor.image_processor.image_size == sgps_testing.TINY["image_size"]

    val = sources["val"]
    classes = [
        ClassSpec(
            name="stripes", description="horizontal bands", images=sorted((val / "stripes_h").glob("*.png"))[:2]
        ),
        ClassSpec(name="checker", description="a checkerboard", images=sorted((val / "checker").glob("*.png"))[:2]),
        ClassSpec(name="disc", description="a bright round disc", images=[]),  # text-only class
    ]
    task = TaskSpec(classes=classes, name="tiny-task")
    classifier = synthesizer.synthesize(task, processor=processor)
    again = synthesizer.synthesize(task, processor=processor)
    assert classifier.label_names == ["stripes", "checker", "disc"]
    weights = classifier.model.state_dict()
    assert weights["classifier.weight"].shape[0] == 3
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert all(torch.equal(t, again.model.state_dict()[k]) for k, t in weights.items()), "synthesis is deterministic"
    probabilities = classifier.predict_proba(sorted((val / "disc").glob("*.png"))[:3])
    assert probabilities.shape == (3, 3) and torch.allclose(probabilities.sum(-1), torch.ones(3))

    saved = classifier.save_pretrained(tmp_path / "classifier")
    import timm

    model = timm.create_model(f"local-dir:{saved}", pretrained=True).eval()
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in weights.items())


def test_a_class_memory_run_builds_the_memory_from_the_meta_train_classes(sources, train_env, tmp_path):
    import torch
    from safetensors.torch import load_file

    from sgps_hf import SGPSSynthesizer

    output = tmp_path / "memory"
    model = {**sgps_testing.TINY, "text_generator": "class_memory"}
    run_training(train_args(output, sources, model=json.dumps(model), steps=4, **{"image-dropout": 0.0}), train_env)
    checkpoint = output / "checkpoint-4" / "model.safetensors"
    assert not any(key.startswith("text_memory") for key in load_file(checkpoint)), "no memory while meta-training"
    for name in ("best", "final"):
        config = json.loads((output / name / "config.json").read_text())
        assert (
            config["text_generator"] == "class_memory" and config["text_memory_size"] == 8
        )  # the 8 meta-train classes
        synthesizer, info = SGPSSynthesizer.from_pretrained(output / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert synthesizer.text_memory_keys.norm(dim=-1).allclose(torch.ones(8))
        card = (output / name / "README.md").read_text()
        assert re.search(
            r"text generator\*\*: class memory \(8 meta-train classes, attention temperature [0-9.]+ chosen on "
            r"meta-val\)",
            card,
        )


# -- resume ------------------------------------------------------------------------------------------------------


def test_resume_from_the_middle_is_bit_exact(reference_run, sources, train_env, tmp_path):
    """STEPS/2 steps, then ``--resume --steps STEPS`` in the same folder == STEPS uninterrupted steps, bit for bit.

    The runs use a constant schedule with a warm-up of WARMUP > STEPS/2 steps: the learning rate does not depend
    on ``steps`` (a cosine schedule's horizon is ``steps``, so a STEPS/2-step run legitimately decays faster),
    but it does change across the resume point, so a lost scheduler state would show.
    """
    reference, _ = reference_run
    output = tmp_path / "run"
    half = STEPS // 2
    run_training(train_args(output, sources, steps=half), train_env)
    assert checkpoint_steps(output)[-1] == half
    resumed = run_training(train_args(output, sources, steps=STEPS, resume=True), train_env)
    assert f"Resumed from {output / f'checkpoint-{half}'} at step {half}." in resumed.stdout

    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")
    # The log after the resume point matches the reference (windows are reset at step `half` in both runs).
    columns = ("step", "loss", "episode_accuracy", "lr")
    ref_train, ref_val = read_log(reference)
    train, val = read_log(output)
    assert [[r[c] for c in columns] for r in train if r["step"] > half] == [
        [r[c] for c in columns] for r in ref_train if r["step"] > half
    ]
    assert [r for r in val if r["step"] > half] == [r for r in ref_val if r["step"] > half]
    assert [int(r["step"]) for r in train] == sorted({int(r["step"]) for r in train}), "no duplicated rows"
    assert json.loads((output / "final" / "training_config.json").read_text())["steps"] == STEPS
    assert f"{STEPS} optimizer steps" in (output / "final" / "README.md").read_text()


@pytest.mark.e2e
def test_sigkill_then_resume_continues_from_the_newest_complete_checkpoint(
    reference_run, sources, train_env, tmp_path
):
    reference, _ = reference_run
    output = tmp_path / "run"
    every_step = {"log-every": 1}
    command = [sys.executable, str(TRAIN_SCRIPT), *train_args(output, sources, **every_step)]
    log_file = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, env=train_env, cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # Kill once a checkpoint exists and the run has gone past it (so that some steps are lost and redone).
        deadline = time.monotonic() + 240
        while not (checkpoint_steps(output) and _last_logged_step(output) > checkpoint_steps(output)[-1]):
            assert process.poll() is None, (
                f"training ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        first_seen = checkpoint_steps(output)[-1]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()
    assert first_seen < STEPS, "killed before it finished"

    newest = checkpoint_steps(output)[-1]
    assert newest >= first_seen
    killed_progress = int(read_log(output)[0][-1]["step"])  # log_every=1: the last step the killed run finished
    assert newest <= killed_progress <= newest + CHECKPOINT_EVERY, "at most one checkpoint interval is lost"
    # A save interrupted by the kill leaves a staging folder: simulate one for the next, never-finished checkpoint.
    partial = output / f".checkpoint-{newest + CHECKPOINT_EVERY}.partial"
    if not partial.exists():
        shutil.copytree(output / f"checkpoint-{newest}", partial)
        (partial / "model.safetensors").write_bytes(b"truncated")
    (output / f".checkpoint-{STEPS + 1}.partial").mkdir()  # e.g. left by a run with another checkpoint interval

    resumed = run_training(train_args(output, sources, resume=True, **every_step), train_env)
    assert f"Resumed from {output / f'checkpoint-{newest}'} at step {newest}." in resumed.stdout
    assert not list(output.glob(".checkpoint-*")), "the interrupted save is cleaned up"
    assert checkpoint_steps(output) == [STEPS - CHECKPOINT_EVERY, STEPS]
    train, val = read_log(output)
    assert [int(r["step"]) for r in train] == list(range(1, STEPS + 1)), (
        "rows after the checkpoint are redone, not duplicated"
    )
    assert [int(r["step"]) for r in val] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    # The crash cost time, not correctness: same weights as the uninterrupted run.
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")


# Runs scripts/train.py with Accelerator.save_state patched to pause once the staging folder of checkpoint PAUSE_AT is
# fully written (before it is renamed into place): the kill lands inside a checkpoint save, every time.
PAUSE_IN_SAVE = """
import runpy, sys, time
from pathlib import Path
import accelerate

flag, pause_at, script, *args = sys.argv[1:]
original = accelerate.Accelerator.save_state

def save_state(self, output_dir=None, **kwargs):
    result = original(self, output_dir, **kwargs)
    if Path(output_dir).name == f".checkpoint-{pause_at}.partial":
        Path(flag).write_text("paused")
        time.sleep(300)
    return result

accelerate.Accelerator.save_state = save_state
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.e2e
def test_sigkill_inside_a_checkpoint_save_then_resume(reference_run, sources, train_env, tmp_path):
    """Killed while writing checkpoint 2*CHECKPOINT_EVERY: the previous checkpoint is intact, the resume loses at most
    one checkpoint interval, cleans up the half-written checkpoint and still ends bit-identical to the reference."""
    from safetensors.torch import load_file

    reference, _ = reference_run
    output, flag, pause_at = tmp_path / "run", tmp_path / "paused", 2 * CHECKPOINT_EVERY
    command = [
        sys.executable,
        "-c",
        PAUSE_IN_SAVE,
        str(flag),
        str(pause_at),
        str(TRAIN_SCRIPT),
        *train_args(output, sources, **{"log-every": 1}),
    ]
    log_file = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, env=train_env, cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert process.poll() is None, (
                f"training ended before pausing:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "training never reached the checkpoint save"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()

    assert (output / f".checkpoint-{pause_at}.partial" / "model.safetensors").is_file(), "killed inside the save"
    assert checkpoint_steps(output) == [CHECKPOINT_EVERY], "the interrupted checkpoint never appears as complete"
    previous = output / f"checkpoint-{CHECKPOINT_EVERY}"
    assert all(t.isfinite().all() for t in load_file(previous / "model.safetensors").values() if t.is_floating_point())
    assert int(read_log(output)[0][-1]["step"]) - CHECKPOINT_EVERY <= CHECKPOINT_EVERY, "at most one interval is lost"

    resumed = run_training(train_args(output, sources, resume=True, **{"log-every": 1}), train_env)
    assert f"Resumed from {previous} at step {CHECKPOINT_EVERY}." in resumed.stdout
    assert not list(output.glob(".checkpoint-*")), "the half-written checkpoint is removed"
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")


# -- DDP -------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_process_ddp_run(sources, train_env, tmp_path):
    """Two CPU processes (gloo): disjoint episodes per rank, one log, per-rank RNG states, and a schedule that is
    stepped once per optimizer step (not once per process)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    output = tmp_path / "run"
    steps, warmup = 6, 2
    args = train_args(output, sources, steps=steps, schedule="cosine", **{"warmup-steps": warmup, "max-minutes": 30})
    result = run_training(args, train_env, launcher=accelerate_cmd(2), extra_env={"ACCELERATE_USE_CPU": "true"})

    for rank in (0, 1):
        assert (output / f"checkpoint-{steps}" / f"random_states_{rank}.pkl").is_file(), "two processes really ran"
    train, val = read_log(output)
    assert [int(r["step"]) for r in train] == list(range(LOG_EVERY, steps + 1, LOG_EVERY)), (
        "only the main process logs"
    )
    assert [int(r["step"]) for r in val] == [EVAL_EVERY, steps]

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    expected = {}
    for step in range(1, steps + 1):
        optimizer.step()
        schedule.step()
        expected[step] = schedule.get_last_lr()[0]
    assert [r["lr"] for r in train] == pytest.approx([expected[int(r["step"])] for r in train], abs=1e-12)
    assert train[-1]["lr"] == pytest.approx(0.0, abs=1e-12)

    assert checkpoint_steps(output) == [3, 6]
    for name in ("best", "final"):
        assert (output / name / "model.safetensors").is_file() and (output / name / "README.md").is_file()
    assert f"{steps} optimizer steps" in (output / "final" / "README.md").read_text()
    assert "Exported synthesizer" in result.stdout

    from sgps_hf import SGPSSynthesizer

    synthesizer = SGPSSynthesizer.from_pretrained(output / "final")
    assert all(torch.isfinite(p).all() for p in synthesizer.parameters())
