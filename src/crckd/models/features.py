"""Intermediate feature maps taken with forward hooks, without changing any backbone's forward.

Layers are named by module path inside the `Classifier` (e.g. `backbone.layer3`); by default
they are the stage outputs timm lists in the backbone's `feature_info`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from crckd.errors import ConfigError


def stage_layers(model: nn.Module, count: int | None = None) -> list[str]:
    """Module paths of the backbone's stage outputs (timm `feature_info`), the last `count`."""
    info = getattr(model.backbone, "feature_info", None)
    if not info:
        raise ConfigError(
            f"backbone {type(model.backbone).__name__} lists no stages (timm feature_info); "
            "name the layers with method.distill.layers"
        )
    names = [f"backbone.{entry['module']}" for entry in info]
    return names if count is None else names[-count:]


class FeatureTap:
    """Keeps the latest output of each named module of `model` in `self.outputs`."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            stages = ", ".join(stage_layers(model)) if hasattr(model, "backbone") else ""
            raise ConfigError(f"unknown layer(s) {unknown}; the backbone's stages are: {stages}")
        self.layers = list(layers)
        self.outputs: dict[str, Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def store(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.outputs[name] = output

        return store

    def features(self) -> list[Tensor]:
        """The taps' latest outputs, in layer order."""
        return [self.outputs[name] for name in self.layers]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
