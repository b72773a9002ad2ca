"""The `check-data` command: a thin layer over `crckd.data.check.check_dataset`.

It prints the report (or its JSON with `--json`); errors in the data end it with a DataError,
which `crckd.cli.main` turns into exit code 2.
"""

from __future__ import annotations

import argparse
import json


def _cmd_check_data(args: argparse.Namespace) -> None:
    from crckd.data import check_dataset
    from crckd.errors import DataError

    report = check_dataset(
        args.dataset,
        args.data_root,
        csv=args.csv,
        classes=args.classes,
        split_file=args.split_file,
        unlabeled_root=args.unlabeled_root,
        max_pixels=args.max_pixels,
        workers=args.workers,
        progress=not args.json,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    if not report.ok:
        raise DataError(f"{len(report.errors)} kind(s) of error in {report.root}; see above")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `check-data` to the `crckd` subcommands."""
    p = subparsers.add_parser(
        "check-data",
        help="read every label row and open every image once; report all problems",
        description="Check a dataset folder as training would read it. Errors (missing, empty, "
        "truncated or undecodable images, images over the pixel limit, duplicate ids, unknown "
        "labels, classes without training images, lesions crossing sets) exit with code 2; "
        "notes (non-RGB images converted, a CSV with a BOM, unused columns) do not.",
    )
    p.add_argument("--dataset", required=True, choices=["ham10000", "aptos", "csv", "imagefolder"])
    p.add_argument("--data-root", required=True, help="dataset folder, as downloaded")
    p.add_argument("--csv", help="labels CSV (default: the layout's, e.g. labels.csv)")
    p.add_argument("--classes", nargs="+", help="class order for csv/imagefolder data")
    p.add_argument("--split-file", help="a split.csv to check against the data (leaks, classes)")
    p.add_argument(
        "--unlabeled-root",
        help="a folder of unlabelled images (data.unlabeled_root): open its images too",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        help="refuse larger images (default: $CRCKD_MAX_IMAGE_PIXELS or 89478485)",
    )
    p.add_argument("--workers", type=_positive_int, help="threads opening images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_check_data)
