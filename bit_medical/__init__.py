"""bit_medical: BiT ResNet-v2 pre-training and full / few-shot transfer in JAX.

Public API::

    model = bit_medical.create_model("BiT-M-R50x1", num_classes=10)
    model, variables = bit_medical.load_model("BiT-M-R50x1", num_classes=10)
    logits = model.apply(variables, images)   # NHWC float images in [-1, 1]
"""

from bit_medical.models.bit import create_model
from bit_medical.models.pretrained import load_model

__all__ = ["create_model", "load_model"]
__version__ = "0.1.0"
