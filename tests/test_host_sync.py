"""A training step never reads device data back to the host (which would stall a GPU).

Tensors on PyTorch's "meta" device have shapes but no data, so every host read of device data
raises on them: `.item()`, `bool()`, `.cpu()`, and ops whose output size depends on the data
(`nonzero`, boolean masks, `bincount`, `unique`). Running a method's step on meta tensors is
therefore a CPU-only check that the step would queue on a GPU without waiting for it. The batch
"index" stays on the host, as the trainer keeps it.

The other way round, a blocking copy from the host (`tensor.to(device)`) makes the host wait
too: on CUDA it synchronises the stream after the copy. `BlockingCopies` records every
host-to-device copy that is not `non_blocking`, and a step must make none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from crckd.data import normalize_images, rotate_flip_batch
from crckd.engine.finite import LossWatch
from crckd.methods import MethodContext, available_methods, get_method, load_config
from crckd.models import build_model

NUM_CLASSES, N_DATA, BATCH = 3, 48, 8
LABELS = np.arange(N_DATA) % NUM_CLASSES


class BlockingCopies(TorchDispatchMode):
    """Records the ops that copy a host tensor to another device without `non_blocking`."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device")
            blocking = not kwargs.get("non_blocking", False)
        elif func is torch.ops.aten.copy_.default:
            source, target = args[1].device, args[0].device
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        else:
            return func(*args, **kwargs)
        crosses = target is not None and torch.device(target).type != "cpu"
        if blocking and crosses and source.type == "cpu":
            self.found.append(f"{func} to {target}")
        return func(*args, **kwargs)


def make_batch(device: str) -> dict[str, torch.Tensor]:
    """A batch as the trainer hands it over: on the device, but "index" on the host."""
    return {
        "image": torch.randn(BATCH, 3, 32, 32, device=device),
        "image2": torch.randn(BATCH, 3, 32, 32, device=device),
        "label": torch.as_tensor(LABELS[:BATCH], device=device),
        "index": torch.arange(BATCH),
    }


def one_step(method, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """Losses, LossWatch bookkeeping, backward, Adam step and EMA update, late in training."""
    epoch = 79  # every term of every method is on
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    weights = method.loss_weights(epoch)
    terms = method.training_losses(batch, epoch, weights)
    total = sum(weights[name] * value for name, value in terms.items() if weights[name])
    LossWatch().add(step, terms)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    method.after_step(step)
    return terms


@pytest.mark.parametrize("name", [spec.name for spec in available_methods()])
def test_a_training_step_never_reads_the_device(name: str) -> None:
    torch.manual_seed(0)
    small_banks = ["method.ccd.num_negatives=16", "method.ccd.num_positives=4"]
    config = load_config(overrides=[f"method.name={name}", *small_banks])
    context = MethodContext(NUM_CLASSES, LABELS, torch.ones(NUM_CLASSES), epochs=80, image_size=32)
    method = get_method(name).cls(build_model("resnet18", NUM_CLASSES), config.method, context)
    method.train()
    cpu_terms = one_step(method, make_batch("cpu"), 0)  # the first may read once (CCD's Z)
    method.to("meta")
    batch = make_batch("meta")
    with BlockingCopies() as copies:
        meta_terms = one_step(method, batch, 1)
    assert copies.found == []
    assert sorted(meta_terms) == sorted(cpu_terms)
    assert all(value.device.type == "meta" for value in meta_terms.values())


def test_normalising_and_rotating_a_batch_copy_nothing_blocking_to_the_device() -> None:
    images = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, device="meta")
    generator = torch.Generator().manual_seed(0)
    with BlockingCopies() as copies:
        normalised = normalize_images(images, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
        rotated = rotate_flip_batch(normalised, generator)
    assert copies.found == []
    assert rotated.shape == images.shape and rotated.device.type == "meta"


def test_blocking_copies_sees_a_plain_to() -> None:
    with BlockingCopies() as copies:
        torch.arange(3).to("meta")
        torch.arange(3).to("meta", non_blocking=True)
    assert len(copies.found) == 1
