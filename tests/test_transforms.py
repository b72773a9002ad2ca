"""Image transforms and the teacher-view rotation/flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from crckd.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    normalize_images,
    rotate_flip_batch,
    train_transform,
)


def _image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_eval_transform_resizes_and_normalises() -> None:
    gray = Image.new("RGB", (40, 30), (128, 128, 128))
    out = eval_transform(16)(gray)
    assert out.shape == (3, 16, 16)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)
    image = _image()
    assert torch.equal(eval_transform(16)(image), eval_transform(16)(image))


def test_train_transform_is_the_papers_pipeline() -> None:
    steps = train_transform(24).transforms
    assert [type(s) for s in steps] == [
        T.Resize,
        T.RandomAffine,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    assert tuple(steps[0].size) == (24, 24)
    assert list(steps[1].degrees) == [-10, 10] and tuple(steps[1].translate) == (0.02, 0.02)
    assert steps[2].p == 0.5
    assert tuple(steps[4].mean) == IMAGENET_MEAN and tuple(steps[4].std) == IMAGENET_STD


def test_train_transform_is_random_with_the_right_shape() -> None:
    image = _image()
    torch.manual_seed(0)
    outs = [train_transform(24)(image) for _ in range(4)]
    assert all(o.shape == (3, 24, 24) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def _dihedral_match(sample: torch.Tensor, out: torch.Tensor) -> tuple[int, bool]:
    """(k, flipped) with out == flip_H?(rot90(sample, k)); fails if no candidate matches."""
    matches = [
        (k, flipped)
        for k in range(4)
        for flipped in (False, True)
        if torch.equal(out, _rotate(sample, k).flip(1) if flipped else _rotate(sample, k))
    ]
    assert len(matches) == 1, "output is not one rotation/flip of its input"
    return matches[0]


def _rotate(sample: torch.Tensor, k: int) -> torch.Tensor:
    return torch.rot90(sample, k, dims=(1, 2))


def test_rotate_flip_batch_rotates_and_flips_each_sample() -> None:
    x = torch.randn(64, 3, 5, 5)
    out = rotate_flip_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    found = [_dihedral_match(x[i], out[i]) for i in range(len(x))]
    assert {k for k, _ in found} == {0, 1, 2, 3}
    assert {f for _, f in found} == {False, True}


def test_rotate_flip_batch_follows_the_generator() -> None:
    x = torch.randn(16, 2, 4, 4)
    first = rotate_flip_batch(x, torch.Generator().manual_seed(5))
    assert torch.equal(first, rotate_flip_batch(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, rotate_flip_batch(x, torch.Generator().manual_seed(6)))


def test_rotate_flip_batch_shares_of_ranks_make_the_single_process_batch() -> None:
    """Each rank, its generator in the same state, takes its share of the global batch's draws."""
    x = torch.randn(12, 2, 4, 4)
    whole = rotate_flip_batch(x, torch.Generator().manual_seed(3))
    shares = [
        rotate_flip_batch(part, torch.Generator().manual_seed(3), rank=rank, world_size=3)
        for rank, part in enumerate(x.split(4))
    ]
    assert torch.equal(torch.cat(shares), whole)


def test_rotate_flip_batch_needs_square_batches() -> None:
    with pytest.raises(ValueError, match="H == W"):
        rotate_flip_batch(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="H == W"):
        rotate_flip_batch(torch.zeros(3, 4, 4))


def test_rotate_flip_batch_passes_gradients() -> None:
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    rotate_flip_batch(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_uint8_training_images_normalised_on_the_device_equal_the_float_pipeline() -> None:
    images = [_image(seed=seed) for seed in range(4)]
    norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    as_float, as_uint8 = train_transform(16, norm), train_transform(16, norm, to_float=False)
    torch.manual_seed(3)
    expected = torch.stack([as_float(image) for image in images])
    torch.manual_seed(3)  # the same augmentation draws
    raw = torch.stack([as_uint8(image) for image in images])
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 16, 16)
    assert torch.equal(normalize_images(raw, norm), expected)  # bit for bit
