"""The command line as a user meets it: errors with exit code 2, eval, predict, demo."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import FAST, fake_run, make_ham_layout, model_probs, write_image
from crckd.cli import EXIT_USER_ERROR, build_parser, main
from crckd.data import HAM10000_CLASSES, load_table
from crckd.demo import print_differences
from crckd.engine.metrics import SCALAR_METRICS, classification_metrics


def run_cli(*args: str) -> int:
    return main(list(args))


def test_every_subcommand_has_help():
    (subcommands,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert {"train", "compare", "report", "check-data"} <= set(subcommands.choices)
    for command in subcommands.choices:
        result = subprocess.run(
            [sys.executable, "-m", "crckd", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, command
        assert "usage: crckd" in result.stdout


def bad_train(tmp_path, capsys, *overrides: str) -> str:
    out = tmp_path / "never_written"
    code = run_cli("train", f"output_dir={out}", *FAST, "train.epochs=1", *overrides)
    assert code == EXIT_USER_ERROR
    assert not out.exists()
    return capsys.readouterr().err


def test_unknown_key_exits_2_naming_the_key(tmp_path, capsys):
    err = bad_train(tmp_path, capsys, "data.rooot=x")
    assert "data.rooot" in err


def test_wrong_type_exits_2_naming_the_key(tmp_path, capsys, ham_root):
    err = bad_train(tmp_path, capsys, f"data.root={ham_root}", "train.epochs=two")
    assert "train.epochs" in err


def test_missing_data_root_exits_2(tmp_path, capsys):
    err = bad_train(tmp_path, capsys, f"data.root={tmp_path / 'nowhere'}")
    assert "nowhere" in err


def test_missing_csv_exits_2(tmp_path, capsys, ham_root):
    (ham_root / "HAM10000_metadata.csv").unlink()
    err = bad_train(tmp_path, capsys, f"data.root={ham_root}")
    assert "HAM10000_metadata.csv" in err


def test_missing_columns_exit_2(tmp_path, capsys, ham_root):
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv").drop(columns="dx")
    meta.to_csv(ham_root / "HAM10000_metadata.csv", index=False)
    err = bad_train(tmp_path, capsys, f"data.root={ham_root}")
    assert "dx" in err


def test_listed_but_absent_images_exit_2(tmp_path, capsys, ham_root):
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv")
    missing = meta["image_id"].iloc[0]
    next(ham_root.rglob(f"{missing}.jpg")).unlink()
    err = bad_train(tmp_path, capsys, f"data.root={ham_root}")
    assert missing in err


def test_label_outside_the_class_list_exits_2(tmp_path, capsys, ham_root):
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv")
    meta.loc[3, "dx"] = "melanoma"
    meta.to_csv(ham_root / "HAM10000_metadata.csv", index=False)
    err = bad_train(tmp_path, capsys, f"data.root={ham_root}")
    assert "melanoma" in err


def test_eval_on_an_unseen_folder_with_split_all(ce_run, tmp_path, capsys):
    other = make_ham_layout(tmp_path / "unseen", n_per_class=2, size=(24, 18))
    out = tmp_path / "eval"
    code = run_cli(
        "eval",
        "--checkpoint",
        str(ce_run / "checkpoints" / "best.pt"),
        "--dataset",
        "ham10000",
        "--data-root",
        str(other),
        "--split",
        "all",
        "--out",
        str(out),
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 * len(HAM10000_CLASSES)
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["num_samples"]
    assert "balanced_accuracy" in capsys.readouterr().out


def test_eval_test_split_reuses_the_runs_split(ce_run, tmp_path):
    root = yaml.safe_load((ce_run / "config.yaml").read_text())["data"]["root"]
    out = tmp_path / "eval"
    checkpoint = str(ce_run / "checkpoints" / "best.pt")
    args = ("--checkpoint", checkpoint, "--dataset", "ham10000", "--data-root", root)
    assert run_cli("eval", *args, "--out", str(out)) == 0
    split = pd.read_csv(ce_run / "split.csv")
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == int(
        (split["split"] == "test").sum()
    )
    train_metrics = json.loads((ce_run / "metrics.json").read_text())
    eval_metrics = json.loads((out / "metrics.json").read_text())
    assert eval_metrics["accuracy"] == pytest.approx(train_metrics["accuracy"])

    # The split is read from the run's split.csv, not made again: move one test lesion to train.
    groups = load_table("ham10000", root).frame.set_index("image_id")["group"]
    edited = split.set_index("image_id")
    lesion = groups[edited.index[edited["split"] == "test"][0]]
    edited.loc[groups[groups == lesion].index, "split"] = "train"
    copy = shutil.copytree(ce_run, tmp_path / "copy")
    edited.to_csv(copy / "split.csv")
    copied = ("--checkpoint", str(copy / "checkpoints" / "best.pt"), *args[2:])
    assert run_cli("eval", *copied, "--out", str(tmp_path / "eval2")) == 0
    moved = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert moved["num_samples"] == eval_metrics["num_samples"] - int((groups == lesion).sum())


def test_run_and_eval_write_each_test_images_prediction(ce_run, tmp_path):
    split = pd.read_csv(ce_run / "split.csv", dtype={"image_id": str})
    test_ids = split.loc[split["split"] == "test", "image_id"]
    table = load_table(
        "ham10000", yaml.safe_load((ce_run / "config.yaml").read_text())["data"]["root"]
    )
    labels = table.frame.set_index("image_id")["label"]
    metrics = json.loads((ce_run / "metrics.json").read_text())
    preds = pd.read_csv(ce_run / "test_predictions.csv", dtype={"image_id": str})
    probs_columns = [f"prob_{c}" for c in HAM10000_CLASSES]
    assert list(preds.columns) == [
        "image_id", "label", "label_name", "predicted", "predicted_name", *probs_columns
    ]  # fmt: skip
    assert sorted(preds["image_id"]) == sorted(test_ids)
    assert (preds["label"] == labels[preds["image_id"]].to_numpy()).all()
    assert (preds["label_name"] == [HAM10000_CLASSES[y] for y in preds["label"]]).all()
    probs = preds[probs_columns].to_numpy()
    assert (preds["predicted"] == probs.argmax(axis=1)).all()
    assert (preds["predicted_name"] == [HAM10000_CLASSES[y] for y in preds["predicted"]]).all()
    # The probabilities are those metrics.json was computed from.
    again = classification_metrics(preds["label"].to_numpy(), probs, HAM10000_CLASSES)
    for key in (*SCALAR_METRICS, "confusion_matrix", "num_samples"):
        assert again[key] == metrics[key], key

    root = yaml.safe_load((ce_run / "config.yaml").read_text())["data"]["root"]
    checkpoint = str(ce_run / "checkpoints" / "best.pt")
    out = tmp_path / "eval"
    args = ("--checkpoint", checkpoint, "--dataset", "ham10000", "--data-root", root)
    assert run_cli("eval", *args, "--out", str(out)) == 0
    evaluated = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(evaluated.columns) == list(preds.columns)
    evaluated = evaluated.set_index("image_id").loc[preds["image_id"]]
    assert (evaluated["predicted"].to_numpy() == preds["predicted"].to_numpy()).all()
    assert evaluated[probs_columns].to_numpy() == pytest.approx(probs, abs=1e-5)
    eval_metrics = json.loads((out / "metrics.json").read_text())
    from_csv = classification_metrics(
        evaluated["label"].to_numpy(), evaluated[probs_columns].to_numpy(), HAM10000_CLASSES
    )
    assert all(from_csv[key] == eval_metrics[key] for key in SCALAR_METRICS)


def test_eval_of_a_relative_checkpoint_finds_its_runs_split(ce_run, tmp_path, monkeypatch):
    root = yaml.safe_load((ce_run / "config.yaml").read_text())["data"]["root"]
    monkeypatch.chdir(ce_run / "checkpoints")
    args = ("--checkpoint", "best.pt", "--dataset", "ham10000", "--data-root", root)
    assert run_cli("eval", *args, "--out", str(tmp_path / "eval")) == 0
    split = pd.read_csv(ce_run / "split.csv")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == int((split["split"] == "test").sum())


def test_resume_of_a_checkpoint_points_to_its_run_folder(ce_run, tmp_path, capsys):
    last = ce_run / "checkpoints" / "last.pt"
    assert run_cli("train", "--resume", str(last)) == EXIT_USER_ERROR
    assert f"did you mean --resume {ce_run}?" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert run_cli("train", f"data.root={missing}", f"output_dir={tmp_path}") == EXIT_USER_ERROR
    assert f"dataset folder not found: {missing} (set data.root=FOLDER)" in capsys.readouterr().err


def test_predict_writes_one_row_per_image(ce_run, tmp_path):
    images = tmp_path / "images"
    for i in range(3):
        write_image(images / f"a{i}.jpg", size=(40, 30), seed=i)
    write_image(images / "nested" / "b.png", seed=9)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "preds.csv"
    checkpoint = str(ce_run / "checkpoints" / "best.pt")
    assert run_cli("predict", "--checkpoint", checkpoint, "--out", str(out), str(images)) == 0
    preds = pd.read_csv(out)
    assert len(preds) == 4
    prob_columns = [f"prob_{name}" for name in HAM10000_CLASSES]
    assert preds[prob_columns].sum(axis=1).round(5).eq(1).all()
    assert set(preds["predicted"]) <= set(HAM10000_CLASSES)
    top = preds[prob_columns].to_numpy().argmax(axis=1)
    assert list(preds["predicted"]) == [HAM10000_CLASSES[i] for i in top]


def test_predict_on_a_missing_path_exits_2(ce_run, tmp_path, capsys):
    checkpoint = str(ce_run / "checkpoints" / "best.pt")
    code = run_cli("predict", "--checkpoint", checkpoint, "--out", str(tmp_path / "p.csv"), "nope")
    assert code == EXIT_USER_ERROR
    assert "nope" in capsys.readouterr().err


def test_a_checkpoint_with_a_pickled_payload_is_refused(tmp_path, capsys):
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "crckd-checkpoint", "x": Payload()}, path)
    code = run_cli("predict", "--checkpoint", str(path), "--out", str(tmp_path / "p.csv"), ".")
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR
    assert "refused" in captured.err
    assert "payload ran" not in captured.out


def test_a_file_or_folder_that_is_no_checkpoint_is_named_as_such(ce_run, tmp_path, capsys):
    out = str(tmp_path / "p.csv")
    config = str(ce_run / "config.yaml")
    assert run_cli("predict", "--checkpoint", config, "--out", out, ".") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "not a crckd checkpoint (not a file torch.save wrote)" in err
    assert "could run code" not in err
    assert run_cli("predict", "--checkpoint", str(ce_run), "--out", out, ".") == EXIT_USER_ERROR
    assert f"did you mean {ce_run / 'checkpoints' / 'best.pt'}?" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_three_methods_and_prints_them(tmp_path, capsys):
    assert run_cli("demo", "--out", str(tmp_path), "--epochs", "1") == 0
    out = capsys.readouterr().out
    for name in ("ce", "mt", "crckd"):
        assert (tmp_path / name / "metrics.json").is_file()
        assert f"  {name}: {tmp_path / name}" in out
    assert "balanced_accuracy" in out
    test_images = json.loads((tmp_path / "ce" / "metrics.json").read_text())["num_samples"]
    assert f"Difference to ce on the {test_images} test images, with its 95 % interval" in out
    assert "The demo shows how to run the methods, not which is best" in out


def test_demo_says_which_differences_are_noise(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    runs = {name: tmp_path / name for name in ("ce", "mt", "crckd")}
    for name, accuracy in (("ce", 0.4), ("mt", 0.45), ("crckd", 0.95)):
        fake_run(runs[name], labels, model_probs(rng, labels, accuracy))
    intervals = print_differences(runs, "ce").set_index(["method", "metric"])
    out = capsys.readouterr().out
    assert "Difference to ce on the 60 test images" in out
    crckd, mt = intervals.loc[("crckd", "accuracy")], intervals.loc[("mt", "accuracy")]
    assert crckd["verdict"] == "better" and crckd["mean"] == pytest.approx(0.55)
    assert mt["verdict"] == "within noise" and mt["mean"] == pytest.approx(0.05)
    assert (
        f"crckd is better than ce on accuracy: +0.550 [{crckd['low']:+.3f}, {crckd['high']:+.3f}]"
        in out
    )
    noise = intervals[intervals["verdict"] == "within noise"]
    assert list(noise.index) == [("mt", "balanced_accuracy"), ("mt", "accuracy")]
    assert (
        f"The test part has only 60 images: differences within [{noise['low'].min():+.3f}, "
        f"{noise['high'].max():+.3f}] are noise." in out
    )
