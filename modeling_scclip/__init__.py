"""SC-CLIP (Self-Calibrated CLIP) for Hugging Face transformers."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .configuration_scclip import SCCLIP_PRESETS, SCCLIPConfig, scclip_preset
from .image_processing_scclip import SCCLIPImageProcessor, pixel_adaptive_mask_refinement
from .modeling_scclip import SCCLIPForSemanticSegmentation, SCCLIPSemanticSegmenterOutput
from .pipeline_scclip import ZERO_SHOT_IMAGE_SEGMENTATION, SCCLIPZeroShotSegmentationPipeline
from .processing_scclip import IMAGENET_TEMPLATES, SCCLIPLabelEmbeddings, SCCLIPProcessor


# Local registration, so that the Auto classes load SC-CLIP folders without trust_remote_code once this package is
# imported; folders on the Hub carry the same classes through their auto_map.
AutoConfig.register("scclip", SCCLIPConfig, exist_ok=True)
AutoModel.register(SCCLIPConfig, SCCLIPForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(SCCLIPConfig, image_processor_classes={"pil": SCCLIPImageProcessor}, exist_ok=True)
AutoProcessor.register(SCCLIPConfig, SCCLIPProcessor, exist_ok=True)

__all__ = [
    "IMAGENET_TEMPLATES",
    "ZERO_SHOT_IMAGE_SEGMENTATION",
    "SCCLIP_PRESETS",
    "SCCLIPConfig",
    "SCCLIPForSemanticSegmentation",
    "SCCLIPImageProcessor",
    "SCCLIPLabelEmbeddings",
    "SCCLIPProcessor",
    "SCCLIPSemanticSegmenterOutput",
    "SCCLIPZeroShotSegmentationPipeline",
    "pixel_adaptive_mask_refinement",
    "scclip_preset",
]
