"""Image transforms of the CRCKD paper, and the teacher-view rotation/flip of a batch."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

from crckd.transfer import to_device

IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD


Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_NORMALIZATION: Normalization = (IMAGENET_MEAN, IMAGENET_STD)


def resize(image_size: int) -> T.Resize:
    """The one resize of every pipeline (training, evaluation, the decoded cache), so that
    cached and uncached images are the same pixels."""
    return T.Resize((image_size, image_size))


def train_transform(
    image_size: int,
    normalization: Normalization = IMAGENET_NORMALIZATION,
    *,
    to_float: bool = True,
) -> Callable[[Image.Image], torch.Tensor]:
    """The paper's training augmentation: resize, small affine jitter, horizontal flip.

    `normalization` is the (mean, std) the backbone's weights were trained with. With
    `to_float=False` the result is the augmented image as a uint8 tensor [3, S, S]: a loader
    then moves a quarter of the bytes, and `normalize_images` on the device gives exactly what
    the float pipeline would.
    """
    augment = [
        resize(image_size),
        T.RandomAffine(degrees=10, translate=(0.02, 0.02)),
        T.RandomHorizontalFlip(),
    ]
    if not to_float:
        return T.Compose([*augment, T.PILToTensor()])
    return T.Compose([*augment, T.ToTensor(), T.Normalize(*normalization)])


def normalize_images(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 images [B, 3, H, W] to float32, scaled and normalised as ToTensor + Normalize do
    (the same operations, so the same numbers), on the images' device."""
    key = tuple(tuple(float(v) for v in values) for values in normalization)  # hashable
    scale, mean, std = _normalization_constants(key, images.device)
    return images.to(torch.float32).div_(scale).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _normalization_constants(
    normalization: Normalization, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """255, mean and std on `device`, copied there once. 255 is a device tensor, not a Python
    number: CUDA divides by a number as a multiplication by its reciprocal, which differs from
    ToTensor's division on the CPU in the last bit for some pixel values."""
    scale = torch.tensor(255.0)
    mean, std = (
        torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1) for values in normalization
    )
    return tuple(to_device(t, device) for t in (scale, mean, std))


def eval_transform(
    image_size: int, normalization: Normalization = IMAGENET_NORMALIZATION
) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic resize and normalisation, for validation, testing and prediction."""
    return T.Compose(
        [
            resize(image_size),
            T.ToTensor(),
            T.Normalize(*normalization),
        ]
    )


def rotate_flip_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Rotate each sample of a [B, C, H, W] batch by a random multiple of 90 degrees, then flip
    it along the height axis with probability 0.5: CRCKD's perturbation of the teacher's view.

    Samples that share a rotation are rotated together, so the cost is four batched ops at
    most. The random draws use `generator` (on its own device) for reproducibility; the grouping
    is done there too, so a host generator costs a GPU batch no device sync. Under DDP, with
    `rank` and `world_size`, the draws are made for the whole global batch (the same on every
    rank whose generator is in the same state) and this rank takes its contiguous share, so the
    rotations are those one process would draw.
    """
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotate_flip_batch needs a [B, C, H, W] batch with H == W, got {tuple(x.shape)}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    batch = x.shape[0]
    mine = slice(rank * batch, (rank + 1) * batch)
    turns = torch.randint(0, 4, (batch * world_size,), generator=generator, device=device)[mine]
    draws = torch.rand(batch * world_size, generator=generator, device=device)[mine]
    groups = [torch.nonzero(turns == k).flatten() for k in range(4)]
    order = torch.cat(groups)  # the samples grouped by rotation
    # Indices and flips reach x's device in one copy that does not wait for the device.
    plan = to_device(torch.stack([order, torch.argsort(order), (draws < 0.5).long()]), x.device)
    sizes = [len(rows) for rows in groups]
    chunks = torch.split(x[plan[0]], sizes)
    rotated = torch.cat([torch.rot90(chunk, k, dims=(2, 3)) for k, chunk in enumerate(chunks)])
    out = rotated[plan[1]]  # back to the input order
    return torch.where(plan[2].bool()[:, None, None, None], out.flip(2), out)
