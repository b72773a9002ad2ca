"""Train/val/test splits: stratified by label, grouped so that no lesion crosses sets.

A split is a `pd.Series` indexed by image_id with values "train", "val" or "test". It is saved
as a CSV next to a run, so that a later evaluation uses exactly the same images. A
semi-supervised run (`data.labeled_fraction`) also keeps which training images keep their
label: a boolean `pd.Series` indexed by the training image ids, the CSV's `labeled` column.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from crckd.data.csvio import csv_line, read_csv
from crckd.data.datasets import ImageTable, first_items
from crckd.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")
SCHEMES = ("auto", "holdout", "kfold")
_MAX_FOLDS = 20  # finest grid used to approximate a fraction by whole folds
_TRUE, _FALSE = "true", "false"


def make_split(
    table: ImageTable,
    *,
    scheme: str = "auto",
    seed: int = 2020,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    n_folds: int = 5,
    fold: int = 1,
) -> pd.Series:
    """Assign every image of `table` to "train", "val" or "test", deterministically per seed.

    "holdout" takes a stratified, grouped test part of `test_fraction`, then a val part of
    `val_fraction` (of the whole) from the rest. "kfold" uses fold `fold` (1-based) of
    `n_folds` stratified folds as test; with unique groups these are the folds of
    StratifiedKFold(n_folds, shuffle=True, random_state=seed), as in the CRCKD reference code
    for APTOS; otherwise StratifiedGroupKFold. "auto" is "kfold" for APTOS, else "holdout".
    Should a class end up with no training image, one of its groups is moved to train.
    """
    scheme = _check_arguments(table, scheme, test_fraction, val_fraction, n_folds, fold)
    labels = table.frame["label"].to_numpy()
    groups = table.frame["group"].to_numpy()
    assigned = np.full(len(labels), "train", dtype=object)
    if scheme == "holdout":
        test = _stratified_part(labels, groups, test_fraction, seed)
    else:
        test = _folds(labels, groups, n_folds, seed)[fold - 1]
    assigned[test] = "test"
    if val_fraction > 0:
        rest = np.flatnonzero(assigned == "train")
        share = val_fraction * len(labels) / len(rest)
        assigned[rest[_stratified_part(labels[rest], groups[rest], share, seed)]] = "val"
    _keep_every_class_in_train(assigned, labels, groups)
    return _series(table.frame["image_id"], assigned)


def check_no_group_leak(table: ImageTable, split: pd.Series) -> None:
    """Raise DataError if the images of one group (a lesion for HAM10000) are in two sets."""
    frame = table.frame.assign(split=split.reindex(table.frame["image_id"]).to_numpy())
    frame = frame.dropna(subset=["split"])
    n_sets = frame.groupby("group", sort=True)["split"].nunique()
    leaking = n_sets.index[n_sets > 1]
    if len(leaking):
        word = "lesion" if table.name == "ham10000" else "group"
        rows = frame[frame["group"] == leaking[0]]
        images = ", ".join(
            f"{i} ({s})" for i, s in zip(rows["image_id"], rows["split"], strict=True)
        )
        raise DataError(
            f"{len(leaking)} {word}(s) cross sets, a leak; e.g. {word} {leaking[0]}: {images}"
        )


def choose_labeled(
    table: ImageTable, split: pd.Series, fraction: float, seed: int = 2020
) -> pd.Series:
    """Which training images keep their label: a stratified, grouped part of about `fraction`
    of the training split (no lesion both labelled and not), deterministic per seed. Returns a
    boolean Series indexed by the training image ids, in table order; every class of the
    training split keeps at least one labelled image (else DataError naming the class)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.labeled_fraction must be in (0, 1), got {fraction}")
    train = split_indices(split, table, "train")
    labels = table.frame["label"].to_numpy()[train]
    groups = table.frame["group"].to_numpy()[train]
    kept = np.zeros(len(train), dtype=bool)
    kept[_nested_part(labels, groups, fraction, seed)] = True
    missing = [table.classes[c] for c in np.unique(labels) if not kept[labels == c].any()]
    if missing:
        raise DataError(
            f"data.labeled_fraction={fraction} leaves no labelled training image of class(es) "
            f"{', '.join(missing)}: raise the fraction"
        )
    ids = table.frame["image_id"].to_numpy()[train]
    return pd.Series(kept, index=pd.Index(ids, name="image_id"), name="labeled")


