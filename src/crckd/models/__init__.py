"""Models: the paper's classifier on any timm backbone, pretrained weights and the EMA teacher."""

from crckd.models.classifier import Classifier, ClassifierOutput, build_model, check_backbone_name
from crckd.models.ema import ema_update, make_teacher
from crckd.models.features import FeatureTap, stage_layers
from crckd.models.pretrained import (
    PRETRAINED_SOURCES,
    PretrainedSource,
    input_normalization,
    load_backbone_weights,
)

__all__ = [
    "PRETRAINED_SOURCES",
    "Classifier",
    "ClassifierOutput",
    "FeatureTap",
    "PretrainedSource",
    "build_model",
    "check_backbone_name",
    "ema_update",
    "input_normalization",
    "load_backbone_weights",
    "make_teacher",
    "stage_layers",
]
