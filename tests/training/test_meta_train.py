"""End-to-end training through ``scripts/train.py`` on tiny synthetic imagefolders.

Every run is a real subprocess (``accelerate launch`` or ``python scripts/train.py``) of a tiny synthesizer
(about 0.2 M parameters, 32 px): EPOCHS epochs of body adaptation on a few dozen draws, then feature caching,
calibration on meta-val episodes and the export, with one torch thread; start-up (imports, text encoder) dominates
the ~30 s each run takes. One uninterrupted run (``reference_run``) is shared: its artifacts are checked, its exported
synthesizer is loaded back, and the interrupted runs must reproduce its weights bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
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

EPOCHS = 3
SAMPLES = 24  # draws per epoch: 4 batches of BATCH
BATCH = 6
KEEP = 2
LEARNING_RATE = 0.003
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
        "pretrain-epochs": EPOCHS,
        "pretrain-samples-per-epoch": SAMPLES,
        "pretrain-batch-size": BATCH,
        "pretrain-learning-rate": LEARNING_RATE,
        "body-interpolation": 0.5,
        "n-way": 3,
        "k-shot": "1 3",
        "q-query": 2,
        "eval-episodes": 4,
        "keep-checkpoints": KEEP,
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


def read_log(output: Path) -> list[dict]:
    """The rows of log.csv (one per adaptation epoch), numbers parsed."""
    with (output / "log.csv").open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


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
    """One uninterrupted run through ``accelerate launch --num_processes 1 --cpu``."""
    output = tmp_path_factory.mktemp("reference") / "run"
    result = run_training(train_args(output, sources), train_env, launcher=accelerate_cmd(1))
    return output, result


# -- one process -----------------------------------------------------------------------------------------------


def test_single_process_run_writes_log_curve_checkpoints_and_exports(reference_run, sources):
    import torch
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from sgps_hf import SGPSSynthesizer
    from sgps_hf.models.sgps.configuration_sgps import SGPSConfig

    output, result = reference_run
    rows = read_log(output)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        assert math.isfinite(row["loss"]) and row["loss"] > 0 and row["seconds"] >= 0
        assert 0 <= row["accuracy"] <= 1 and 0 < row["lr"] <= LEARNING_RATE
    assert rows[-1]["lr"] < rows[0]["lr"], "the one-cycle schedule anneals"
    assert "adapting body epoch 3" in result.stdout

    assert (output / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(output / "learning_curve.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200

    assert checkpoint_steps(output) == [EPOCHS - 1, EPOCHS]  # one per epoch, rotated down to keep_checkpoints
    assert not list(output.glob(".*")), "no staging folders left behind"
    newest = output / f"checkpoint-{EPOCHS}"
    for name in (
        "model.safetensors",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "custom_checkpoint_0.pkl",
    ):
        assert (newest / name).is_file(), name
    trainer_state = torch.load(newest / "custom_checkpoint_0.pkl", weights_only=True)
    assert trainer_state["epoch"] == EPOCHS and trainer_state["generator"].dtype == torch.uint8
    assert [h["accuracy"] for h in trainer_state["pretrain_history"]] == [r["accuracy"] for r in rows]

    saved = json.loads((output / "training_config.json").read_text())
    assert saved["pretrain_epochs"] == EPOCHS and saved["train_sources"] == [str(p) for p in sources["train"]]
    assert "steps" not in saved and "learning_rate" not in saved

    final = output / "final"
    assert not (output / "best").exists(), "one export: final"
    for file in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "README.md"):
        assert (final / file).is_file(), file
    assert json.loads((final / "training_config.json").read_text()) == saved
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "sgps" and config["text_memory_size"] == 8  # the 8 meta-train classes
    card = (final / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for source in sources["train"]:
        assert str(source) in card, "the card names the training data"
    assert "meta-val classes**: 4" in card and "meta-train classes**: 8" in card
    assert f"# SGPS synthesizer: `{output.name}`" in card, "the card is named after the run, not the export folder"
    assert f"adapted {EPOCHS} epoch(s) x {SAMPLES} task- and class-balanced" in card
    assert f"last train accuracy {rows[-1]['accuracy']:.3f}), WiSE-FT weight 0.5; then frozen" in card
    assert ", ".join(f"{int(r['epoch'])}: {r['loss']:.3f} / {r['accuracy']:.3f}" for r in rows) in card
    assert "not trained: fitted on 4 meta-val episodes (3-way, 1-3-shot, 2 queries/class) by calibration" in card
    assert re.search(r"ridge at 1 / 5 shots \(chosen on meta-val\)\*\*: \{.+\}", card)
    assert re.search(r"text prior strength at 1 / 5 shots \(chosen on meta-val\)\*\*: \{.+\}", card)
    assert re.search(r"class memory \(8 meta-train classes, attention temperature [0-9.]+ chosen on meta-val\)", card)
    assert "optimizer steps" not in card and "best meta-val" not in card and "validation curve" not in card
    assert f"Exported synthesizer: {final}" in result.stdout

    # The exported body is the WiSE-FT mix of the newest checkpoint's adapted body and the body the run started from.
    set_seed(7)
    start = SGPSSynthesizer(SGPSConfig(**sgps_testing.TINY)).target.state_dict()
    adapted = {k[2:]: v for k, v in load_file(newest / "model.safetensors").items() if k.startswith("0.")}
    exported = {
        k[len("target.") :]: v for k, v in load_file(final / "model.safetensors").items() if k.startswith("target.")
    }
    assert sorted(adapted) == sorted(exported) == sorted(start)
    for name, tensor in exported.items():
        expected = torch.lerp(start[name], adapted[name], 0.5) if tensor.is_floating_point() else adapted[name]
        assert torch.equal(tensor, expected), name
    assert any(not torch.equal(adapted[k], start[k]) for k in start if start[k].is_floating_point()), "adapted"


def test_exported_synthesizer_loads_and_synthesizes(reference_run, sources, tmp_path):
    import torch

    from sgps_hf import ClassSpec, SGPSProcessor, SGPSSynthesizer, TaskSpec

    final = reference_run[0] / "final"
    synthesizer, info = SGPSSynthesizer.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert synthesizer.text_memory_keys.norm(dim=-1).allclose(torch.ones(8))
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


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    from sgps_hf.errors import OutputPathError
    from sgps_hf.training import TrainingConfig, train

    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(OutputPathError, match="already holds checkpoints.*--resume"):
        train(TrainingConfig(output_dir=str(tmp_path), pretrain_epochs=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"], "nothing written"


# -- resume ------------------------------------------------------------------------------------------------------

# Runs scripts/train.py with a pause (the flag file is written, then it sleeps until killed) at WHERE:
# "before-save:<folder>" / "inside-save:<folder>": as Accelerator.save_state starts / has fully written the staging
# folder whose path ends with <folder> (before it is renamed into place); "calibration": instead of calibrating.
PAUSE = """
import runpy, sys, time
from pathlib import Path
import accelerate

