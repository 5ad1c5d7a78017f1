"""Few-shot medical image segmentation without retraining: examples with masks in, a standalone UperNet out."""

from transformers import AutoConfig, AutoModel

from ...hub.checkpoints import DEFAULT_SEG_CHECKPOINT
from .configuration_sgps_seg import SGPSSegConfig
from .modeling_sgps_seg import SGPSSegOutput, SGPSSegSynthesizer
from .segmenter import SynthesizedSegmenter
from .task import SegmentationTask

AutoConfig.register(SGPSSegConfig.model_type, SGPSSegConfig, exist_ok=True)
AutoModel.register(SGPSSegConfig, SGPSSegSynthesizer, exist_ok=True)

__all__ = [
    "DEFAULT_SEG_CHECKPOINT",
    "SGPSSegConfig",
    "SGPSSegOutput",
    "SGPSSegSynthesizer",
    "SegmentationTask",
    "SynthesizedSegmenter",
]
