"""Command-line interface: a thin layer over the library (`crckd.engine`, `crckd.tools`,
`crckd.demo`).

User errors (config, data, checkpoints, run folders) print one message and exit with code 2,
before any training starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from crckd import __version__
from crckd.cli_check import add_commands as add_check_commands
from crckd.cli_results import add_commands as add_result_commands
from crckd.errors import CrckdError

EXIT_USER_ERROR = 2


def _cmd_train(args: argparse.Namespace) -> None:
    from crckd.config import apply_overrides, config_source, read_yaml
    from crckd.engine import RunFolder, train
    from crckd.engine.metrics import format_metrics_table
    from crckd.methods import build_config

    if args.resume:
        run = RunFolder(Path(args.resume))
        if not run.config.exists():
            hint = ""
            if run.root.suffix == ".pt":  # a checkpoint: its run folder is two levels up
                hint = f"; did you mean --resume {run.root.parent.parent}?"
            raise CrckdError(
                f"--resume {args.resume}: no config.yaml there, not a run folder{hint}"
            )
        raw = read_yaml(run.config)
        raw["output_dir"] = str(run.root)
    elif args.config:
        raw = read_yaml(args.config)
    else:
        raw = {}
    raw = apply_overrides(raw, args.overrides)
    source = config_source(args.resume or args.config, args.overrides)
    config = build_config(raw, source=source)
    result = train(config, resume=bool(args.resume), overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(format_metrics_table(result.metrics))
        print(f"run folder: {result.run_dir}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from crckd.engine.metrics import format_metrics_table
    from crckd.tools import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        args.data_root,
        args.out,
        split=args.split,
        split_file=args.split_file,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(format_metrics_table(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from crckd.tools import predict_paths

    frame = predict_paths(
        args.checkpoint, args.paths, args.out, batch_size=args.batch_size, device=args.device
    )
    print(f"{len(frame)} images -> {args.out}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from crckd.demo import run_demo

    run_demo(Path(args.out), methods=args.methods, epochs=args.epochs)


def _cmd_compare(args: argparse.Namespace) -> None:
    from crckd.config import apply_overrides, read_yaml
    from crckd.engine.lock import RunLock
    from crckd.tools.compare import check_reference

    reference = check_reference(args.methods, args.reference)  # before hours of training
    raw = apply_overrides(read_yaml(args.config), args.overrides)
    out = Path(args.out)
    with RunLock(out):  # one writer of OUT, its runs and its tables
        _compare(args, raw, out, reference)


def _compare(args: argparse.Namespace, raw: dict, out: Path, reference: str) -> None:
    from crckd.tools.compare import (
        differences_in_words,
        markdown_table,
        plan_runs,
        run_comparison,
        write_comparison,
    )

    frame = run_comparison(raw, args.methods, args.seeds, out, folds=args.folds)
    comparison = write_comparison(frame, out, reference)
    print(markdown_table(comparison.summary))
    written = ["comparison.md", "comparison.csv", "comparison.png"]
    diff = comparison.differences
    if diff is None:
        print("note: one method only, so no differences to a reference")
    else:
        print(f"Differences to {reference} (95 % intervals; better or worse only if 0 is outside):")
        for line in differences_in_words(diff):
            print(f"  {line}")
        for note in diff.notes:
            print(f"note: {note}")
        written += ["differences.csv", "differences_last_epochs.csv", "bootstrap.csv"]
    print("comparison: " + ", ".join(str(out / name) for name in written))
    if args.report:
        from crckd.tools.report import write_report

        plan = plan_runs(args.methods, args.seeds, args.folds)
        runs = [out / run.method / run.name for run in plan]
        report = write_report(
            [run for run in runs if (run / "metrics.json").exists()],
            out / "report",
            differences=diff,
        )
        print(f"report: {report.index}")


def _cmd_tune(args: argparse.Namespace) -> None:
    from crckd.config import apply_overrides, config_source, read_yaml
    from crckd.tools.tune import tune

    result = tune(
        apply_overrides(read_yaml(args.config), args.overrides),
        read_yaml(args.space),
        Path(args.out),
        trials=args.trials,
        metric=args.metric,
        sampler=args.sampler,
        seed=args.seed,
        prune=not args.no_prune,
        source=config_source(args.config, args.overrides),
        space_source=args.space,
    )
    if result.best_trial is not None:
        print(f"best: trial {result.best_trial}, val {result.metric} {result.best_value:.4f}")
        print(f"best config: {result.out / 'best.yaml'} (train it with crckd train -c)")
    print(f"trials: {result.out / 'trials.md'}, {result.out / 'trials.csv'}")


def _cmd_methods(args: argparse.Namespace) -> None:
    from crckd.config import flat_settings
    from crckd.methods import available_methods, method_schedules

    specs = available_methods()
    width = max(len(spec.name) for spec in specs)
    for spec in specs:
        print(f"{spec.name:<{width}}  {spec.summary}\n{'':<{width}}  [{spec.reference}]")
        if spec.defaults:
            settings = flat_settings(spec.defaults, prefix="method.")
            listed = " ".join(f"{key}={value}" for key, value in settings.items())
            print(f"{'':<{width}}  defaults: {listed}")
        for mode, schedule in method_schedules(spec).items():
            print(f"{'':<{width}}  schedule={mode}: {schedule}")
        unlabeled = (
            "learns from them too" if spec.cls.learns_from_unlabeled else "uses the labelled only"
        )
        print(f"{'':<{width}}  with unlabelled images: {unlabeled}")


def build_parser() -> argparse.ArgumentParser:
    """The `crckd` argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="crckd",
        description="Knowledge distillation for medical image classification (CRCKD, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"crckd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("-c", "--config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a run in output_dir")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset folder")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--dataset", required=True, choices=["ham10000", "aptos", "csv", "imagefolder"])
    p.add_argument("--data-root", required=True, help="dataset folder, as downloaded")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train", "all"],
        help="'all' evaluates every image (external test set); others use the run's split",
    )
    p.add_argument("--split-file", help="split.csv to use instead of the run's")
    p.add_argument(
        "--out", required=True, help="folder for metrics.json, per_class.csv and predictions.csv"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="class probabilities for image files or folders")
    p.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        help="best.pt or last.pt of a run, or a model from `crckd export` (its card beside it)",
    )
    p.add_argument("--out", required=True, help="CSV to write (one row per image)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="train ce, mt and crckd on the shipped HAM10000 sample")
    p.add_argument("--out", default="runs/demo", help="parent folder of the demo runs")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["ce", "mt", "crckd"],
        help="methods to train (crckd methods)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "compare", help="train methods x seeds (x folds) from one config and tabulate them"
    )
    p.add_argument("-c", "--config", required=True, help="YAML config shared by every run")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    p.add_argument("--methods", nargs="+", required=True, help="method names (crckd methods)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--folds", nargs="+", type=int, help="test folds of a kfold split (APTOS)")
    p.add_argument("--out", required=True, help="folder of the runs and the comparison files")
    p.add_argument(
        "--reference",
        default="ce",
        help="method the others are compared with: differences with 95%% intervals (default ce)",
    )
    p.add_argument("--report", action="store_true", help="also write OUT/report/index.html")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "tune", help="search hyper-parameters on the validation split (Optuna; resumable)"
    )
    p.add_argument("-c", "--config", required=True, help="YAML config every trial starts from")
    p.add_argument("overrides", nargs="*", help="dotted overrides of that config")
    p.add_argument("--space", required=True, help="YAML search space (docs/tune.md)")
    p.add_argument("--trials", type=int, required=True, help="trials wanted in all (resumes)")
    p.add_argument("--out", required=True, help="folder of study.db, trial runs and results")
    p.add_argument("--metric", help="validation metric to maximise (default train.select_metric)")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--seed", type=int, help="sampler seed (reproducible studies)")
    p.add_argument("--no-prune", action="store_true", help="never stop a trial early")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "methods", help="list the registered methods, their papers and default settings"
    )
    p.set_defaults(func=_cmd_methods)
    add_result_commands(sub)
    add_check_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `crckd` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a broken pipe shows here, not as an error at interpreter exit
    except CrckdError as exc:
        print(f"crckd: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("crckd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    return 0


if __name__ == "__main__":
    sys.exit(main())