flag, where, script, *args = sys.argv[1:]

def pause(*_, **__):
    Path(flag).write_text("paused")
    time.sleep(300)

if where == "calibration":
    import sgps_hf.training.meta_train as meta_train
    meta_train.calibrate = pause
else:
    when, folder = where.split(":")
    original = accelerate.Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        if when == "before-save" and Path(output_dir).as_posix().endswith(folder):
            pause()
        result = original(self, output_dir, **kwargs)
        if when == "inside-save" and Path(output_dir).as_posix().endswith(folder):
            pause()
        return result

    accelerate.Accelerator.save_state = save_state
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def run_and_kill_at(
    where: str, output: Path, sources: dict, env: dict, tmp_path: Path, args: list[str] | None = None
) -> None:
    """Start a run (``args``, default ``train_args``) that pauses at ``where`` (see PAUSE) and SIGKILL it there."""
    flag = tmp_path / "paused"
    args = args if args is not None else train_args(output, sources)
    command = [sys.executable, "-c", PAUSE, str(flag), where, str(TRAIN_SCRIPT), *args]
    log_file = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert process.poll() is None, (
                f"training ended before pausing:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"training never reached {where}"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()


def assert_same_log(output: Path, reference: Path) -> None:
    columns = ("epoch", "loss", "accuracy", "lr")
    assert [[r[c] for c in columns] for r in read_log(output)] == [
        [r[c] for c in columns] for r in read_log(reference)
    ]


@pytest.mark.e2e
def test_sigkill_mid_adaptation_then_resume_is_bit_identical(reference_run, sources, train_env, tmp_path):
    """Killed after epoch EPOCHS was logged but before its checkpoint: the resume redoes that epoch from the newest
    checkpoint (model, optimizer, schedule, RNG states, sampling generator) and ends bit-identical to the reference."""
    reference, _ = reference_run
    output = tmp_path / "run"
    run_and_kill_at(f"before-save:.checkpoint-{EPOCHS}.partial", output, sources, train_env, tmp_path)
    assert checkpoint_steps(output) == [EPOCHS - 2, EPOCHS - 1]
    assert [int(r["epoch"]) for r in read_log(output)] == list(range(1, EPOCHS + 1)), "the lost epoch was logged"
    (output / ".checkpoint-7.partial").mkdir()  # e.g. left by a killed save of another run: never a checkpoint

    resumed = run_training(train_args(output, sources, resume=True), train_env)
    assert f"Resumed from {output / f'checkpoint-{EPOCHS - 1}'} at epoch {EPOCHS - 1}." in resumed.stdout
    assert f"adapting body epoch {EPOCHS - 1}:" not in resumed.stdout and f"epoch {EPOCHS}:" in resumed.stdout
    assert not list(output.glob(".checkpoint-*")), "staging folders are cleaned up"
    assert checkpoint_steps(output) == [EPOCHS - 1, EPOCHS]
    assert_same_log(output, reference)  # the lost epoch's row is redone, not duplicated, and the same
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")
    assert_same_tensors(
        output / f"checkpoint-{EPOCHS}" / "model.safetensors", reference / f"checkpoint-{EPOCHS}" / "model.safetensors"
    )


@pytest.mark.e2e
def test_sigkill_inside_a_checkpoint_save_then_resume(reference_run, sources, train_env, tmp_path):
    """Killed while writing checkpoint 2: checkpoint 1 is intact, the half-written one never counts, and the resume
    cleans it up and still ends bit-identical to the reference."""
    from safetensors.torch import load_file

    reference, _ = reference_run
    output = tmp_path / "run"
    run_and_kill_at("inside-save:.checkpoint-2.partial", output, sources, train_env, tmp_path)
    assert (output / ".checkpoint-2.partial" / "model.safetensors").is_file(), "killed inside the save"
    assert checkpoint_steps(output) == [1], "the interrupted checkpoint never appears as complete"
    assert all(
        t.isfinite().all()
        for t in load_file(output / "checkpoint-1" / "model.safetensors").values()
        if t.is_floating_point()
    )

    resumed = run_training(train_args(output, sources, resume=True), train_env)
    assert f"Resumed from {output / 'checkpoint-1'} at epoch 1." in resumed.stdout
    assert not list(output.glob(".checkpoint-*")), "the half-written checkpoint is removed"
    assert_same_log(output, reference)
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")


@pytest.mark.e2e
def test_sigkill_during_calibration_resumes_without_adapting_again(reference_run, sources, train_env, tmp_path):
    reference, _ = reference_run
    output = tmp_path / "run"
    run_and_kill_at("calibration", output, sources, train_env, tmp_path)
    assert checkpoint_steps(output) == [EPOCHS - 1, EPOCHS] and not (output / "final").exists()

    resumed = run_training(train_args(output, sources, resume=True), train_env)
    assert f"Resumed from {output / f'checkpoint-{EPOCHS}'} at epoch {EPOCHS}." in resumed.stdout
    assert "adapting body epoch" not in resumed.stdout, "the body is not adapted again"
    assert_same_log(output, reference)
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")
    card = (output / "final" / "README.md").read_text()
    assert f"adapted {EPOCHS} epoch(s)" in card, "the restored history describes the adaptation"


EPISODIC = {"episodic-epochs": 2, "episodic-episodes-per-epoch": 3, "episodic-learning-rate": 0.003}


@pytest.mark.e2e
def test_the_episodic_stage_runs_checkpoints_and_resumes_bit_identically(reference_run, sources, train_env, tmp_path):
    """With ``episodic_epochs``, the WiSE-mixed body is then adapted on meta-train episodes through the closed-form
    head: its own checkpoints and log under episodic/, its history on the card; killed before its second checkpoint,
    the resume redoes only that epoch and ends bit-identical to an uninterrupted run."""
    plain, _ = reference_run
    reference = tmp_path / "reference"
    run_training(train_args(reference, sources, **EPISODIC), train_env)
    rows = read_log(reference / "episodic")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows)
    assert checkpoint_steps(reference / "episodic") == [1, 2] and checkpoint_steps(reference) == [EPOCHS - 1, EPOCHS]
    assert_same_log(reference, plain)  # the supervised stage is the same as without the episodic one
    with pytest.raises(AssertionError, match="tensors differ"):  # the episodic stage moved the exported body
        assert_same_tensors(reference / "final" / "model.safetensors", plain / "final" / "model.safetensors")
    card = (reference / "final" / "README.md").read_text()
    assert "adapted 2 epoch(s) x 3 meta-train episodes (3-way, 1-3-shot, 2 queries/class, augmented)" in card
    assert ", ".join(f"{int(r['epoch'])}: {r['loss']:.3f} / {r['accuracy']:.3f}" for r in rows) in card

    output = tmp_path / "run"
    args = train_args(output, sources, **EPISODIC)
    run_and_kill_at("before-save:episodic/.checkpoint-2.partial", output, sources, train_env, tmp_path, args)
    assert checkpoint_steps(output / "episodic") == [1] and not (output / "final").exists()
    resumed = run_training(train_args(output, sources, resume=True, **EPISODIC), train_env)
    assert f"Resumed from {output / 'episodic' / 'checkpoint-1'} at epoch 1." in resumed.stdout
    assert "episodic adaptation epoch 1:" not in resumed.stdout and "episodic adaptation epoch 2:" in resumed.stdout
    assert_same_log(output / "episodic", reference / "episodic")
    assert_same_tensors(output / "final" / "model.safetensors", reference / "final" / "model.safetensors")


