"""sgps-hf: zero-training synthesis of medical image classifiers with a meta-trained hypernetwork."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor  # noqa: E402

from .errors import CheckpointError, DataError, ImageLoadError, InvalidTaskError, SGPSError, SynthesisError  # noqa: E402
from .hub.checkpoints import DEFAULT_CHECKPOINT  # noqa: E402
from .imaging import load_image  # noqa: E402
from .models.sgps.classifier import SynthesizedClassifier  # noqa: E402
from .models.sgps.configuration_sgps import SGPSConfig  # noqa: E402
from .models.sgps.image_processing_sgps import SGPSImageProcessor  # noqa: E402
from .models.sgps.modeling_sgps import SGPSOutput, SGPSSynthesizer  # noqa: E402
from .models.sgps.processing_sgps import SGPSProcessor  # noqa: E402
from .models.sgps_seg import (
    DEFAULT_SEG_CHECKPOINT,
    SegmentationTask,
    SGPSSegConfig,
    SGPSSegSynthesizer,
    SynthesizedSegmenter,
)  # noqa: E402
from .task import ClassSpec, TaskSpec  # noqa: E402
from .version import __version__  # noqa: F401

AutoConfig.register(SGPSConfig.model_type, SGPSConfig, exist_ok=True)
AutoModel.register(SGPSConfig, SGPSSynthesizer, exist_ok=True)
# Its transform is timm's, built from torchvision transforms: registered under any other backend, every load would be
# answered with "Requested torchvision backend is not available. Falling back to ...".
AutoImageProcessor.register(SGPSConfig, image_processor_classes={"torchvision": SGPSImageProcessor}, exist_ok=True)
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
    "load_image",
]
