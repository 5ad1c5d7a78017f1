"""SGPSImageProcessor and SGPSProcessor: timm's own preprocessing, the task's inputs, save/load via the Auto
classes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sgps_testing import noise_image, synthetic_task, tiny_config, tiny_synthesizer
from timm.data import create_transform, resolve_data_config
from transformers import AutoImageProcessor, AutoProcessor

from sgps_hf import ClassSpec, ImageLoadError, SGPSImageProcessor, SGPSProcessor, TaskSpec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def processor():
    return SGPSProcessor.from_sgps_config(tiny_config(max_text_length=16))


# -- image processor ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_image_processor_matches_timms_own_eval_transform(interpolation):
    image_processor = SGPSImageProcessor(
        image_size=40, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], interpolation=interpolation
    )
    data_config = resolve_data_config(pretrained_cfg=image_processor.timm_data_config())
    assert tuple(data_config["input_size"]) == (3, 40, 40) and data_config["crop_pct"] == 1.0
    transform = create_transform(**data_config)
    images = [noise_image(1, size=(90, 60)), noise_image(2, size=(33, 77)), noise_image(3, size=(40, 40))]
    pixels = image_processor(images)["pixel_values"]
    assert pixels.shape == (3, 3, 40, 40) and pixels.dtype == torch.float32
    expected = torch.stack([transform(image) for image in images])
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)


def test_image_processor_resizes_the_shorter_side_and_centre_crops():
    image_processor = SGPSImageProcessor(image_size=16, image_mean=[0, 0, 0], image_std=[1, 1, 1])
    # a wide image: left and right thirds red, middle third blue; the centre crop of the resized image is blue
    pixels = np.zeros((16, 48, 3), dtype=np.uint8)
    pixels[:, :16] = pixels[:, 32:] = (255, 0, 0)
    pixels[:, 16:32] = (0, 0, 255)
    (out,) = image_processor(Image.fromarray(pixels))["pixel_values"]
    torch.testing.assert_close(out[:, :, 2:14], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 16, 12))


def test_image_processor_accepts_every_input_kind_and_names_bad_files(tmp_path):
    image_processor = SGPSImageProcessor(image_size=32)
    source = noise_image(4)
    source.save(tmp_path / "a.png")
    from_pil = image_processor(source)["pixel_values"]
    for other in (tmp_path / "a.png", str(tmp_path / "a.png"), np.asarray(source), (tmp_path / "a.png").read_bytes()):
        torch.testing.assert_close(image_processor([other])["pixel_values"], from_pil, rtol=0, atol=0)
    assert image_processor([])["pixel_values"].shape == (0, 3, 32, 32)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="broken.png"):
        image_processor([tmp_path / "a.png", tmp_path / "broken.png"])


def test_normalize_uint8_matches_preprocess_for_images_already_at_size():
    image_processor = SGPSImageProcessor(image_size=24, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    images = [noise_image(seed, size=(24, 24)) for seed in (5, 6)]
    uint8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    torch.testing.assert_close(
        image_processor.normalize_uint8(uint8), image_processor(images)["pixel_values"], rtol=1e-6, atol=1e-6
    )


def test_image_processor_save_and_load(tmp_path):
    image_processor = SGPSImageProcessor(
        image_size=40, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], interpolation="bicubic"
    )
    image_processor.save_pretrained(tmp_path)
    for loaded in (SGPSImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SGPSImageProcessor
        assert (loaded.image_size, loaded.image_mean, loaded.image_std, loaded.interpolation) == (
            40,
            [0.5, 0.4, 0.3],
            [0.2, 0.25, 0.3],
            "bicubic",
        )


# -- processor ----------------------------------------------------------------------------------------------------
def test_processor_call_with_images_and_text(processor):
    out = processor(images=[noise_image(1), noise_image(2)], text=["round pink papule", "dark plaque"])
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert out["input_ids"].shape == out["attention_mask"].shape and out["input_ids"].shape[0] == 2
    assert processor(text="one text")["input_ids"].shape[0] == 1 and "pixel_values" not in processor(text="x")
    assert set(processor(images=noise_image(1))) == {"pixel_values"}
    with pytest.raises(ValueError, match="images, text or both"):
        processor()


def test_processor_truncates_long_texts(processor):
    long = " ".join(["erythematous"] * 200)
    out = processor(text=[long, "short"])
    assert out["input_ids"].shape[1] == 16 == processor.max_text_length
    assert out["attention_mask"][1].sum() < 16  # the short text is padded, not truncated


def test_prepare_task(processor, tmp_path):
    task = synthetic_task(tmp_path, texts=("round pink papule", None, "scaly patch"), images_per_class=(2, 1, 0))
    inputs = processor.prepare_task(task)
    assert inputs["num_classes"] == 3
    assert inputs["support_labels"].tolist() == [0, 0, 1]
    assert inputs["support_pixel_values"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(
        inputs["support_pixel_values"],
        processor.image_processor(task.classes[0].images + task.classes[1].images)["pixel_values"],
    )
    assert inputs["text_mask"].tolist() == [True, False, True]
    assert inputs["input_ids"].shape[0] == 3  # one row per class; image-only classes carry their name (masked out)
    decoded = processor.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)
    assert decoded == ["round pink papule", "class _ 1", "scaly patch"]


def test_prepare_task_of_a_text_only_task(processor):
    inputs = processor.prepare_task(TaskSpec([ClassSpec("a", "pink"), ClassSpec("b", "brown")]))
    assert inputs["support_pixel_values"].shape == (0, 3, 32, 32) and inputs["support_labels"].numel() == 0
    assert inputs["support_labels"].dtype == torch.long and inputs["text_mask"].all()


def test_prepare_task_names_the_bad_image(processor, tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x00" * 100)
    task = TaskSpec([ClassSpec("a", images=[tmp_path / "scan.png"]), ClassSpec("b", "text")])
    with pytest.raises(ImageLoadError, match="scan.png"):
        processor.prepare_task(task)


def test_processor_save_and_load_round_trip(processor, tmp_path):
    synth = tiny_synthesizer(max_text_length=16)
    synth.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "SGPSProcessor" and saved["max_text_length"] == 16
    texts = ["round pink papule with a rolled border", "dark plaque"]
    images = [noise_image(1), noise_image(2, size=(80, 50))]
    expected = processor(images=images, text=texts)
    for loaded in (SGPSProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SGPSProcessor and type(loaded.image_processor) is SGPSImageProcessor
        assert loaded.max_text_length == 16
        out = loaded(images=images, text=texts)
        for key in ("pixel_values", "input_ids", "attention_mask"):
            assert torch.equal(out[key], expected[key]), key
