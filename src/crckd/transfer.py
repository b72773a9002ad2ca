"""Host-to-device copies that do not make the host wait for the GPU (used by every layer).

A plain `tensor.to("cuda")` of a host tensor synchronises the CUDA stream after the copy, so the
host waits until every kernel queued before it has run, and cannot queue the next ones
meanwhile. Small host tensors made during a training step (contrast indices, rotation groups)
go through `to_device` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """`tensor` on `device`. A host tensor is copied without blocking (bound for CUDA, pinned
    first: the copy is then stream-ordered, so kernels queued after it see the data, and the
    host buffer stays alive until it is done). Other tensors: `tensor.to(device)`."""
    device = torch.device(device)
    if tensor.device.type != "cpu" or device.type == "cpu":
        return tensor.to(device)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
