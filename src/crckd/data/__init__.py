"""Data layer: dataset tables, splits, transforms, contrast sampling and the HAM10000 sample."""

from crckd.data.check import DataReport, Finding, check_dataset
from crckd.data.datasets import (
    APTOS_CLASSES,
    HAM10000_CLASSES,
    ImageDataset,
    ImageTable,
    load_table,
)
from crckd.data.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    PIXEL_LIMIT_ENV,
    list_images,
    max_image_pixels,
    open_rgb,
)
from crckd.data.sample import sample_root
from crckd.data.sampling import ContrastSampler
from crckd.data.splits import (
    SPLIT_NAMES,
    check_no_group_leak,
    choose_labeled,
    load_labeled,
    load_split,
    make_split,
    save_split,
    split_csv,
    split_indices,
)
from crckd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
    eval_transform,
    normalize_images,
    rotate_flip_batch,
    train_transform,
)

__all__ = [
    "APTOS_CLASSES",
    "HAM10000_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "PIXEL_LIMIT_ENV",
    "SPLIT_NAMES",
    "ContrastSampler",
    "DataReport",
    "Finding",
    "ImageDataset",
    "ImageTable",
    "Normalization",
    "check_dataset",
    "check_no_group_leak",
    "choose_labeled",
    "eval_transform",
    "list_images",
    "load_labeled",
    "load_split",
    "load_table",
    "make_split",
    "max_image_pixels",
    "normalize_images",
    "open_rgb",
    "rotate_flip_batch",
    "sample_root",
    "save_split",
    "split_csv",
    "split_indices",
    "train_transform",
]