# -- DDP -------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_process_ddp_run(sources, train_env, tmp_path):
    """Two CPU processes (gloo) adapt the body on disjoint batches, then on disjoint episodes; one log per stage,
    per-rank RNG states; the main process calibrates and exports."""
    import torch

    from sgps_hf import SGPSSynthesizer

    output = tmp_path / "run"
    result = run_training(
        train_args(output, sources, **EPISODIC),
        train_env,
        launcher=accelerate_cmd(2),
        extra_env={"ACCELERATE_USE_CPU": "true"},
    )
    for rank in (0, 1):
        assert (output / f"checkpoint-{EPOCHS}" / f"random_states_{rank}.pkl").is_file(), "two processes really ran"
        assert (output / "episodic" / "checkpoint-2" / f"random_states_{rank}.pkl").is_file()
    assert [int(r["epoch"]) for r in read_log(output / "episodic")] == [1, 2]
    assert [int(r["epoch"]) for r in read_log(output)] == list(range(1, EPOCHS + 1)), "only the main process logs"
    assert checkpoint_steps(output) == [EPOCHS - 1, EPOCHS]
    assert "Exported synthesizer" in result.stdout
    synthesizer = SGPSSynthesizer.from_pretrained(output / "final")
    assert all(torch.isfinite(p).all() for p in synthesizer.parameters())
    assert f"adapted {EPOCHS} epoch(s)" in (output / "final" / "README.md").read_text()
