"""Semi-supervised data: the labelled part of a split, the unlabelled folder (listing, leaks,
resume), the batches of labelled and unlabelled images, and what the trainer hands a method."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST, lesion_table, make_colour_ham, make_ham_layout, write_image
from crckd.cli import EXIT_USER_ERROR, main
from crckd.data import (
    HAM10000_CLASSES,
    check_dataset,
    choose_labeled,
    load_labeled,
    load_split,
    load_table,
    make_split,
    save_split,
    split_indices,
)
from crckd.data.cache import DecodedImages, JoinedImages
from crckd.data.samplers import SemiBatchSampler
from crckd.data.unlabeled import check_same_files, list_unlabeled
from crckd.engine import Trainer, load_checkpoint, train
from crckd.engine import trainer as trainer_module
from crckd.engine.data import class_weights, prepare_data
from crckd.errors import ConfigError, DataError
from crckd.methods import get_method, load_config

# --- the labelled part of the training split ---------------------------------------------------


def test_the_labelled_part_is_stratified_grouped_and_seeded():
    table = lesion_table([300, 120, 60, 40])
    split = make_split(table)
    labeled = choose_labeled(table, split, 0.2, seed=1)
    train = split_indices(split, table, "train")
    assert labeled.index.tolist() == table.frame["image_id"].to_numpy()[train].tolist()
    assert labeled.mean() == pytest.approx(0.2, abs=0.03)
    frame = table.frame.iloc[train].assign(labeled=labeled.to_numpy())
    assert frame.groupby("group")["labeled"].nunique().max() == 1  # no lesion on both sides
    per_class = frame.groupby("label")["labeled"].mean()
    assert per_class.to_numpy() == pytest.approx(0.2, abs=0.06)
    pd.testing.assert_series_equal(choose_labeled(table, split, 0.2, seed=1), labeled)
    assert not choose_labeled(table, split, 0.2, seed=2).equals(labeled)
    # A part under 1/20 (the finest grid of folds) is a part of a part, as close to it.
    big = lesion_table([1000, 1000])
    assert choose_labeled(big, make_split(big), 0.01).mean() == pytest.approx(0.01, abs=0.001)


def test_every_class_must_keep_a_labelled_image():
    table = lesion_table([200, 200, 3])
    split = make_split(table)
    with pytest.raises(DataError, match=r"no labelled training image of class\(es\) bcc"):
        choose_labeled(table, split, 0.02, seed=0)


def test_split_csv_keeps_the_labelled_column_and_old_files_mean_all_labelled(tmp_path):
    table = lesion_table([40, 30])
    split = make_split(table)
    labeled = choose_labeled(table, split, 0.5)
    path = tmp_path / "split.csv"
    save_split(split, path, labeled)
    frame = pd.read_csv(path, keep_default_na=False)
    assert frame.columns.tolist() == ["image_id", "split", "labeled"]
    assert set(frame.loc[frame["split"] != "train", "labeled"]) == {""}
    assert set(frame.loc[frame["split"] == "train", "labeled"]) == {"true", "false"}
    pd.testing.assert_series_equal(load_split(path, table), split)
    pd.testing.assert_series_equal(load_labeled(path, split), labeled)
    save_split(split, path)
    assert load_labeled(path, split) is None
    save_split(split, path, labeled)
    test_row = int(np.flatnonzero(frame["split"] == "test")[0])
    frame.loc[test_row, "labeled"] = "true"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=f"line {test_row + 2}: labeled 'true' should be empty"):
        load_labeled(path, split)


# --- batches of labelled and unlabelled images -------------------------------------------------


def parts(batch, labeled):
    indices = [index for index, _ in batch]
    return [i for i in indices if i < labeled], [i for i in indices if i >= labeled]


def test_each_batch_holds_the_proportion_and_an_epoch_is_one_pass_over_the_labelled():
    sampler = SemiBatchSampler(27, 13, 16, 4, seed=5)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 7  # 6 full batches and the last 3 labelled images
    seen = []
    for number, batch in enumerate(batches):
        labeled, unlabeled = parts(batch, 27)
        assert (len(labeled), len(unlabeled)) == ((4, 12) if number < 6 else (3, 9))
        # The parts interleave in equal groups: 1 labelled image, then 3 unlabelled.
        assert [i < 27 for i, _ in batch] == [True, False, False, False] * len(labeled)
        assert len(set(unlabeled)) == len(unlabeled) and set(unlabeled) <= set(range(27, 40))
        assert {seed for _, seed in batch} == {5}
        seen += labeled
    assert sorted(seen) == list(range(27))
    # 13 unlabelled images, 12 a batch: every batch starts a new permutation of all 13.
    assert [len(set(parts(b, 27)[1])) for b in batches[:6]] == [12] * 6
    other = list(SemiBatchSampler(27, 13, 16, 4, seed=6))
    assert other != batches and list(SemiBatchSampler(27, 13, 16, 4, seed=5)) == batches
    # A last labelled batch of one image cannot train BatchNorm: dropped.
    assert len(SemiBatchSampler(25, 13, 16, 4, seed=5)) == 6


def test_rank_shares_of_both_parts_make_up_the_one_process_batches():
    single = list(SemiBatchSampler(45, 50, 24, 8, seed=3))
    ranks = [list(SemiBatchSampler(45, 50, 24, 8, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6  # 5 full, then 1 short
    for whole, first, second in zip(single[:5], *ranks, strict=False):
        assert first + second == whole  # row for row
        (lab, unl), (lab0, unl0), (lab1, unl1) = (parts(b, 45) for b in (whole, first, second))
        assert lab0 + lab1 == lab and unl0 + unl1 == unl  # each rank's share of each part
        assert (len(lab0), len(unl0), len(lab1), len(unl1)) == (4, 8, 4, 8)
    # The last batch of 5 labelled and 10 unlabelled images is cut to 4 + 8 for two ranks.
    (lab, unl), (lab0, unl0), (lab1, unl1) = (parts(b[5], 45) for b in (single, *ranks))
    assert (len(lab), len(unl)) == (5, 10)
    assert lab0 + lab1 == lab[:4] and unl0 + unl1 == unl[:8]
    # A last batch of 3 labelled images gives one to each of two ranks: dropped there only.
    assert len(SemiBatchSampler(43, 50, 24, 8, seed=3, world_size=2)) == 5
    assert len(SemiBatchSampler(43, 50, 24, 8, seed=3)) == 6


def test_the_labelled_only_batches_are_the_labelled_part_of_the_same_batches():
    both = list(SemiBatchSampler(30, 50, 16, 4, seed=3))
    alone = list(SemiBatchSampler(30, 50, 16, 4, seed=3, labeled_only=True))
    assert [parts(b, 30)[0] for b in both] == [[i for i, _ in b] for b in alone]


def test_joined_caches_index_one_after_the_other(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", seed=i)) for i in range(5)]
    first = DecodedImages.open(paths[:3], 8, tmp_path / "cache", progress=False)
    second = DecodedImages.open(paths[3:], 8, tmp_path / "cache", progress=False)
    joined = JoinedImages([first.subset([2, 0]), second])
    whole = DecodedImages.open(paths, 8, tmp_path / "cache", progress=False)
    assert len(joined) == 4
    for index, expected in enumerate([2, 0, 3, 4]):
        assert np.array_equal(np.asarray(joined[index]), np.asarray(whole[expected]))


# --- the unlabelled folder ---------------------------------------------------------------------


@pytest.fixture
def ham(tmp_path) -> Path:
    return make_ham_layout(tmp_path / "ham", n_per_class=8)


def unlabeled_folder(root: Path, n: int = 10) -> Path:
    for i in range(n):
        write_image(
            root / f"batch{i % 2}" / f"img{i:02d}.{'png' if i % 3 else 'tif'}", seed=100 + i
        )
    return root


def semi_config(ham: Path, out: Path, *extra: str):
    return load_config(
        overrides=[
            f"data.root={ham}",
            f"output_dir={out}",
            *FAST,
            "train.batch_size=8",
            "data.labeled_batch_size=2",
            *extra,
        ]
    )


def test_unlabelled_images_are_found_at_any_depth_sorted_and_hashed(tmp_path):
    folder = unlabeled_folder(tmp_path / "u")
    (folder / "notes.txt").write_text("not an image")
    files = list_unlabeled(folder, progress=False)
    assert list(files.relative) == sorted(files.relative) and len(files) == 10
    assert files.relative[0] == "batch0/img00.tif"
    assert all(len(digest) == 64 for digest in files.sha256)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        list_unlabeled(tmp_path / "empty", progress=False)
    with pytest.raises(DataError, match="unlabelled image folder not found"):
        list_unlabeled(tmp_path / "nowhere", progress=False)


def test_a_validation_or_test_image_among_the_unlabelled_is_a_leak_and_nothing_is_written(
    ham, tmp_path
):
    table = load_table("ham10000", ham)
    split = make_split(table)
    save_split(split, tmp_path / "split.csv")
    ids, paths = table.frame["image_id"], table.frame["path"]
    test, val = (split_indices(split, table, name) for name in ("test", "val"))
    folder = unlabeled_folder(tmp_path / "u", n=4)
    shutil.copy(paths[test[0]], folder / "renamed.jpg")  # the same content
    os.symlink(paths[val[0]], folder / "link.jpg")  # the same file
    write_image(folder / "isic" / f"{ids[test[1]]}.png", seed=999)  # the same image id
    out = tmp_path / "run"
    args = [f"data.unlabeled_root={folder}", f"data.split_file={tmp_path / 'split.csv'}"]
    with pytest.raises(DataError) as raised:
        Trainer(semi_config(ham, out, *args))
    message = str(raised.value)
    assert "3 unlabelled image(s)" in message and "nothing was written" in message
    assert f"renamed.jpg is test image {ids[test[0]]} (the same content)" in message
    assert f"link.jpg is val image {ids[val[0]]} (the same file)" in message
    assert f"isic/{ids[test[1]]}.png is test image {ids[test[1]]} (the same image id)" in message
    assert not out.exists()
    code = main(["train", f"data.root={ham}", f"output_dir={out}", *FAST, *args])
    assert code == EXIT_USER_ERROR and not out.exists()


def test_training_images_and_repeats_in_the_folder_count_once_with_a_note(ham, tmp_path):
    table = load_table("ham10000", ham)
    split = make_split(table)
    train = split_indices(split, table, "train")
    folder = unlabeled_folder(tmp_path / "u", n=4)
    shutil.copy(table.frame["path"][train[0]], folder / "copy_of_train.jpg")
    shutil.copy(folder / "batch1" / "img01.png", folder / "again.png")
    data = prepare_data(semi_config(ham, tmp_path / "run", f"data.unlabeled_root={folder}"))
    assert list(data.unlabeled.relative) == [
        "again.png",
        "batch0/img00.tif",
        "batch0/img02.png",
        "batch1/img03.tif",
    ]
    repeat, overlap = data.notes
    assert "repeat the content of an earlier one" in repeat and "batch1/img01.png" in repeat
    assert "are training images" in overlap and "copy_of_train.jpg is train image" in overlap
    assert data.n_labeled == len(train) and data.n_unlabeled == 4


def test_a_resumed_run_refuses_unlabelled_files_that_changed(tmp_path):
    folder = unlabeled_folder(tmp_path / "u", n=4)
    files = list_unlabeled(folder, progress=False)
    saved = tmp_path / "unlabeled.csv"
    files.to_frame().to_csv(saved, index=False)
    check_same_files(list_unlabeled(folder, progress=False), saved)
    write_image(folder / "batch0" / "img00.tif", seed=7)
    (folder / "batch1" / "img01.png").unlink()
    write_image(folder / "new.png")
    with pytest.raises(DataError) as raised:
        check_same_files(list_unlabeled(folder, progress=False), saved)
    message = str(raised.value)
    assert "1 missing (batch1/img01.png)" in message
    assert "1 added (new.png)" in message and "1 changed (batch0/img00.tif)" in message


def test_check_data_opens_the_unlabelled_images_too(ham, tmp_path, capsys):
    folder = unlabeled_folder(tmp_path / "u", n=3)
    (folder / "broken.png").write_bytes(b"not an image")
    report = check_dataset("ham10000", ham, unlabeled_root=folder, progress=False)
    assert report.unlabeled == 4 and report.images == report.rows + 4
    assert [(f.code, f.items) for f in report.errors] == [
        ("undecodable_image", (f"{folder / 'broken.png'} (not an image format PIL reads)",))
    ]
    args = ["check-data", "--dataset", "ham10000", "--data-root", str(ham)]
    assert main([*args, "--unlabeled-root", str(folder)]) == EXIT_USER_ERROR
    assert "broken.png" in capsys.readouterr().out
    (folder / "broken.png").unlink()
    assert main([*args, "--unlabeled-root", str(folder)]) == 0
    assert "3 unlabelled" in capsys.readouterr().out


# --- what the trainer hands a method -----------------------------------------------------------


@pytest.fixture
def learning_mt(monkeypatch) -> None:
    """`mt` as a method that learns from unlabelled images (as the methods make it)."""
    monkeypatch.setattr(get_method("mt").cls, "learns_from_unlabeled", True)


def test_a_batch_holds_labelled_and_unlabelled_images_whose_label_is_minus_one(
    ham, tmp_path, learning_mt
):
    folder = unlabeled_folder(tmp_path / "u", n=6)
    config = semi_config(
        ham,
        tmp_path / "run",
        "method.name=mt",
        "data.labeled_fraction=0.5",
        f"data.unlabeled_root={folder}",
    )
    trainer = Trainer(config)
    trainer.lock.release()
    data = trainer.data
    labels = data.train_labels()
    n = data.n_labeled
    assert (labels[:n] >= 0).all() and (labels[n:] == -1).all()
    assert len(labels) == n + data.n_unlabeled == len(data.train) + 6
    assert data.labels(data.train[n:]).tolist() == [-1] * (len(data.train) - n)  # hidden
    np.testing.assert_array_equal(trainer.method.context.train_labels, labels)
    torch.testing.assert_close(
        trainer.method.class_weights, class_weights(labels[:n], HAM10000_CLASSES)
    )
    assert trainer.steps_per_epoch == n // 2
    batches = list(trainer.train_loader(0))
    assert len(batches) == trainer.steps_per_epoch
    for batch in batches:
        assert batch["image"].shape[0] == 8 and int((batch["index"] < n).sum()) == 2
        torch.testing.assert_close(batch["label"] == -1, batch["index"] >= n)
        torch.testing.assert_close(batch["label"], torch.as_tensor(labels)[batch["index"]])


def test_ce_trains_on_the_labelled_part_of_the_same_batches(ham, tmp_path, learning_mt):
    extra = ("data.labeled_fraction=0.5",)
    ce = Trainer(semi_config(ham, tmp_path / "ce", *extra))
    ce.lock.release()
    mt = Trainer(semi_config(ham, tmp_path / "mt", *extra, "method.name=mt"))
    mt.lock.release()
    ce_batches = [batch["index"].tolist() for batch in ce.train_loader(1)]
    mt_batches = [batch["index"].tolist() for batch in mt.train_loader(1)]
    assert ce.steps_per_epoch == mt.steps_per_epoch == len(ce_batches) == len(mt_batches)
    assert ce_batches == [[i for i in indices if i < ce.data.n_labeled] for indices in mt_batches]
    assert all(len(indices) == 8 for indices in mt_batches)


def test_the_cache_covers_the_unlabelled_folder(ham, tmp_path, learning_mt):
    folder = unlabeled_folder(tmp_path / "u", n=6)
    batches = {}
    for cache in (False, True):
        trainer = Trainer(
            semi_config(
                ham,
                tmp_path / f"run{cache}",
                "method.name=mt",
                f"data.unlabeled_root={folder}",
                f"data.cache={str(cache).lower()}",
                f"data.cache_dir={tmp_path / 'cache'}",
            )
        )
        trainer.lock.release()
        batches[cache] = list(trainer.train_loader(0))
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and any(name.endswith("-6.npy") for name in cached)  # 6 unlabelled
    for plain, from_cache in zip(batches[False], batches[True], strict=True):
        assert torch.equal(plain["index"], from_cache["index"])
        torch.testing.assert_close(plain["image"], from_cache["image"], rtol=0, atol=0)


def test_semi_settings_that_cannot_work_are_config_errors(ham, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.labeled_batch_size=2 is set, but the run has no"):
        Trainer(semi_config(ham, tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"must be below train\.batch_size=8"):
        Trainer(semi_config(ham, tmp_path / "b", "data.labeled_fraction=0.5",
                            "data.labeled_batch_size=8"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"a quarter of train\.batch_size=4 \(1\)"):
        Trainer(semi_config(ham, tmp_path / "c", "data.labeled_fraction=0.5",
                            "data.labeled_batch_size=null", "train.batch_size=4"))  # fmt: skip
    assert not any((tmp_path / name).exists() for name in "abc")


# --- whole runs --------------------------------------------------------------------------------

SEMI_METHOD = "mt"  # learns from unlabelled images: its batches hold both kinds


def semi_args(ham: Path, folder: Path) -> list[str]:
    return [
        f"data.root={ham}",
        *FAST,
        "train.epochs=2",
        "train.deterministic=true",
        "data.labeled_fraction=0.5",
        f"data.unlabeled_root={folder}",
        "train.batch_size=8",
        "data.labeled_batch_size=4",
        "method.consistency.begin_epoch=0",
    ]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A semi-supervised comparison (`crckd compare`, one run): the dataset, the unlabelled
    folder and the comparison folder."""
    base = tmp_path_factory.mktemp("semi")
    ham = make_colour_ham(base / "ham", n_per_class=8)
    folder = unlabeled_folder(base / "unlabeled", n=6)
    config = base / "semi.yaml"
    config.write_text("train:\n  progress: false\n")
    out = base / "compare"
    args = ["compare", "-c", str(config), *semi_args(ham, folder), "--methods", SEMI_METHOD]
    assert main([*args, "--seeds", "0", "--out", str(out)]) == 0
    return ham, folder, out


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_a_semi_run_resumes_exactly_and_never_reads_a_hidden_label(compared, tmp_path, monkeypatch):
    ham, folder, out = compared
    run = out / SEMI_METHOD / "seed0"
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    assert set(split.loc[split["split"] == "train", "labeled"]) == {"true", "false"}
    listed = pd.read_csv(run / "unlabeled.csv")
    assert listed["path"].tolist() == list(list_unlabeled(folder, progress=False).relative)
    # Another copy of the data whose hidden labels are all changed, trained on the same split.
    other = shutil.copytree(ham, tmp_path / "ham")
    meta = pd.read_csv(other / "HAM10000_metadata.csv")
    hidden = meta["image_id"].isin(split.loc[split["labeled"] == "false", "image_id"])
    shifted = [HAM10000_CLASSES[(HAM10000_CLASSES.index(dx) + 1) % 7] for dx in meta["dx"]]
    meta.loc[hidden, "dx"] = np.array(shifted)[hidden.to_numpy()]
    meta.to_csv(other / "HAM10000_metadata.csv", index=False)
    config = load_config(
        overrides=[
            *semi_args(other, folder),
            f"method.name={SEMI_METHOD}",
            "train.seed=0",
            f"data.split_file={run / 'split.csv'}",
            f"output_dir={tmp_path / 'killed'}",
        ]
    )
    real_save = trainer_module.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt":
            raise _Killed

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(config)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    resumed = train(config, resume=True)

    a = load_checkpoint(run / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert a["progress"]["epoch"] == b["progress"]["epoch"] == 2
    for key, value in a["method"].items():
        torch.testing.assert_close(b["method"][key], value, rtol=0, atol=0, msg=key)
    assert resumed.metrics == json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_compare_report_and_embed_read_a_semi_run(compared, tmp_path):
    _, _, out = compared
    assert (out / "comparison.csv").is_file()
    run = out / SEMI_METHOD / "seed0"
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").is_file()
    assert main(["embed", str(run), "--out", str(tmp_path / "embed")]) == 0
    assert (tmp_path / "embed" / "0-seed0" / "embed.json").is_file()
