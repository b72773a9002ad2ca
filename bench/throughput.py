"""Training and inference throughput, and peak memory, of one config, beside a plain loop.

Each measurement runs in its own process (so that its peak memory is its own):
- `plain`: a plain PyTorch loop of the same timm backbone (CE, Adam) over the same training
  images and transforms, one epoch;
- `ce` and `crckd`: one epoch of `crckd train` with the config (evaluation not counted);
- `predict`: the trained `ce` student predicting every image of the dataset.
Writes JSON with images/s, peak resident memory (and peak CUDA memory on a GPU).

    python bench/throughput.py -c configs/benchmark/ham10000_cpu.yaml \
        data.root=../shared/data/ham10000 --out bench/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import timm
import torch

from crckd.config import deep_merge
from crckd.data import load_table, train_transform
from crckd.data.cache import DecodedImages
from crckd.engine import train
from crckd.engine.data import make_loader, prepare_data
from crckd.methods import build_config, load_config
from crckd.models import input_normalization
from crckd.tools import predict_paths


def plain_loop(config) -> float:
    """Images/s of one epoch of a plain timm + CE + Adam loop on the training split, fed by
    the same images, augmentation and cache as crckd, but the usual float loader (normalised in
    the loading process, where the trainer normalises uint8 batches on the device)."""
    data = prepare_data(config)
    model = timm.create_model(config.model.backbone, num_classes=len(data.classes))
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = input_normalization(config.model.backbone, config.model.pretrained)
    images = None
    if config.data.cache:  # the same decoded images as the crckd runs
        paths = data.table.frame["path"].tolist()
        images = DecodedImages.open(paths, config.data.image_size, config.data.cache_dir)
        images = images.subset(data.train)
    loader = make_loader(
        data.paths(data.train),
        data.labels(data.train),
        train_transform(config.data.image_size, norm),
        batch_size=config.train.batch_size,
        shuffle=True,
        num_workers=0,
        images=images,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        images = batch["image"]
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(images), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - started)


def crckd_epoch(config, method: str, out: Path) -> float:
    """Training images/s of one epoch of `crckd train` (from epochs.csv)."""
    raw = deep_merge(
        config.model_dump(mode="json"),
        {"method": {"name": method}, "train": {"epochs": 1}, "output_dir": str(out / method)},
    )
    result = train(build_config(raw, source="throughput"), overwrite=True)
    epochs = pd.read_csv(result.run_dir / "epochs.csv")
    split = pd.read_csv(result.run_dir / "split.csv")
    return int((split["split"] == "train").sum()) / float(epochs["train_seconds"].iloc[0])


def predict_rate(config, out: Path) -> float:
    """Images/s of `crckd predict` with the `ce` student on every image of the dataset."""
    table = load_table(config.data.dataset, config.data.root)
    paths = table.frame["path"].tolist()
    started = time.perf_counter()
    predict_paths(out / "ce" / "checkpoints" / "best.pt", paths, out / "preds.csv", progress=False)
    return len(paths) / (time.perf_counter() - started)


def measure(mode: str, args: argparse.Namespace) -> dict:
    config = load_config(args.config, args.overrides)
    if mode == "plain":
        rate = plain_loop(config)
    elif mode == "predict":
        rate = predict_rate(config, args.work)
    else:
        rate = crckd_epoch(config, mode, args.work)
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return {"images_per_second": rate, **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--mode", choices=["plain", "ce", "crckd", "predict"])
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args()
    if args.mode:  # one measurement, in this process
        print(json.dumps(measure(args.mode, args)))
        return

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("plain", "ce", "crckd", "predict"):
            command = [sys.executable, __file__, "-c", args.config, *args.overrides]
            command += ["--mode", mode, "--work", work]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
            print(mode, results[mode])
    report = {
        "config": args.config,
        "overrides": args.overrides,
        "results": results,
        "crckd_over_ce_epoch_time": results["ce"]["images_per_second"]
        / results["crckd"]["images_per_second"],
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
