"""Training configuration: a YAML/JSON file plus ``--key value`` overrides on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

logger = logging.getLogger(__name__)

#: Keys of earlier training configs that no longer define anything: the episodic meta-training of the head they
#: configured is gone (its meta-parameters are fitted on meta-val in calibration), and the body is always frozen
#: after its adaptation.
REMOVED_KEYS = frozenset(
    {
        "steps",
        "freeze_body",
        "train_support_views",
        "text_dropout",
        "image_dropout",
        "augment",
        "learning_rate",
        "base_learning_rate",
        "warmup_steps",
        "schedule",
        "gradient_accumulation_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "max_minutes",
    }
)

#: How the episodic stage may weight the meta-train tasks (``TrainingConfig.episodic_balance``).
EPISODIC_BALANCES = ("task", "family")


@dataclass
class TrainingConfig:
    """Everything that defines a training run (saved next to its checkpoints).

    The run adapts the body on the meta-train classes for ``pretrain_epochs`` epochs (Accelerate, a checkpoint per
    epoch), mixes it with its starting weights (``body_interpolation``, WiSE-FT), then adapts it on ``episodic_epochs``
    epochs of ``episodic_episodes_per_epoch`` meta-train episodes (their tasks drawn as ``episodic_balance`` says)
    through the closed-form head (:mod:`sgps_hf.training.episodic`), freezes it, and fits the closed-form head's
    meta-parameters on ``eval_episodes`` meta-val episodes in calibration. Both episode kinds have the shape
    ``n_way``, ``k_shot``, ``q_query``, except that ``episodic_n_way`` may give the episodic stage more classes.

    Data: by default the classes of ``../shared/data`` in the ``meta_train`` split, plus those of the meta-val
    tasks named in ``meta_val_into_train`` (held-out tasks are never loaded); ``train_sources`` instead names
    imagefolder directories or Hub datasets (an image column and a ClassLabel column), every class of which is used
    for meta-training.
    """

    output_dir: str = "runs/sgps"
    data_dir: str | None = None
    train_sources: list[str] = field(default_factory=list)
    val_sources: list[str] = field(default_factory=list)
    # Meta-val tasks of the shared data whose classes join meta-training (body adaptation, the text memory);
    # calibration then fits the head on the other meta-val tasks only (benchmarks/accuracy_round_three.md).
    meta_val_into_train: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None

    pretrain_epochs: int = 0
    pretrain_samples_per_epoch: int | None = None  # None: as many draws as there are meta-train images
    pretrain_batch_size: int = 128
    pretrain_learning_rate: float = 3e-3
    body_interpolation: float = 1.0
    episodic_epochs: int = 0
    episodic_episodes_per_epoch: int = 500
    episodic_learning_rate: float = 1e-4
    # How the episodic stage picks an episode's task: "task" (every meta-train task equally likely) or "family"
    # (every family equally likely, then every task within it; benchmarks/episodic_adaptation.md).
    episodic_balance: str = "task"
    # Classes per episode of the episodic stage (None: n_way, the shape of the meta-val episodes calibration uses).
    episodic_n_way: int | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    keep_checkpoints: int = 2
    num_threads: int | None = None

    # The shape of the episodic stage's meta-train episodes and of the meta-val episodes calibration fits the head on.
    n_way: int = 5
    k_shot: list[int] = field(default_factory=lambda: [1, 5])
    q_query: int = 5
    eval_episodes: int = 60

    def __post_init__(self) -> None:
        k_shot = self.k_shot
        if _is_int(k_shot):
            k_shot = [k_shot, k_shot]
        elif isinstance(k_shot, (list, tuple)) and len(k_shot) == 1:  # `--k-shot 5`: a fixed K
            k_shot = [k_shot[0], k_shot[0]]
        if not (
            isinstance(k_shot, (list, tuple))
            and len(k_shot) == 2
            and all(map(_is_int, k_shot))
            and 1 <= k_shot[0] <= k_shot[1]
        ):
            raise ValueError(f"k_shot must be [min, max] with 1 <= min <= max, got {self.k_shot!r}.")
        self.k_shot = list(k_shot)
        for name in (
            "q_query",
            "keep_checkpoints",
            "eval_episodes",
            "pretrain_batch_size",
            "episodic_episodes_per_epoch",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("pretrain_epochs", "episodic_epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        for name in ("pretrain_learning_rate", "episodic_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if not 0 <= self.body_interpolation <= 1:
            raise ValueError(f"body_interpolation must be in [0, 1], got {self.body_interpolation!r}.")
        if self.episodic_balance not in EPISODIC_BALANCES:
            raise ValueError(
                f"episodic_balance must be one of {', '.join(EPISODIC_BALANCES)}, got {self.episodic_balance!r}."
            )
        if self.n_way < 2:
            raise ValueError("n_way must be at least 2.")
        if self.episodic_n_way is not None and not (_is_int(self.episodic_n_way) and self.episodic_n_way >= 2):
            raise ValueError(
                f"episodic_n_way must be an integer of at least 2 (or null), got {self.episodic_n_way!r}."
            )
        if self.meta_val_into_train and self.train_sources:
            raise ValueError(
                "meta_val_into_train moves tasks of the shared data's meta-val split; it cannot be combined with "
                "train_sources (name the datasets in train_sources and val_sources instead)."
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")

    @property
    def episodic_ways(self) -> int:
        """Classes per episode of the episodic stage."""
        return self.episodic_n_way or self.n_way

    @classmethod
    def from_file(cls, path: str | Path, drop_removed: bool = False) -> "TrainingConfig":
        """The config of a YAML/JSON file. ``drop_removed``: ignore the ``REMOVED_KEYS`` of an older run's file
        (to read its data sources); otherwise they are refused by name."""
        data = read_config_file(cls, path, ignore=REMOVED_KEYS if drop_removed else frozenset())
        return cls(**data)

    @classmethod
    def saved_or_default(cls, path: str | Path) -> "TrainingConfig":
        """The config a run saved at ``path`` (e.g. the ``training_config.json`` beside a synthesizer; an older run's
        file is read for its data sources), or the defaults, with a logged warning, when there is none."""
        if Path(path).is_file():
            return cls.from_file(path, drop_removed=True)
        logger.warning("No training config at %s: meta-train/meta-val data from TrainingConfig defaults.", path)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON, atomically (a run killed while saving keeps the previous file)."""
        from ..hub.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def read_config_file(config_class: type, path: str | Path, ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The keys of a YAML/JSON training config file, checked against the fields of ``config_class`` (keys in
    ``ignore`` are dropped)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    data = {key: value for key, value in data.items() if key not in ignore}
    unknown = set(data) - {f.name for f in dataclasses.fields(config_class)}
    removed = unknown & REMOVED_KEYS if config_class is TrainingConfig else set()
    if removed:
        raise ValueError(
            f"Training config keys of the removed head meta-training in {path}: {sorted(removed)}. Delete them: "
            "the head's meta-parameters are now fitted on meta-val in calibration, and the body's adaptation is set "
            "by the pretrain_* keys (see scripts/configs/default.yaml)."
        )
    if unknown:
        raise ValueError(f"Unknown training config keys in {path}: {sorted(unknown)}.")
    return data


def add_arguments(parser: argparse.ArgumentParser, config_class: type = TrainingConfig) -> None:
    """``--config FILE``, ``--resume`` and one ``--<field>`` override per field of ``config_class`` (a dataclass)."""
    parser.add_argument("--config", help="YAML/JSON training config; flags below override it")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        # SUPPRESS: a flag not given leaves no attribute, so `--data-dir none` can override a file's value.
        if kind.startswith("dict"):
            parser.add_argument(
                flag, metavar="JSON", type=json.loads, default=argparse.SUPPRESS, help=f"{f.name} as JSON"
            )
        elif kind.startswith("list["):
            parser.add_argument(
                flag, nargs="+", type=int if kind.startswith("list[int]") else str, default=argparse.SUPPRESS
            )
        elif kind == "bool":
            parser.add_argument(flag, type=_bool, metavar="BOOL", default=argparse.SUPPRESS)
        else:
            base = {"int": int, "float": float}.get(kind.split(" ")[0], str)
            parser.add_argument(flag, type=base if "None" not in kind else _optional(base), default=argparse.SUPPRESS)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(kind):
    return lambda s: None if s.lower() == "none" else kind(s)


def config_from_args(args: argparse.Namespace, config_class: type = TrainingConfig) -> Any:
    """``config_class`` from ``--config FILE`` (if given) with the flags given on the command line on top."""
    base = read_config_file(config_class, args.config) if args.config else {}
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    return config_class(**{**base, **overrides})


def parse_training_args(argv: Sequence[str] | None = None) -> tuple[TrainingConfig, bool]:
    parser = argparse.ArgumentParser(
        description="Train an SGPS synthesizer: adapt its body with Accelerate, then fit its head on meta-val."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return config_from_args(args), args.resume
