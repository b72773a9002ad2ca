"""A training step never reads device data back to the host (which would stall a GPU).

Tensors on PyTorch's "meta" device have shapes but no data, so every host read of device data
raises on them: `.item()`, `bool()`, `.cpu()`, and ops whose output size depends on the data
(`nonzero`, boolean masks, `bincount`, `unique`). Running a method's step on meta tensors is
therefore a CPU-only check that the step would queue on a GPU without waiting for it. The batch
"index" stays on the host, as the trainer keeps it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crckd.config import load_config
from crckd.engine.finite import LossWatch
from crckd.methods import MethodContext, available_methods, get_method
from crckd.models import build_model

NUM_CLASSES, N_DATA, BATCH = 3, 48, 8
LABELS = np.arange(N_DATA) % NUM_CLASSES


def one_step(method, device: str, step: int) -> dict[str, torch.Tensor]:
    """Losses, LossWatch bookkeeping, backward, Adam step and EMA update, late in training."""
    epoch = 79  # every term of every method is on
    batch = {
        "image": torch.randn(BATCH, 3, 32, 32, device=device),
        "image2": torch.randn(BATCH, 3, 32, 32, device=device),
        "label": torch.as_tensor(LABELS[:BATCH], device=device),
        "index": torch.arange(BATCH),
    }
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    terms = method.training_losses(batch, epoch)
    weights = method.loss_weights(epoch)
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
    cpu_terms = one_step(method, "cpu", 0)  # the first step may read once (CCD's Z)
    method.to("meta")
    meta_terms = one_step(method, "meta", 1)
    assert sorted(meta_terms) == sorted(cpu_terms)
    assert all(value.device.type == "meta" for value in meta_terms.values())