def split_csv(split: pd.Series, labeled: pd.Series | None = None) -> str:
    """A split as CSV text with the columns image_id,split, and labeled (true or false for the
    training images, empty for the others) when `labeled` is given."""
    frame = split.rename("split").rename_axis("image_id").to_frame()
    if labeled is not None:
        marks = labeled.map({True: _TRUE, False: _FALSE})
        frame["labeled"] = marks.reindex(frame.index).fillna("")
    return frame.to_csv(header=True)


def save_split(split: pd.Series, path: str | Path, labeled: pd.Series | None = None) -> None:
    """Write a split as a CSV (see `split_csv`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(split_csv(split, labeled))


def load_labeled(path: str | Path, split: pd.Series) -> pd.Series | None:
    """The `labeled` column of a split CSV checked against `split` (as `load_split` returned
    it): true or false for every training image, empty for the others. None when the file has
    no such column (every training image is labelled)."""
    path = Path(path)
    frame = read_csv(path, ("image_id", "split"), optional=("labeled",))
    if "labeled" not in frame:
        return None
    values = frame["labeled"].str.lower()
    in_train = split.reindex(frame["image_id"]).to_numpy() == "train"
    expected = np.where(in_train, "true or false (a training image)", "empty (not in training)")
    bad = np.flatnonzero(np.where(in_train, ~values.isin((_TRUE, _FALSE)), values != ""))
    if len(bad):
        row = bad[0]
        raise DataError(
            f"{path}, line {csv_line(row)}: labeled {frame['labeled'].iloc[row]!r} should be "
            f"{expected[row]}"
        )
    marks = pd.Series((values == _TRUE).to_numpy(), index=pd.Index(frame["image_id"]))
    train_ids = split.index[split.to_numpy() == "train"]
    return marks.reindex(train_ids).rename("labeled").rename_axis("image_id")


def load_split(path: str | Path, table: ImageTable) -> pd.Series:
    """Read a split CSV and check it against `table`: known values, known and complete ids, no
    duplicate ids and no group crossing sets. Returns it in table order."""
    path = Path(path)
    frame = read_csv(path, ("image_id", "split"))
    values = frame["split"].str.lower()
    bad = np.flatnonzero(~values.isin(SPLIT_NAMES))
    if len(bad):
        raise DataError(
            f"{path}, line {csv_line(bad[0])}: split {frame['split'].iloc[bad[0]]!r} is not one of "
            f"{', '.join(SPLIT_NAMES)}"
        )
    ids = frame["image_id"]
    _raise_if_any(ids[ids.duplicated()].unique(), f"{path}: duplicate image_id(s)")
    table_ids = table.frame["image_id"]
    _raise_if_any(ids[~ids.isin(table_ids)], f"{path}: image_id(s) not in the {table.name} data")
    _raise_if_any(table_ids[~table_ids.isin(ids)], f"{path} does not assign image(s)")
    by_id = dict(zip(ids, values, strict=True))
    split = _series(table_ids, np.array([by_id[i] for i in table_ids], dtype=object))
    check_no_group_leak(table, split)
    return split


def split_indices(split: pd.Series, table: ImageTable, name: str) -> np.ndarray:
    """Positions into `table.frame` of the images in set `name`, in table order."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown set {name!r}; valid ones are: {', '.join(SPLIT_NAMES)}")
    assigned = split.reindex(table.frame["image_id"])
    _raise_if_any(table.frame["image_id"][assigned.isna().to_numpy()], "the split lacks image(s)")
    return np.flatnonzero(assigned.to_numpy() == name)


