"""sgps-hf: zero-training synthesis of medical image classifiers with a meta-trained hypernetwork."""

from pathlib import Path

__version__ = "0.1.0"

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor  # noqa: E402

from .classifier import SynthesizedClassifier  # noqa: E402
from .configuration_sgps import SGPSConfig  # noqa: E402
from .errors import CheckpointError, DataError, ImageLoadError, InvalidTaskError, SGPSError, SynthesisError  # noqa: E402
from .image_processing_sgps import SGPSImageProcessor  # noqa: E402
from .modeling_sgps import SGPSOutput, SGPSSynthesizer  # noqa: E402
from .processing_sgps import SGPSProcessor  # noqa: E402
from .task import ClassSpec, TaskSpec  # noqa: E402
from .segmentation import DEFAULT_SEG_CHECKPOINT, SegmentationTask, SGPSSegConfig, SGPSSegSynthesizer, SynthesizedSegmenter  # noqa: E402

#: The bundled, meta-trained default synthesizer (a local folder: works offline).
DEFAULT_CHECKPOINT = str(Path(__file__).resolve().parent / "checkpoints" / "sgps-lite0-128")

AutoConfig.register(SGPSConfig.model_type, SGPSConfig, exist_ok=True)
AutoModel.register(SGPSConfig, SGPSSynthesizer, exist_ok=True)
AutoImageProcessor.register(SGPSConfig, image_processor_classes={"pil": SGPSImageProcessor}, exist_ok=True)
AutoProcessor.register(SGPSConfig, SGPSProcessor, exist_ok=True)

__all__ = [
    "DEFAULT_SEG_CHECKPOINT",
    "SGPSSegConfig",
    "SGPSSegSynthesizer",
    "SegmentationTask",
    "SynthesizedSegmenter",
    "DEFAULT_CHECKPOINT",
    "CheckpointError",
    "ClassSpec",
    "DataError",
    "ImageLoadError",
    "InvalidTaskError",
    "SGPSConfig",
    "SGPSError",
    "SGPSImageProcessor",
    "SGPSOutput",
    "SGPSProcessor",
    "SGPSSynthesizer",
    "SynthesizedClassifier",
    "SynthesisError",
    "TaskSpec",
]
