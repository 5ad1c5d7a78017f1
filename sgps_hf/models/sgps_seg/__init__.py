"""Few-shot medical image segmentation without retraining: examples with masks in, a standalone UperNet out."""

from pathlib import Path

from transformers import AutoConfig, AutoModel

from .configuration_sgps_seg import SGPSSegConfig
from .modeling_sgps_seg import SGPSSegOutput, SGPSSegSynthesizer
from .segmenter import SynthesizedSegmenter
from .task import SegmentationTask

#: The bundled, meta-trained segmentation synthesizer (a local folder: works offline).
DEFAULT_SEG_CHECKPOINT = str(Path(__file__).resolve().parents[2] / "checkpoints" / "sgps-seg-lite0-128")

AutoConfig.register(SGPSSegConfig.model_type, SGPSSegConfig, exist_ok=True)
AutoModel.register(SGPSSegConfig, SGPSSegSynthesizer, exist_ok=True)

__all__ = ["DEFAULT_SEG_CHECKPOINT", "SGPSSegConfig", "SGPSSegOutput", "SGPSSegSynthesizer", "SegmentationTask", "SynthesizedSegmenter"]
