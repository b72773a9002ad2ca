"""Collective helpers that are no-ops in a single process (used by every layer that needs them).

Under `torchrun` the trainer initialises the process group (crckd.engine.distributed); these
helpers then gather or average across ranks, and otherwise return their input unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate equally shaped tensors of every rank along dim 0, in rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_batch(tensor: Tensor) -> Tensor:
    """The global batch of `tensor` (every rank's equal share, in rank order), with gradient.

    For losses over pairs or all samples of a batch, which must see the global batch to equal
    the single-process loss. Every rank then computes the same loss; the backward pass sums the
    gradient over ranks and gives each its rows, so after DDP averages the parameter gradients
    they are those of one process on the global batch.
    """
    if not is_distributed():
        return tensor
    return _GatherBatch.apply(tensor)


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_cat(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # every rank's gradient of its (identical) loss, summed
        start = rank() * ctx.rows
        return total[start : start + ctx.rows]


def all_gather_uneven(tensor: Tensor) -> Tensor:
    """Like `all_gather_cat` for tensors whose first dimension differs between ranks."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = all_gather_cat(size).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather_cat(padded)
    return torch.cat([gathered[i * max(sizes) : i * max(sizes) + n] for i, n in enumerate(sizes)])


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of `tensor` over ranks (a new tensor)."""
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced)
    return reduced / world_size()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
