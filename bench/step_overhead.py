"""Time one CRCKD (and MT) training step against one CE step on the same model and batch.

A step is: method losses (student forward, teacher forward, CCD/CRP), backward, Adam step and
the EMA update; data loading is left out, so the ratio measures the method's own cost. Every
term is switched on (the epoch is past every begin_epoch), and the methods are timed in
interleaved rounds so that drift in machine load hits them alike. A gradient-free forward pass
of the same model is timed too: 1 + forward / CE is roughly the least any method whose teacher
runs a forward pass every step can cost. Writes JSON.

    python bench/step_overhead.py --out bench/results/step_overhead.json
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


class StepRunner:
    """One method with its optimiser, able to run timed training steps on random batches."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        config = load_config(overrides=[f"method.name={name}"])
        self.labels = np.arange(args.n_data) % args.num_classes
        context = MethodContext(
            args.num_classes, self.labels, torch.ones(args.num_classes), epochs=80
        )
        student = build_model(args.backbone, args.num_classes)
        self.method = get_method(name).cls(student, config.method, context).train()
        self.optimizer = torch.optim.Adam(self.method.trainable_parameters(), lr=1e-4)
        self.args = args
        self.step = 0

    def timed_forward(self) -> float:
        """Seconds for one forward pass of the student without gradient, in training mode: what
        an EMA teacher's forward pass on its view adds to a step, at least."""
        args = self.args
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        started = time.perf_counter()
        with torch.no_grad():
            self.method.student(images)
        return time.perf_counter() - started

    def timed_step(self) -> float:
        """Seconds for one step with every term of the method switched on."""
        args, epoch = self.args, 30
        index = torch.randint(0, args.n_data, (args.batch_size,))
        shape = (args.batch_size, 3, args.image_size, args.image_size)
        batch = {
            "image": torch.randn(shape),
            "image2": torch.randn(shape),
            "label": torch.as_tensor(self.labels[index.numpy()]),
            "index": index,
        }
        started = time.perf_counter()
        weights = self.method.loss_weights(epoch)
        terms = self.method.training_losses(batch, epoch, weights)
        total = sum(weights[k] * v for k, v in terms.items() if weights[k])
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.method.after_step(self.step)
        self.step += 1
        return time.perf_counter() - started


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of numerator / denominator timed in the same round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--n-data", type=int, default=5961, help="bank size (HAM10000 train)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/results/step_overhead.json"))
    args = parser.parse_args()

    names = ("ce", "mt", "crckd")
    runners = {name: StepRunner(name, args) for name in names}
    timers = {name: runners[name].timed_step for name in names}
    timers["forward"] = runners["ce"].timed_forward
    times: dict[str, list[float]] = {name: [] for name in timers}
    # Interleave the measurements so that any drift in machine load hits them alike.
    for round_ in range(args.warmup + args.repeats):
        for name, timer in timers.items():
            seconds = timer()
            if round_ >= args.warmup:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name in timers:
        print(f"{name:8s} median {medians[name] * 1000:.1f} ms")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "median_step_seconds": {name: medians[name] for name in names},
        "median_forward_seconds": medians["forward"],
        "seconds_per_round": times,
        # Medians of the per-round ratios: each round times every measurement back to back,
        # so a ratio within a round is not moved by slower or faster stretches of the machine.
        "ratio_mt_over_ce": paired_ratio(times["mt"], times["ce"]),
        "ratio_crckd_over_ce": paired_ratio(times["crckd"], times["ce"]),
        # A CE step plus one gradient-free forward pass timed alone: roughly the least a method
        # whose teacher runs a forward pass every step can cost.
        "ratio_ce_plus_one_forward": 1 + paired_ratio(times["forward"], times["ce"]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cpu",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"CRCKD / CE = {result['ratio_crckd_over_ce']:.3f}  ->  {args.out}")


if __name__ == "__main__":
    main()
