"""TrainingConfig: YAML/JSON file + ``--key value`` overrides, and the validation of every run-defining field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from sgps_hf.training.config import TrainingConfig, parse_training_args

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_YAML = PROJECT_ROOT / "scripts" / "configs" / "default.yaml"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- precedence ------------------------------------------------------------------------------------------------


def test_cli_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    config_file = write_yaml(
        tmp_path / "run.yaml",
        {
            "output_dir": "runs/from-file",
            "pretrain_epochs": 3,
            "n_way": 3,
            "k_shot": [2, 4],
            "pretrain_learning_rate": 0.005,
            "pretrain_samples_per_epoch": 960,
            "train_sources": ["/data/a", "/data/b"],
            "model": {"ridge_init": 2.0, "image_size": 48},
        },
    )
    config, resume = parse_training_args(
        [
            "--config",
            str(config_file),
            "--pretrain-epochs",
            "7",
            "--k-shot",
            "1",
            "3",
            "--pretrain-learning-rate",
            "3e-4",
            "--pretrain-samples-per-epoch",
            "none",
            "--train-sources",
            "/data/c",
            "--model",
            '{"ridge_init": 0.5}',
            "--num-threads",
            "1",
        ]
    )
    assert resume is False
    # CLI wins over the file ...
    assert config.pretrain_epochs == 7 and isinstance(config.pretrain_epochs, int)
    assert config.k_shot == [1, 3]
    assert config.pretrain_learning_rate == pytest.approx(3e-4) and isinstance(config.pretrain_learning_rate, float)
    assert config.pretrain_samples_per_epoch is None
    assert config.train_sources == ["/data/c"]
    assert config.model == {"ridge_init": 0.5}  # --model replaces the file's model dict as a whole
    assert config.num_threads == 1
    # ... the file wins over the defaults where no flag was given ...
    assert config.output_dir == "runs/from-file"
    assert config.n_way == 3
    # ... and the defaults fill the rest.
    defaults = TrainingConfig()
    assert config.q_query == defaults.q_query
    assert config.body_interpolation == defaults.body_interpolation
    assert config.eval_episodes == defaults.eval_episodes


def test_without_flags_the_file_is_taken_verbatim(tmp_path):
    data = {"pretrain_epochs": 2, "n_way": 4, "k_shot": [2, 2], "body_interpolation": 0.5, "val_sources": ["/v"]}
    config, resume = parse_training_args(["--config", str(write_yaml(tmp_path / "c.yaml", data)), "--resume"])
    assert resume is True
    assert {key: getattr(config, key) for key in data} == data


def test_flags_alone_need_no_file():
    config, _ = parse_training_args(
        ["--pretrain-epochs", "5", "--output-dir", "x", "--data-dir", "none", "--eval-episodes", "2"]
    )
    assert (config.pretrain_epochs, config.output_dir, config.data_dir, config.eval_episodes) == (5, "x", None, 2)
    assert config.k_shot == TrainingConfig().k_shot


def test_default_yaml_is_a_valid_config_and_flags_still_override_it():
    data = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    config, _ = parse_training_args(["--config", str(DEFAULT_YAML), "--pretrain-epochs", "1", "--output-dir", "y"])
    assert (config.pretrain_epochs, config.output_dir) == (1, "y")
    assert config.model == data["model"]
    assert config.k_shot == data["k_shot"] and config.body_interpolation == data["body_interpolation"]
    # the body adaptation of the shipped checkpoint
    assert (data["pretrain_epochs"], data["pretrain_samples_per_epoch"], data["body_interpolation"]) == (3, 9600, 0.5)


def test_saved_json_round_trips(tmp_path):
    config = TrainingConfig(pretrain_epochs=9, k_shot=[1, 2], model={"ridge_init": 0.25}, train_sources=["/a"])
    config.save(tmp_path / "training_config.json")
    assert json.loads((tmp_path / "training_config.json").read_text())["pretrain_epochs"] == 9
    assert TrainingConfig.from_file(tmp_path / "training_config.json") == config
    again, _ = parse_training_args(["--config", str(tmp_path / "training_config.json")])
    assert again == config


def test_keys_of_the_removed_head_meta_training_are_named(tmp_path):
    path = write_yaml(tmp_path / "old.yaml", {"steps": 1500, "learning_rate": 0.001, "pretrain_epochs": 3})
    with pytest.raises(ValueError, match=r"removed head meta-training.*\['learning_rate', 'steps'\]. Delete them"):
        TrainingConfig.from_file(path)
    with pytest.raises(ValueError, match="removed head meta-training"):
        parse_training_args(["--config", str(path)])
    with pytest.raises(SystemExit):
        parse_training_args(["--steps", "5"])
    assert TrainingConfig.from_file(path, drop_removed=True) == TrainingConfig(pretrain_epochs=3)


def test_the_bundled_checkpoints_training_config_still_names_its_data():
    """`sgps evaluate` reads a synthesizer's own training_config.json for its meta-train/meta-val data; the bundled
    one predates the removal of the head meta-training keys."""
    from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT

    path = Path(DEFAULT_CHECKPOINT) / "training_config.json"
    config = TrainingConfig.from_file(path, drop_removed=True)
    assert config.data_dir is None and config.train_sources == [] and config.pretrain_epochs == 3


@pytest.mark.parametrize(("value", "expected"), [(3, [3, 3]), ([2], [2, 2]), ([1, 5], [1, 5]), ((2, 4), [2, 4])])
def test_k_shot_forms(value, expected):
    assert TrainingConfig(k_shot=value).k_shot == expected


def test_a_single_k_shot_flag_means_a_fixed_k():
    config, _ = parse_training_args(["--k-shot", "5"])
    assert config.k_shot == [5, 5]


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k_shot", [[0, 2], [3, 1], [1, 2, 3], [], 0, "1-5", [1.5, 2], [True, 2]])
def test_bad_k_shot_is_refused(k_shot):
    with pytest.raises(ValueError, match="k_shot"):
        TrainingConfig(k_shot=k_shot)


def test_bad_k_shot_in_a_file_or_on_the_command_line_is_refused(tmp_path):
    with pytest.raises(ValueError, match="k_shot"):
        TrainingConfig.from_file(write_yaml(tmp_path / "c.yaml", {"k_shot": [4, 2]}))
    with pytest.raises(ValueError, match="k_shot"):
        parse_training_args(["--k-shot", "0", "3"])
    with pytest.raises(SystemExit):  # not an integer: argparse refuses it
        parse_training_args(["--k-shot", "one"])


def test_unknown_keys_in_the_file_are_named(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"pretrain_epochs": 3, "learning_rat": 0.1, "kshot": 2})
    with pytest.raises(ValueError, match=r"Unknown training config keys.*\['kshot', 'learning_rat'\]"):
        TrainingConfig.from_file(path)
    with pytest.raises(ValueError, match="learning_rat"):
        parse_training_args(["--config", str(path)])


def test_unknown_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_training_args(["--learning-rte", "0.1"])
    assert "--learning-rte" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_way", 1, "n_way"),
        ("mixed_precision", "fp8", "mixed_precision"),
        ("keep_checkpoints", 0, "keep_checkpoints"),
        ("keep_checkpoints", 2.5, "keep_checkpoints"),
        ("eval_episodes", 0, "eval_episodes"),
        ("pretrain_batch_size", 0, "pretrain_batch_size"),
        ("pretrain_epochs", -1, "pretrain_epochs"),
        ("body_interpolation", 1.5, "body_interpolation"),
        ("q_query", 0, "q_query"),
        ("episodic_balance", "site", "episodic_balance must be one of task, family"),
        ("episodic_n_way", 1, "episodic_n_way must be an integer of at least 2"),
    ],
)
def test_other_invalid_values_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**{field: value})


def test_every_field_has_a_flag():
    """Each config field can be overridden from the command line with its dashed name."""
    for f in dataclasses.fields(TrainingConfig):
        if f.name in ("model", "k_shot", "train_sources", "val_sources"):
            continue
        value = {"bool": "false", "str": "x"}.get(str(f.type), "3")
        if f.name == "mixed_precision":
            value = "bf16"
        elif f.name == "episodic_balance":
            value = "family"
        elif "float" in str(f.type):
            value = "0.25"
        config, _ = parse_training_args(["--" + f.name.replace("_", "-"), value])
        assert getattr(config, f.name) != getattr(TrainingConfig(), f.name), f.name


def _seg_args(argv: list[str]):
    """The shared flag parser on a config with a boolean field (the segmentation training's ``augment``)."""
    import argparse

    from sgps_hf.training.config import add_arguments, config_from_args
    from sgps_hf.training.seg_meta_train import SegTrainingConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser, SegTrainingConfig)
    return config_from_args(parser.parse_args(argv), SegTrainingConfig)


@pytest.mark.parametrize("text", ["maybe", "2", ""])
def test_bad_booleans_are_refused_not_read_as_false(text):
    with pytest.raises(SystemExit):
        _seg_args(["--augment", text])


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("Yes", True), ("1", True), ("false", False), ("no", False), ("0", False)]
)
def test_booleans(text, expected):
    assert _seg_args(["--augment", text]).augment is expected
