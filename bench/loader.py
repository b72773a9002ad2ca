"""Images per second of the data loader alone, against what a training step consumes.

For each source (the files, or the decoded cache), iterates the training loader of a config
(two augmented views per image, as CRCKD needs, as uint8 tensors: the trainer normalises them
on the device) and reports images/s; then times training steps
of the same config on random tensors to get the rate the model consumes images at. Writes JSON.

    python bench/loader.py -c configs/benchmark/ham10000_cpu.yaml \
        data.root=../shared/data/ham10000_fullres_sample --out bench/results/loader.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from crckd.data import load_table, train_transform
from crckd.data.cache import DecodedImages
from crckd.engine.data import make_loader
from crckd.methods import load_config
from step_overhead import StepRunner


def loader_rate(config, images: DecodedImages | None, batches: int) -> float:
    """Images/s of the training loader over at least `batches` batches (whole passes)."""
    table = load_table(config.data.dataset, config.data.root)
    paths = table.frame["path"].tolist()
    workers = 0 if config.data.num_workers == "auto" else config.data.num_workers
    loader = make_loader(
        paths,
        table.frame["label"].to_numpy(),
        train_transform(config.data.image_size, to_float=False),  # as the trainer loads
        batch_size=config.train.batch_size,
        shuffle=True,
        num_workers=workers,
        views=2,
        images=images,
    )
    next(iter(loader))  # warm-up: first batch
    started, images_seen = time.perf_counter(), 0
    while images_seen < batches * config.train.batch_size:
        for batch in loader:  # a fresh pass each time: every image decoded and augmented
            images_seen += len(batch["index"])
    return images_seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loader.json"))
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)

    table = load_table(config.data.dataset, config.data.root)
    # Time the model first: after the loaders' threads and processes it ran erratically here.
    step_args = argparse.Namespace(
        backbone=config.model.backbone,
        image_size=config.data.image_size,
        batch_size=config.train.batch_size,
        num_classes=len(table.classes),
        n_data=len(table.frame),
    )
    runner = StepRunner("crckd", step_args)
    runner.timed_step()
    step = sorted(runner.timed_step() for _ in range(args.steps))[args.steps // 2]
    consumed = config.train.batch_size / step
    rates = {"files": loader_rate(config, None, args.batches)}
    with tempfile.TemporaryDirectory() as cache_dir:
        started = time.perf_counter()
        images = DecodedImages.open(
            table.frame["path"].tolist(), config.data.image_size, Path(cache_dir)
        )
        build_seconds = time.perf_counter() - started
        rates["cache"] = loader_rate(config, images, args.batches)

    result = {
        "config": str(args.config),
        "overrides": args.overrides,
        "images": len(table.frame),
        "loader_images_per_second": rates,
        "cache_build_seconds": build_seconds,
        "crckd_step_images_per_second": consumed,
        "loader_over_training": {k: v / consumed for k, v in rates.items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
