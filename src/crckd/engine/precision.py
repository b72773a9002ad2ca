"""Mixed precision and memory layout: switchable, with defaults right for the device found."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from crckd.config import TrainConfig
from crckd.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How tensors are computed on `device`: autocast dtype (None: float32) and layout."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and float32 do not."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """Move a batch of images to the device, in the chosen memory layout."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def resolve_precision(config: TrainConfig, device: torch.device) -> Precision:
    """`auto` picks bf16 (fp16 on GPUs without native bf16) and channels-last on CUDA, neither
    on the CPU."""
    cuda = device.type == "cuda"
    if config.amp == "auto":
        dtype = None
        if cuda:  # native bf16 from compute capability 8 (Ampere); before it, emulated
            native_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
            dtype = torch.bfloat16 if native_bf16 else torch.float16
    elif config.amp == "off":
        dtype = None
    else:
        if config.amp == "fp16" and not cuda:
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on the CPU")
        dtype = _DTYPES[config.amp]
    channels_last = cuda if config.channels_last == "auto" else bool(config.channels_last)
    return Precision(device, dtype, channels_last)