# --- helpers -----------------------------------------------------------------------------------


def _check_arguments(
    table: ImageTable,
    scheme: str,
    test_fraction: float,
    val_fraction: float,
    n_folds: int,
    fold: int,
) -> str:
    """Validate the split settings; returns the scheme with "auto" resolved."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown split scheme {scheme!r}; valid ones are: {', '.join(SCHEMES)}")
    if scheme == "auto":
        scheme = "kfold" if table.name == "aptos" else "holdout"
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if scheme == "holdout" and fold != 1:
        raise ConfigError(
            f"data.fold={fold} needs data.split=kfold: the {table.name} split is a single "
            "holdout, which every fold would repeat"
        )
    if scheme == "holdout" and not (test_fraction > 0 and test_fraction + val_fraction < 1):
        raise ConfigError(
            f"need 0 < test_fraction and test_fraction + val_fraction < 1, "
            f"got {test_fraction} and {val_fraction}"
        )
    if scheme == "kfold":
        if n_folds < 2 or not 1 <= fold <= n_folds:
            raise ConfigError(f"need n_folds >= 2 and fold in 1..n_folds, got {n_folds}, {fold}")
        if val_fraction >= 1 - 1 / n_folds:
            raise ConfigError(f"val_fraction {val_fraction} leaves no training images")
    return scheme


def _fraction_as_folds(fraction: float, max_folds: int) -> tuple[int, int]:
    """(taken, n_folds) with taken / n_folds closest to `fraction`, preferring fewer folds."""
    best = (1.0, 1, 2)
    for n_folds in range(2, max_folds + 1):
        taken = min(n_folds - 1, max(1, round(fraction * n_folds)))
        error = abs(taken / n_folds - fraction)
        if error < best[0] - 1e-3:
            best = (error, taken, n_folds)
    return best[1], best[2]


def _folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test positions of each stratified fold; grouped unless every group is a single image."""
    x = np.zeros(len(labels))
    if len(np.unique(groups)) == len(groups):
        splitter, groups = StratifiedKFold(n_folds, shuffle=True, random_state=seed), None
    else:
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class smaller than n_folds is handled by the caller
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            return [test for _, test in splitter.split(x, labels, groups)]
        except ValueError as err:
            raise DataError(f"cannot make {n_folds} stratified folds of this data: {err}") from err


def _stratified_part(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Positions of a stratified, grouped part of about `fraction` of the images."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"cannot split {len(labels)} image(s) in {n_groups} group(s)")
    taken, n_folds = _fraction_as_folds(fraction, min(_MAX_FOLDS, n_groups))
    return np.sort(np.concatenate(_folds(labels, groups, n_folds, seed)[:taken]))


def _nested_part(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """`_stratified_part`, a fraction under 1/_MAX_FOLDS taken as a part of a part (1 % as a
    fifth of a twentieth), so that a small fraction is met as closely as a large one."""
    if fraction >= 1 / _MAX_FOLDS:
        return _stratified_part(labels, groups, fraction, seed)
    outer = _stratified_part(labels, groups, 1 / _MAX_FOLDS, seed)
    return outer[_nested_part(labels[outer], groups[outer], fraction * _MAX_FOLDS, seed)]


def _keep_every_class_in_train(
    assigned: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> None:
    """Move one group (the first by name) of each class missing from train into train."""
    for label in np.unique(labels):
        if not np.any((assigned == "train") & (labels == label)):
            group = np.sort(groups[labels == label])[0]
            assigned[groups == group] = "train"


def _series(ids: pd.Series, values: np.ndarray) -> pd.Series:
    return pd.Series(
        values, index=pd.Index(ids.to_numpy(), name="image_id"), name="split", dtype=str
    )


def _raise_if_any(ids: pd.Series | np.ndarray, message: str) -> None:
    ids = list(ids)
    if ids:
        raise DataError(f"{message} ({len(ids)}): {first_items(ids)}")
