"""Paper-scale HAM10000 reproduction on one GPU: DenseNet-121, 224 px, batch 64, CE and CRCKD.

The schedule's epochs are scaled from the paper's 80 to `--epochs` (MT and CRP start at 25 %
of training, the consistency ramp lasts 37.5 %); the scale issue asks that a 30-epoch CRCKD
run fit in 8 minutes on an H100 (docs/performance.md has what was measured). Prints training
images/s, the share of training time spent waiting for the data loader, and the test metrics,
and writes JSON.

    python bench/gpu_reproduce.py --data-root /data/HAM10000 --out runs/gpu
    # a variant: any config key, e.g. torch.compile
    python bench/gpu_reproduce.py --data-root /data/HAM10000 --methods crckd --out runs/gpu_c \
        train.compile=true
    # on the CPU, tiny (what the test suite runs):
    python bench/gpu_reproduce.py --data-root tiny --epochs 1 --image-size 32 \
        --backbone resnet18 --batch-size 16 --workers 0 --device cpu --out /tmp/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from crckd.config import apply_overrides
from crckd.engine import train
from crckd.engine.metrics import SCALAR_METRICS
from crckd.methods import build_config

PAPER_EPOCHS, PAPER_BEGIN, PAPER_RAMPUP = 80, 20, 30


def run_config(args: argparse.Namespace, method: str) -> dict:
    """The paper's HAM10000 settings with the schedule scaled to `args.epochs`."""
    scale = args.epochs / PAPER_EPOCHS
    begin = round(PAPER_BEGIN * scale)
    return {
        "data": {
            "dataset": "ham10000",
            "root": str(args.data_root),
            "image_size": args.image_size,
            "num_workers": args.workers,
            "cache": args.cache,
        },
        "model": {"backbone": args.backbone, "pretrained": args.pretrained},
        "method": {
            "name": method,
            "consistency": {"begin_epoch": begin, "rampup_epochs": PAPER_RAMPUP * scale},
            "crp": {"begin_epoch": begin},
        },
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "report_last_k": max(1, round(11 * scale)),
        },
        "output_dir": str(args.out / method),
    }


def summarize_run(run_dir: Path, seconds: float) -> dict:
    """Throughput from epochs.csv and the test metrics of metrics.json."""
    epochs = pd.read_csv(run_dir / "epochs.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    split = pd.read_csv(run_dir / "split.csv")
    n_train = int((split["split"] == "train").sum())
    return {
        "train_images_per_second": n_train * len(epochs) / epochs["train_seconds"].sum(),
        "epoch_seconds_median": float(epochs["train_seconds"].median()),
        # Near 1: the loader bounds training; near 0: the model (device or host) does.
        "data_wait_fraction": float(
            epochs["data_wait_seconds"].sum() / epochs["train_seconds"].sum()
        ),
        "wall_seconds": seconds,
        "test": {key: metrics[key] for key in SCALAR_METRICS},
        "test_last_epochs_mean": metrics["last_epochs_mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="HAM10000 folder")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_reproduce"))
    parser.add_argument("--methods", nargs="+", default=["ce", "crckd"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--pretrained", default=False, help="false, true or a weights file")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="decode and resize the images once (data.cache); off: read the files",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides applied last, e.g. train.compile=true train.channels_last=false",
    )
    args = parser.parse_args()
    if args.pretrained in ("false", "true"):
        args.pretrained = args.pretrained == "true"

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    report = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "device": device,
        "torch": torch.__version__,
        "results": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        raw = apply_overrides(run_config(args, method), args.overrides)
        config = build_config(raw, source="gpu_reproduce")
        started = time.perf_counter()
        result = train(config, overwrite=True)
        row = summarize_run(result.run_dir, time.perf_counter() - started)
        report["results"][method] = row
        # Written after every method, so a run cut off later keeps the finished ones.
        (args.out / "gpu_reproduce.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"{method}: {row['train_images_per_second']:.0f} train images/s "
            f"({row['data_wait_fraction']:.0%} of it waiting for data), "
            f"{row['wall_seconds']:.0f} s wall, test balanced accuracy "
            f"{row['test']['balanced_accuracy']:.3f}, AUC {row['test']['auc_macro']:.3f}"
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
