"""Time the host-side cost CRCKD's pseudo-labels add to a step, at N = 10,000 bank rows.

Per step, with a quarter of the rows labelled (7 classes) and the rest unlabelled: the
teacher's pseudo-labels of a batch are written to the bank labels (`CRCKD.pseudo_label`, on
the CPU here), and before the next draw the contrast sampler takes them (`relabel`, which
re-sorts the N labels when one changed). The contrast draw itself (P = 20, K = 4096), which
every CRCKD step makes with or without unlabelled images, is timed alongside for scale. The
teacher's logits are random, so that about half the unlabelled rows of a batch change class
each step (the worst case: a rebuild every step). Writes JSON.

    python bench/pseudo_label_overhead.py --out bench/results/pseudo_label_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from crckd.methods import MethodContext, get_method, load_config
from crckd.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-data", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    classes = 7
    labels = rng.integers(0, classes, args.n_data)
    labels[rng.random(args.n_data) >= 0.25] = -1
    config = load_config(overrides=["method.name=crckd", "method.semi.threshold=0.5"])
    context = MethodContext(classes, labels, torch.ones(classes), epochs=80)
    method = get_method("crckd").cls(
        build_model("test_efficientnet", classes), config.method, context
    )
    method.seed(0)
    label_ms, draw_ms = [], []
    for _ in range(args.steps):
        index = torch.from_numpy(rng.choice(args.n_data, args.batch_size, replace=False))
        logits = torch.randn(args.batch_size, classes) * 3
        start = time.perf_counter()
        method._receive_pseudo_labels()
        middle = time.perf_counter()
        method.contrast_indices(index)
        end = time.perf_counter()
        method.pseudo_label(logits, index)
        label_ms.append(1e3 * (middle - start + time.perf_counter() - end))
        draw_ms.append(1e3 * (end - middle))
    result = {
        "n_data": args.n_data,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pseudo_label_ms_median": statistics.median(label_ms),
        "pseudo_label_ms_p95": float(np.percentile(label_ms, 95)),
        "contrast_draw_ms_median": statistics.median(draw_ms),
        "bank_rows_with_a_class": int((method.bank_labels >= 0).sum()),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
