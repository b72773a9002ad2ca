"""Image transforms of the CRCKD paper, and the teacher-view rotation/flip of a batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD


Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_NORMALIZATION: Normalization = (IMAGENET_MEAN, IMAGENET_STD)


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
        T.Resize((image_size, image_size)),
        T.RandomAffine(degrees=10, translate=(0.02, 0.02)),
        T.RandomHorizontalFlip(),
    ]
    if not to_float:
        return T.Compose([*augment, T.PILToTensor()])
    return T.Compose([*augment, T.ToTensor(), T.Normalize(*normalization)])


def normalize_images(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 images [B, 3, H, W] to float32, scaled and normalised as ToTensor + Normalize do
    (the same operations, so the same numbers), on the images' device."""
    mean, std = (
        torch.tensor(values, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        for values in normalization
    )
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def eval_transform(
    image_size: int, normalization: Normalization = IMAGENET_NORMALIZATION
) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic resize and normalisation, for validation, testing and prediction."""
    return T.Compose(
        [
            T.Resize((image_size, image_size)),
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
    flips = (draws < 0.5).to(x.device)
    groups = [torch.nonzero(turns == k).flatten() for k in range(4)]
    rotated = torch.cat(
        [torch.rot90(x[rows.to(x.device)], k, dims=(2, 3)) for k, rows in enumerate(groups)]
    )
    out = rotated[torch.argsort(torch.cat(groups)).to(x.device)]  # back to the input order
    return torch.where(flips[:, None, None, None], out.flip(2), out)
