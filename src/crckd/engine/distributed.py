"""DDP under torchrun: process-group set-up, wrapping, and keeping ranks in step.

Launch with `torchrun --nproc_per_node=N -m crckd train ...`. Only the method's trainable
modules (the student and its heads) are wrapped in DistributedDataParallel; the teacher never
is, and memory banks stay plain buffers that every rank updates with the gathered batch.

A collective waits at most `CRCKD_DIST_TIMEOUT` seconds for the other processes (default
DEFAULT_DIST_TIMEOUT): a process whose peer died or hangs then stops (`DistributedError`,
exit code 2) instead of waiting for PyTorch's default of 30 minutes (gloo) or 10 (NCCL).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from crckd.dist import all_reduce_mean, unwrap
from crckd.engine.inference import resolve_device
from crckd.errors import ConfigError, CrckdError

# Where PyTorch's collectives raise from (the innermost Python frame of a failed collective).
_TORCH_COLLECTIVES = ("torch/distributed/", "torch/nn/parallel/distributed.py")

DIST_TIMEOUT_ENV = "CRCKD_DIST_TIMEOUT"
# Long enough for the longest wait of a healthy job: the other ranks wait while rank 0 alone
# builds the decoded-image cache (data.cache) of a large dataset the first time.
DEFAULT_DIST_TIMEOUT = 600.0


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def on_main(self, action: Callable[[], None]) -> None:
        """Run `action` on the main process only, the others waiting for it. A user error it
        raises (a `CrckdError`: a locked or used run folder, say) is raised on every process
        with the same message, rather than leaving the others to report a lost peer."""
        if not self.enabled:
            action()
            return
        error: list[CrckdError | None] = [None]
        if self.is_main:
            try:
                action()
            except CrckdError as exc:
                error[0] = exc
        dist.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise error[0]


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment, if any, and pick this rank's device.

    NCCL on CUDA (one GPU per local rank), gloo on the CPU, where each process also gets its
    share of the cores so that ranks do not oversubscribe them.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()})")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=collective_timeout())
    return Distributed(rank, world_size, local_rank), device


def collective_timeout() -> timedelta:
    """How long a collective waits for the other processes: `CRCKD_DIST_TIMEOUT` seconds."""
    text = os.environ.get(DIST_TIMEOUT_ENV, str(DEFAULT_DIST_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{DIST_TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def peer_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised in a distributed job, says that another process of the job
    stopped or did not answer in time (gloo raises a plain RuntimeError from its transport;
    NCCL and the store raise torch.distributed.DistError)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(exc, dist.DistError):
        return True
    # gloo's messages vary ("[../gloo/transport/...] Connection closed by peer", "Application
    # timeout caused pair closure"): recognise where the error was raised, a collective
    frames = traceback.extract_tb(exc.__traceback__)
    innermost = Path(frames[-1].filename).as_posix() if frames else ""
    in_collective = any(part in innermost for part in _TORCH_COLLECTIVES)
    return isinstance(exc, RuntimeError) and ("/gloo/" in str(exc) or in_collective)


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def trainable_children(method: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of `method` that the optimiser trains: never the teacher."""
    return [
        (name, child)
        for name, child in method.named_children()
        if name != "teacher" and any(p.requires_grad for p in child.parameters())
    ]


def convert_sync_batchnorm(method: nn.Module) -> list[str]:
    """Replace the BatchNorm layers of the trainable children by SyncBatchNorm, in place.

    The new layers hold the same parameter and buffer tensors, so an optimiser built before
    keeps working and state-dict keys do not change (checkpoints and the EMA pairing too).
    The teacher is never converted: it takes no gradient and its statistics are its own.
    """
    converted = []
    for name, child in trainable_children(method):
        setattr(method, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        converted.append(name)
    return converted


def wrap_trainable(method: nn.Module, device: torch.device) -> list[str]:
    """Wrap each trainable child of `method` (never the teacher) in DDP, in place."""
    wrapped = []
    for name, child in trainable_children(method):
        device_ids = [device.index] if device.type == "cuda" else None
        # Some heads get no gradient in some epochs (e.g. CCD's teacher head while CCD is off).
        setattr(
            method, name, DistributedDataParallel(child, device_ids, find_unused_parameters=True)
        )
        wrapped.append(name)
    return wrapped


def plain_state_dict(method: nn.Module) -> dict[str, torch.Tensor]:
    """`method.state_dict()` with the keys it has without DDP wrappers."""
    state = {}
    for name, child in method.named_children():
        for key, value in unwrap(child).state_dict().items():
            state[f"{name}.{key}"] = value
    own = {k: v for k, v in method.state_dict().items() if "." not in k}
    return {**own, **state}


@torch.no_grad()
def average_batchnorm_buffers(module: nn.Module) -> None:
    """Average BatchNorm running statistics over ranks, so evaluation sees the same model."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
            layer.running_mean.copy_(all_reduce_mean(layer.running_mean))
            layer.running_var.copy_(all_reduce_mean(layer.running_var))
