"""Commands that look at and ship results: `report`, `embed`, `explain`, `export`.

A thin layer over `crckd.tools.report`, `.embed`, `.explain` and `.export`; CrckdError
propagates to `crckd.cli.main`, which prints it and exits with code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_report(args: argparse.Namespace) -> None:
    from crckd.tools.report import write_report

    result = write_report(
        args.run_dirs,
        args.out,
        data_root=args.data_root,
        batch_size=args.batch_size,
        device=args.device,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"report: {result.index}")


def _cmd_embed(args: argparse.Namespace) -> None:
    from crckd.tools.embed import embed_run, embed_table

    results = []
    for i, run_dir in enumerate(args.run_dirs):
        out = None
        if args.out is not None:
            out = Path(args.out) / f"{i}-{Path(run_dir).resolve().name}"
        result = embed_run(
            run_dir,
            out,
            data_root=args.data_root,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
        )
        if result["teacher"] is None:
            print(f"note: {run_dir}: {result['teacher_note']}; t-SNE shows the student only")
        results.append(result)
    print(embed_table(results).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _cmd_explain(args: argparse.Namespace) -> None:
    from crckd.tools.explain import explain_images

    table = explain_images(
        args.checkpoint,
        args.images,
        args.out,
        layer=args.layer,
        target_class=args.target_class,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"{len(table)} Grad-CAM overlays (layer {table['layer'].iloc[0]}) -> {args.out}")


def _cmd_export(args: argparse.Namespace) -> None:
    from crckd.tools.export import export_student

    result = export_student(
        args.checkpoint,
        args.out,
        fmt=args.format,
        images=args.images,
        max_images=args.max_images,
        tolerance=args.tolerance,
    )
    print(
        f"parity with PyTorch: max |diff| of the probabilities {result.max_abs_diff:.2e} "
        f"on {result.num_images} images"
    )
    print(f"model: {result.model}\nmodel card: {result.card}")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root", help="dataset folder, if not where the run's config.yaml says (all runs)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report`, `embed`, `explain` and `export` subcommands to the crckd parser."""
    p = subparsers.add_parser(
        "report",
        help="HTML report of runs: curves, confusion matrix, ROC, calibration",
        description="Write index.html and its PNGs. Several runs are compared side by side.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (crckd train)")
    p.add_argument("--out", help="output folder (default RUN_DIR/report; needed for several)")
    _add_data_options(p)
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "embed",
        help="t-SNE and feature statistics of student and teacher on the test split",
        description="Uses checkpoints/last.pt (the teacher is only there). Writes tsne.png and "
        "embed.json per run and prints a table comparing the runs.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (crckd train)")
    p.add_argument("--out", help="parent folder for the runs' outputs (default RUN_DIR/embed)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE random state")
    _add_data_options(p)
    p.set_defaults(func=_cmd_embed)

    p = subparsers.add_parser("explain", help="Grad-CAM overlays of a student's predictions")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default="gradcam", help="folder for the overlays and explain.csv")
    p.add_argument("--layer", help="target module name (default: the backbone family's)")
    p.add_argument(
        "--class", dest="target_class", help="class to explain (default: the predicted one)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_explain)

    p = subparsers.add_parser(
        "export",
        help="export the student to ONNX or TorchScript, with a parity check and a model card",
        description="The exported model outputs class probabilities (softmax).",
    )
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", help="model file (default: next to the checkpoint)")
    p.add_argument(
        "--images", nargs="+", help="images for the parity check (default: the shipped sample)"
    )
    p.add_argument("--max-images", type=int, default=64, help="parity check on at most this many")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| of probabilities")
    p.set_defaults(func=_cmd_export)
