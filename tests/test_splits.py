"""Holdout and k-fold splits, their files, and leak checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from conftest import lesion_table, make_table
from crckd.data import (
    SPLIT_NAMES,
    check_no_group_leak,
    load_split,
    make_split,
    save_split,
    split_indices,
)
from crckd.errors import ConfigError, DataError

# a HAM-like imbalance, with lesions of 1 to 4 images
CLASS_SIZES = (120, 500, 60, 40, 110, 15, 20)


@pytest.fixture(scope="module")
def lesions():
    return lesion_table(CLASS_SIZES)


def _crossing_groups(table, split: pd.Series) -> int:
    sets = table.frame.assign(split=split.to_numpy())
    return int((sets.groupby("group")["split"].nunique() > 1).sum())


def test_holdout_is_grouped_stratified_and_70_10_20(lesions) -> None:
    split = make_split(lesions, seed=7)
    assert split.index.tolist() == lesions.frame["image_id"].tolist()
    assert set(split) == set(SPLIT_NAMES)
    assert _crossing_groups(lesions, split) == 0
    check_no_group_leak(lesions, split)
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.03)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)
    labels = lesions.frame["label"].to_numpy()
    for name in SPLIT_NAMES:
        assert set(labels[(split == name).to_numpy()]) == set(range(len(CLASS_SIZES)))
    big = labels == 1  # the largest class is split close to the same proportions
    assert (split[big] == "test").mean() == pytest.approx(0.2, abs=0.03)


def test_holdout_other_fractions(lesions) -> None:
    shares = make_split(lesions, test_fraction=0.3, val_fraction=0.15).value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.3, abs=0.03)
    assert shares["val"] == pytest.approx(0.15, abs=0.03)
    assert "val" not in set(make_split(lesions, val_fraction=0))


def test_split_is_deterministic_per_seed(lesions) -> None:
    first = make_split(lesions, seed=3)
    pd.testing.assert_series_equal(first, make_split(lesions, seed=3))
    assert not first.equals(make_split(lesions, seed=4))


def test_every_class_in_train_even_with_one_lesion() -> None:
    labels = [0] * 30 + [1] * 30 + [2] * 3  # class 2: a single lesion of three images
    groups = [f"g{i}" for i in range(60)] + ["only"] * 3
    table = make_table(labels, groups)
    for seed in range(10):
        split = make_split(table, seed=seed)
        assert set(split.iloc[-3:]) == {"train"}
        check_no_group_leak(table, split)


def test_kfold_reproduces_stratified_kfold_and_covers_all() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=400, p=[0.5, 0.1, 0.25, 0.07, 0.08])
    table = make_table(labels, name="aptos")
    reference = StratifiedKFold(5, shuffle=True, random_state=2020).split(labels, labels)
    tests = []
    for fold, (_, expected) in enumerate(reference, start=1):
        split = make_split(table, fold=fold)  # "auto" is kfold for aptos, seed 2020
        test = split_indices(split, table, "test")
        np.testing.assert_array_equal(test, expected)
        val = split_indices(split, table, "val")
        assert len(val) / len(labels) == pytest.approx(0.1, abs=0.02)
        assert set(labels[split_indices(split, table, "train")]) == set(range(5))
        tests.append(test)
    joined = np.concatenate(tests)
    assert len(joined) == len(labels) and set(joined) == set(range(len(labels)))


def test_kfold_with_shared_groups_keeps_groups_whole(lesions) -> None:
    tests = [
        split_indices(make_split(lesions, scheme="kfold", fold=f), lesions, "test")
        for f in range(1, 6)
    ]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(lesions.frame)))
    fold_of = np.empty(len(lesions.frame), dtype=int)
    for f, test in enumerate(tests):
        fold_of[test] = f
    per_group = pd.Series(fold_of).groupby(lesions.frame["group"].to_numpy()).nunique()
    assert per_group.max() == 1
    check_no_group_leak(lesions, make_split(lesions, scheme="kfold", fold=2))


def test_bad_split_settings(lesions) -> None:
    with pytest.raises(ConfigError, match="fold"):
        make_split(lesions, scheme="kfold", fold=6)
    with pytest.raises(ConfigError, match="'random'"):
        make_split(lesions, scheme="random")
    with pytest.raises(ConfigError, match="test_fraction"):
        make_split(lesions, test_fraction=0.8, val_fraction=0.3)
    # A fold of a holdout split would be the same split under another name.
    with pytest.raises(ConfigError, match=r"data\.fold=2 needs data\.split=kfold"):
        make_split(lesions, fold=2)  # "auto" is holdout for ham10000


def test_too_few_groups_is_a_data_error() -> None:
    with pytest.raises(DataError, match="1 group"):
        make_split(make_table([0, 1, 0], ["g", "g", "g"]))


def test_save_load_round_trip(tmp_path: Path, lesions) -> None:
    split = make_split(lesions)
    save_split(split, tmp_path / "run" / "split.csv")
    text = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert text[0] == "image_id,split" and text[1] == f"img00000,{split.iloc[0]}"
    pd.testing.assert_series_equal(load_split(tmp_path / "run" / "split.csv", lesions), split)


def test_split_indices_in_table_order(lesions) -> None:
    split = make_split(lesions)
    parts = {name: split_indices(split, lesions, name) for name in SPLIT_NAMES}
    for name, positions in parts.items():
        assert np.all(np.diff(positions) > 0)
        assert (split.iloc[positions] == name).all()
    assert sum(len(p) for p in parts.values()) == len(lesions.frame)
    with pytest.raises(DataError, match="lacks image"):
        split_indices(split.iloc[1:], lesions, "train")


@pytest.fixture
def saved(tmp_path: Path, lesions) -> tuple[Path, pd.DataFrame]:
    path = tmp_path / "split.csv"
    save_split(make_split(lesions), path)
    return path, pd.read_csv(path)


def _lesion_with_images(table) -> str:
    sizes = table.frame["group"].value_counts()
    return sizes.index[sizes > 1][0]


def test_tampered_split_lesion_crossing(saved, lesions) -> None:
    path, frame = saved
    lesion = _lesion_with_images(lesions)
    rows = np.flatnonzero(lesions.frame["group"] == lesion)
    frame.loc[rows[0], "split"] = "test" if frame.loc[rows[1], "split"] != "test" else "train"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=f"lesion {lesion}: .*{frame.loc[rows[0], 'image_id']}"):
        load_split(path, lesions)


def test_tampered_split_unknown_missing_and_bad_values(saved, lesions) -> None:
    path, frame = saved
    frame.loc[3, "image_id"] = "ISIC_9999999"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"not in the ham10000 data.*ISIC_9999999"):
        load_split(path, lesions)
    frame.drop(index=3).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"does not assign image\(s\) \(1\): img00003"):
        load_split(path, lesions)
    frame.loc[3, "image_id"] = "img00003"
    frame.loc[7, "split"] = "holdout"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="line 9: split 'holdout'"):
        load_split(path, lesions)
    frame.loc[7, "split"] = "train"
    pd.concat([frame, frame.iloc[[0]]]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"duplicate image_id.*img00000"):
        load_split(path, lesions)


def test_split_file_missing_or_without_columns(tmp_path: Path, lesions) -> None:
    with pytest.raises(DataError, match=r"not found: .*nothing\.csv"):
        load_split(tmp_path / "nothing.csv", lesions)
    pd.DataFrame({"image_id": ["img00000"], "set": ["train"]}).to_csv(tmp_path / "s.csv")
    with pytest.raises(DataError, match=r"s\.csv lacks column\(s\) split"):
        load_split(tmp_path / "s.csv", lesions)
