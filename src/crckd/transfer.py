"""Copies between host and device that do not make the host wait for the GPU (used by every
layer).

A plain `tensor.to("cuda")` of a host tensor synchronises the CUDA stream after the copy, so the
host waits until every kernel queued before it has run, and cannot queue the next ones
meanwhile. Small host tensors made during a training step (contrast indices, rotation groups)
go through `to_device` instead. The other way, `HostCopy` brings a device tensor back to be
read a step later (CRCKD's pseudo-labels), so the host need not wait for the GPU to catch up.
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


class HostCopy:
    """A copy of a device tensor to the host, started without making the host wait.

    On CUDA the copy goes to pinned memory, queued behind the kernels that make the tensor, and
    :meth:`get` waits only for those (an event), not for the work queued after them: read a
    step later, the host keeps a step ahead of the GPU. Elsewhere the copy is made at once (a
    host tensor is kept as it is, not copied).
    """

    def __init__(self, tensor: Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensor.device))
        else:
            self._host = tensor.detach().cpu()

    def get(self) -> Tensor:
        """The host copy, once the copy has finished."""
        if self._event is not None:
            self._event.synchronize()
        return self._host
