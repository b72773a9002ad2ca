"""Build the small HAM10000 sample shipped in src/crckd/sample/ham10000 (for `crckd demo`).

Picks whole lesions (every image of a chosen lesion, or none) per class at random with a fixed
seed until the class has about `--per-class` images, shrinks them to fit 80x60 (keeping the aspect
ratio) and writes them as JPEG in the HAM10000 layout, with the dataset's licence notice.

    python scripts/make_sample.py --source /path/to/ham10000
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from crckd.data import HAM10000_CLASSES, load_table, open_rgb

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "crckd" / "sample" / "ham10000"
IMAGES = "HAM10000_images_part_1"
LICENSE = """\
HAM10000 sample
===============

This folder holds a small subset of the HAM10000 dataset: {n_images} images of {n_lesions} lesions,
chosen at random (whole lesions only, seed {seed}) and resized to fit {width}x{height} pixels
(aspect ratio kept, JPEG quality {quality}). It is a resized subset, not the original data; it is
shipped for demonstrations and tests only.

Licence: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International (CC BY-NC-SA 4.0),
https://creativecommons.org/licenses/by-nc-sa/4.0/ . Non-commercial use only; give attribution;
share adaptations under the same licence.

Citation:
Tschandl P., Rosendahl C., Kittler H. "The HAM10000 dataset, a large collection of multi-source
dermatoscopic images of common pigmented skin lesions." Sci. Data 5, 180161 (2018).
doi:10.7910/DVN/DBW86T
"""


def choose_lesions(frame: pd.DataFrame, per_class: int, most: int, seed: int) -> list[str]:
    """Lesion ids: per class, random whole lesions until `per_class` images (never over `most`)."""
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for label in range(len(HAM10000_CLASSES)):
        sizes = frame[frame["label"] == label].groupby("group").size().sort_index()
        count = 0
        for position in rng.permutation(len(sizes)):
            if count >= per_class:
                break
            if count + sizes.iloc[position] <= most:
                chosen.append(sizes.index[position])
                count += sizes.iloc[position]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="HAM10000 folder (Kaggle layout)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--per-class", type=int, default=42)
    parser.add_argument("--max-per-class", type=int, default=45)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()

    table = load_table("ham10000", args.source)
    lesions = choose_lesions(table.frame, args.per_class, args.max_per_class, args.seed)
    selected = table.frame[table.frame["group"].isin(lesions)]
    meta = pd.read_csv(
        args.source / "HAM10000_metadata.csv",
        dtype=str,
        keep_default_na=False,
        encoding="utf-8-sig",
    )
    meta = meta[meta["image_id"].isin(selected["image_id"])]

    images = args.out / IMAGES
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for image_id, path in zip(selected["image_id"], selected["path"], strict=True):
        image = open_rgb(path)
        scale = min(args.width / image.width, args.height / image.height)
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, resample=Image.Resampling.LANCZOS).save(
            images / f"{image_id}.jpg", quality=args.quality
        )
    meta.to_csv(args.out / "HAM10000_metadata.csv", index=False)
    notice = LICENSE.format(
        n_images=len(meta),
        n_lesions=len(lesions),
        seed=args.seed,
        width=args.width,
        height=args.height,
        quality=args.quality,
    )
    (args.out / "LICENSE.txt").write_text(notice)
    counts = selected["label"].value_counts().reindex(range(len(HAM10000_CLASSES)), fill_value=0)
    print(dict(zip(HAM10000_CLASSES, counts.tolist(), strict=True)), f"{len(meta)} images")


if __name__ == "__main__":
    main()
