"""BiT ResNet-v2 models, checkpoint conversion, loading and export."""

from bit_medical.models.bit import VARIANTS, BiT, create_model
from bit_medical.models.convert import CheckpointError
from bit_medical.models.pretrained import load_model

__all__ = ["BiT", "VARIANTS", "create_model", "CheckpointError", "load_model"]
