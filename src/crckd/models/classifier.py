"""The paper's classifier: a timm backbone, a 128-d bottleneck ("feature4") and a linear head."""

from __future__ import annotations

import difflib
from typing import NamedTuple

import timm
from torch import Tensor, nn

from crckd.errors import ConfigError
from crckd.models.pretrained import load_backbone_weights


class ClassifierOutput(NamedTuple):
    """What every method needs from one forward pass."""

    features: Tensor  # [B, feat_dim] bottleneck output, no nonlinearity after it
    logits: Tensor  # [B, C]


class Classifier(nn.Module):
    """timm backbone -> pooled features -> dropout -> bottleneck Linear -> classifier Linear.

    The backbone must return pooled features (a timm model built with ``num_classes=0``). As in
    the reference, there is no nonlinearity between the bottleneck and the classifier, and both
    linear biases start at 0.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        feat_dim: int = 128,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.bottleneck = nn.Linear(num_features, feat_dim)
        self.classifier = nn.Linear(feat_dim, num_classes)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> ClassifierOutput:
        features = self.bottleneck(self.dropout(self.backbone(x)))
        return ClassifierOutput(features, self.classifier(features))


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool | str = False,
    feat_dim: int = 128,
    drop_rate: float = 0.0,
) -> Classifier:
    """Build a `Classifier` around any timm model, with backbone weights from `pretrained`.

    `pretrained` is False (random init), True (timm's library weights, needs internet or the
    Hugging Face cache), a local state-dict file or a name from `PRETRAINED_SOURCES`.
    """
    check_backbone_name(backbone)
    net = timm.create_model(backbone, pretrained=False, num_classes=0)
    load_backbone_weights(net, backbone, pretrained)
    return Classifier(net, _pooled_dim(net), num_classes, feat_dim=feat_dim, drop_rate=drop_rate)


def check_backbone_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, suggesting close matches."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    close += timm.list_models(f"*{name}*")[:5]
    suggestions = list(dict.fromkeys(close))[:5]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ConfigError(f"model.backbone: {name!r} is not a timm model{hint}")


def _pooled_dim(backbone: nn.Module) -> int:
    """Width of the pooled features a ``num_classes=0`` timm model returns."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
