"""Long runs stay flat: train a tiny configuration for many epochs and record, after every
epoch, the process's resident memory, its open file descriptors, and the size of the run folder
(and of its TensorBoard events, epochs.csv and checkpoints). Writes JSON with one row per epoch
and the growth per 100 epochs of each (least-squares slope over the epochs after a warm-up).

The data are a few generated images (3 classes of flat colours with noise, in an ImageFolder
layout), so the numbers measure the training loop, not the data set.

    python bench/long_run.py --epochs 200 --out bench/results/long_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crckd.engine import Trainer
from crckd.methods import load_config

try:
    import psutil
except ImportError:  # /proc/self is read instead
    psutil = None

CLASSES = ("red", "green", "blue")


def make_images(root: Path, per_class: int) -> Path:
    """An ImageFolder of `per_class` 32 x 32 images per class, each class its own colour."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(32, 32, 3))
            pixels[..., index] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}{i}.png")
    return root


def resident_bytes() -> int:
    if psutil is not None:
        return psutil.Process().memory_info().rss
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def open_files() -> int:
    if psutil is not None:
        return psutil.Process().num_fds()
    return len(os.listdir("/proc/self/fd"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class SampledTrainer(Trainer):
    """A Trainer that records the process and its run folder after every epoch."""

    samples: list[dict[str, Any]]

    def _run_epoch(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        if epoch > 0:  # the previous epoch, its checkpoint and logs written
            self.sample(epoch - 1)
        return super()._run_epoch(epoch, state)

    def sample(self, epoch: int) -> None:
        run = self.run.root
        self.samples.append(
            {
                "epoch": epoch,
                "rss_bytes": resident_bytes(),
                "open_files": open_files(),
                "folder_bytes": folder_bytes(run),
                "tensorboard_bytes": folder_bytes(run / "tensorboard"),
                "epochs_csv_bytes": self.run.epochs.stat().st_size,
                "checkpoints_bytes": folder_bytes(run / "checkpoints"),
                "files": sum(1 for p in run.rglob("*") if p.is_file()),
                "seconds": time.perf_counter(),
            }
        )


def growth_per_100_epochs(samples: list[dict[str, Any]], key: str, warmup: int) -> float:
    """Least-squares slope of `key` over the epochs from `warmup` on, times 100."""
    rows = [s for s in samples if s["epoch"] >= warmup]
    if len(rows) < 2:
        return 0.0
    slope = np.polyfit([s["epoch"] for s in rows], [s[key] for s in rows], 1)[0]
    return float(slope * 100)


def report_json(report: dict[str, Any]) -> str:
    """The report as indented JSON with one line per epoch."""
    rows = ",\n    ".join(json.dumps(row) for row in report["per_epoch"])
    text = json.dumps({**report, "per_epoch": "ROWS"}, indent=2)
    return text.replace('"ROWS"', f"[\n    {rows}\n  ]") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--warmup", type=int, default=None, help="default: a tenth of the epochs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/long_run.json"))
    args = parser.parse_args()
    warmup = args.epochs // 10 if args.warmup is None else args.warmup
    torch.set_num_threads(1)  # a steady load on a shared machine

    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "images", args.images_per_class)
        overrides = [
            "data.dataset=imagefolder",
            f"data.root={data}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.val_fraction=0.2",
            f"model.backbone={args.backbone}",
            "train.batch_size=8",
            f"train.epochs={args.epochs}",
            "train.device=cpu",
            "train.progress=false",
            f"output_dir={Path(tmp) / 'run'}",
        ]
        trainer = SampledTrainer(load_config(overrides=overrides))
        trainer.samples = []
        started = time.perf_counter()
        trainer.fit()
        trainer.sample(args.epochs - 1)
        samples = trainer.samples

    for row in samples:
        row["seconds"] -= started
    keys = ("rss_bytes", "open_files", "folder_bytes", "tensorboard_bytes", "epochs_csv_bytes")
    keys += ("checkpoints_bytes", "files")
    report = {
        "epochs": args.epochs,
        "images": args.images_per_class * len(CLASSES),
        "backbone": args.backbone,
        "image_size": 32,
        "warmup_epochs": warmup,
        "memory_source": "psutil" if psutil is not None else "/proc/self/statm",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "seconds": samples[-1]["seconds"],
        "growth_per_100_epochs": {key: growth_per_100_epochs(samples, key, warmup) for key in keys},
        "first": {key: samples[0][key] for key in keys},
        "last": {key: samples[-1][key] for key in keys},
        "per_epoch": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report_json(report))
    growth = report["growth_per_100_epochs"]
    print(
        f"{args.epochs} epochs in {report['seconds']:.0f}s; per 100 epochs: resident memory "
        f"{growth['rss_bytes'] / 2**20:+.2f} MiB, open files {growth['open_files']:+.2f}, "
        f"run folder {growth['folder_bytes'] / 2**10:+.1f} KiB -> {args.out}"
    )


if __name__ == "__main__":
    main()
