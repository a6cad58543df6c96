"""SC-CLIP (Self-Calibrated CLIP) for Hugging Face transformers."""

from transformers import AutoConfig, AutoModel

from .configuration_scclip import SCCLIP_PRESETS, SCCLIPConfig, scclip_preset
from .modeling_scclip import SCCLIPForSemanticSegmentation, SCCLIPSemanticSegmenterOutput


AutoConfig.register("scclip", SCCLIPConfig, exist_ok=True)
AutoModel.register(SCCLIPConfig, SCCLIPForSemanticSegmentation, exist_ok=True)

__all__ = [
    "SCCLIP_PRESETS",
    "SCCLIPConfig",
    "SCCLIPForSemanticSegmentation",
    "SCCLIPSemanticSegmenterOutput",
    "scclip_preset",
]
