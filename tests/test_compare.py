"""`crckd compare`: the grid of runs, skipping finished ones, the tables it writes, and the
intervals of the differences to the reference method."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import FAST, fake_run, make_colour_ham, model_probs
from crckd.cli import EXIT_USER_ERROR, main
from crckd.engine import load_checkpoint
from crckd.engine.metrics import SCALAR_METRICS
from crckd.engine.run_folder import RunFolder
from crckd.errors import ConfigError, RunFolderError
from crckd.tools.compare import (
    bar_chart,
    bootstrap_runs,
    check_reference,
    collect,
    difference_table,
    differences,
    last_epochs,
    markdown_table,
    plan_runs,
    run_kappa_weights,
    summarize,
    write_comparison,
)


def test_plan_covers_methods_seeds_and_folds():
    plan = plan_runs(["ce", "crckd"], [0, 1], folds=[1, 2])
    assert len(plan) == 8
    assert plan[0].name == "seed0-fold1"
    assert {(r.method, r.seed, r.fold) for r in plan} == {
        (m, s, f) for m in ("ce", "crckd") for s in (0, 1) for f in (1, 2)
    }


def test_bar_chart_shows_every_bar_including_a_negative_kappa(tmp_path):
    frame = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "balanced_accuracy": [0.5, 0.7, 0.8, 0.9],
            "kappa": [-0.3, -0.1, 0.1, 0.1],
        }
    )
    summary = summarize(frame, metrics=["balanced_accuracy", "kappa"])
    fig = bar_chart(summary, tmp_path / "chart.png", metrics=["balanced_accuracy", "kappa"])
    (ax,) = fig.axes
    bottom, top = ax.get_ylim()
    kappa_a = summary.loc["a", ("kappa", "mean")] - summary.loc["a", ("kappa", "std")]
    assert bottom <= kappa_a < 0 and top > 0.9
    assert len(ax.patches) == 4
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_summary_marks_the_best_mean_in_bold():
    frame = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "accuracy": [0.5, 0.7, 0.8, 0.9],
            "kappa": [0.4, 0.2, 0.1, 0.1],
        }
    )
    summary = summarize(frame, metrics=["accuracy", "kappa"])
    assert summary.loc["a", ("accuracy", "mean")] == pytest.approx(0.6)
    assert summary.loc["a", ("accuracy", "std")] == pytest.approx(pd.Series([0.5, 0.7]).std())
    table = markdown_table(summary, metrics=["accuracy", "kappa"])
    row_a, row_b = table.splitlines()[2:4]
    assert "**0.850 ± 0.071**" in row_b and "**0.300 ± 0.141**" in row_a
    assert "**" not in row_a.split("|")[3]


@pytest.mark.slow
def test_compare_runs_the_grid_once_and_writes_tables(tmp_path, capsys):
    root = make_colour_ham(tmp_path / "ham", n_per_class=10)
    config = tmp_path / "base.yaml"
    raw = {"data": {"root": str(root)}, "train": {"epochs": 1}}
    config.write_text(yaml.safe_dump(raw))
    args = ["compare", "-c", str(config), *FAST, "--methods", "ce", "mt", "--seeds", "0", "1"]
    assert main([*args, "--out", str(tmp_path / "cmp")]) == 0
    frame = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert sorted(zip(frame["method"], frame["seed"], strict=True)) == [
        ("ce", 0), ("ce", 1), ("mt", 0), ("mt", 1)
    ]  # fmt: skip
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| ce | 2 |" in text and "| mt | 2 |" in text
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    assert "## Differences to ce" in text
    assert len(pd.read_csv(tmp_path / "cmp" / "differences.csv")) == len(SCALAR_METRICS)
    per_run = pd.read_csv(tmp_path / "cmp" / "bootstrap.csv")
    assert sorted(set(zip(per_run["method"], per_run["run"], strict=True))) == [
        ("mt", "seed0"), ("mt", "seed1")
    ]  # fmt: skip
    assert "Differences to ce (95 % intervals" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "cmp"), "--report"]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 4
    html = (tmp_path / "cmp" / "report" / "index.html").read_text()
    assert all(f"{m}/seed{s}" in html for m in ("ce", "mt") for s in (0, 1))
    # The same folder with other training settings is not reused as if it were done.
    capsys.readouterr()
    longer = ["compare", "-c", str(config), *FAST, "train.epochs=2", *args[len(FAST) + 3 :]]
    assert main([*longer, "--out", str(tmp_path / "cmp")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "holds a run with other settings (train.epochs: 1 -> 2)" in err


def test_one_run_shows_no_spread():
    frame = pd.DataFrame({"method": ["a", "b", "b"], "kappa": [0.5, 0.25, 0.75]})
    table = markdown_table(summarize(frame, metrics=["kappa"]), metrics=["kappa"])
    assert "| a | 1 | **0.500** |" in table and "**0.500 ± 0.354**" in table


# --- differences to the reference, on synthetic run folders -------------------------------------


@pytest.fixture(scope="module")
def synthetic_comparison(tmp_path_factory):
    """ce, good (15 points more accuracy at every seed) and same (ce's accuracy: equal quality,
    other mistakes) over seeds 0-2, 600 test images each."""
    out = tmp_path_factory.mktemp("cmp")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    for seed in range(3):
        for method, accuracy in (("ce", 0.6), ("good", 0.75), ("same", 0.6)):
            fake_run(out / method / f"seed{seed}", labels, model_probs(rng, labels, accuracy))
    plan = plan_runs(["ce", "good", "same"], [0, 1, 2])
    return out, collect(out, plan)


def test_differences_call_a_real_gain_better_and_an_equal_method_noise(synthetic_comparison):
    out, frame = synthetic_comparison
    diff = differences(frame, out, "ce", resamples=300)
    paired = diff.paired.set_index(["method", "metric"])
    good = paired.loc[("good", "accuracy")]
    assert good["n"] == 3 and good["mean"] == pytest.approx(0.15)  # exactly 90 more images right
    assert good["verdict"] == "better" and good["low"] == pytest.approx(0.15)  # no spread
    assert paired.loc[("same", "accuracy"), "mean"] == pytest.approx(0.0)
    assert paired.loc[("same", "accuracy"), "verdict"] == "within noise"
    per_run = diff.bootstrap.set_index(["method", "run", "metric"])
    assert len(diff.bootstrap) == 2 * 3 * len(SCALAR_METRICS) and diff.notes == []
    for seed in range(3):
        run = per_run.loc[("good", f"seed{seed}", "accuracy")]
        assert (run["n"], run["mean"], run["verdict"]) == (600, pytest.approx(0.15), "better")
        assert run["low"] < 0.15 < run["high"]
        assert per_run.loc[("same", f"seed{seed}", "balanced_accuracy"), "verdict"] == (
            "within noise"
        )


def test_bootstrap_of_two_runs_pairs_images_by_id_and_matches_their_metrics(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    ours = fake_run(tmp_path / "a", labels, model_probs(rng, labels, 0.7))
    ref = fake_run(tmp_path / "r", labels, model_probs(rng, labels, 0.5))
    # Rows in another order: the pairing is by image id, not by position.
    shuffled = pd.read_csv(tmp_path / "a" / "test_predictions.csv").sample(frac=1, random_state=0)
    shuffled.to_csv(tmp_path / "a" / "test_predictions.csv", index=False)
    found = bootstrap_runs(tmp_path / "a", tmp_path / "r", resamples=50)
    for metric in SCALAR_METRICS:
        assert found[metric].mean == pytest.approx(ours[metric] - ref[metric]), metric
    (tmp_path / "r" / "test_predictions.csv").write_text(
        "image_id,label,prob_a,prob_b,prob_c\nimg0000,0,1,0,0\n"
    )
    with pytest.raises(RunFolderError, match="not tested on the same images"):
        bootstrap_runs(tmp_path / "a", tmp_path / "r")


def test_kappa_is_weighted_as_the_runs_dataset_says(tmp_path):
    run = RunFolder(tmp_path)
    run.write_config({"data": {"dataset": "aptos"}, "train": {"kappa_weights": "auto"}})
    assert run_kappa_weights(run) == "quadratic"
    run.write_config({"data": {"dataset": "HAM10000"}, "train": {"kappa_weights": "linear"}})
    assert run_kappa_weights(run) == "linear"
    run.write_config({"data": {"dataset": "ham10000"}, "train": {"kappa_weights": "auto"}})
    assert run_kappa_weights(run) is None


def test_comparison_files_state_findings_and_noise_in_words(synthetic_comparison, tmp_path):
    out, frame = synthetic_comparison
    copy = shutil.copytree(out, tmp_path / "cmp")
    (copy / "same" / "seed2" / "test_predictions.csv").unlink()  # a run from an older crckd
    comparison = write_comparison(frame, copy, "ce")
    text = (copy / "comparison.md").read_text()
    good = comparison.differences.paired.set_index(["method", "metric"]).loc[("good", "f1_macro")]
    assert good["verdict"] == "better"
    assert (
        f"good is better than ce on f1_macro: {good['mean']:+.3f} "
        f"[{good['low']:+.3f}, {good['high']:+.3f}] (over 3 paired runs)" in text
    )
    assert "same is within noise of ce on accuracy, balanced_accuracy" in text
    assert "good is better than ce on accuracy over the test images in 3 of 3 runs" in text
    assert "same seed2: no test-image interval" in text and "test_predictions.csv" in text
    assert "**" in text.split("## Differences")[0]  # the best mean is still bold
    assert "**" not in text.split("## Differences")[1]
    paired = pd.read_csv(copy / "differences.csv")
    assert list(paired.columns) == ["method", "metric", "n", "mean", "low", "high", "verdict"]
    assert len(paired) == 2 * len(SCALAR_METRICS)
    per_run = pd.read_csv(copy / "bootstrap.csv")
    assert len(per_run) == (3 + 2) * len(SCALAR_METRICS)  # same seed2 left out
    assert set(per_run.loc[per_run["method"] == "same", "run"]) == {"seed0", "seed1"}
    table = difference_table(comparison.differences.paired, ["method"])
    assert table.loc["good", "accuracy"].endswith(" better")
    assert not table.loc["same", "accuracy"].endswith(("better", "worse"))


def test_the_last_epochs_are_compared_by_their_own_columns(synthetic_comparison, tmp_path):
    """The paper's reading (mean of the last test epochs) gets its own paired intervals: here
    `good` is better for the selected model but 0.05 worse over the last epochs."""
    out, frame = synthetic_comparison
    frame = frame.copy()
    good, ce = frame["method"] == "good", frame["method"] == "ce"
    frame.loc[good, "last_accuracy"] = frame.loc[ce, "last_accuracy"].to_numpy() - [
        0.04,
        0.05,
        0.06,
    ]
    copy = shutil.copytree(out, tmp_path / "cmp")
    comparison = write_comparison(frame, copy, "ce")
    last = comparison.differences.paired_last.set_index(["method", "metric"])
    assert last.loc[("good", "accuracy"), "mean"] == pytest.approx(-0.05)
    assert last.loc[("good", "accuracy"), "verdict"] == "worse"
    selected = comparison.differences.paired.set_index(["method", "metric"])
    assert selected.loc[("good", "accuracy"), "verdict"] == "better"
    written = pd.read_csv(copy / "differences_last_epochs.csv").set_index(["method", "metric"])
    assert written.loc[("good", "accuracy"), "verdict"] == "worse"
    with pytest.raises(ValueError, match="no last_"):  # never the selected models under its name
        last_epochs(frame.drop(columns=[c for c in frame if c.startswith("last_")]))
    text = (copy / "comparison.md").read_text()
    assert "The same for the mean of the last test epochs (the paper's reporting rule):" in text
    assert "good is worse than ce on accuracy over the last test epochs: -0.050 [" in text
    assert "good is better than ce on accuracy: +0.150 [" in text


def test_a_reference_outside_the_methods_stops_compare_before_training(tmp_path, capsys):
    args = ["compare", "-c", str(tmp_path / "base.yaml"), "--methods", "mt", "crckd"]
    assert main([*args, "--out", str(tmp_path / "cmp")]) == EXIT_USER_ERROR
    assert "the reference method 'ce' is not among the compared methods" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_reference_must_be_compared_unless_there_is_one_method(tmp_path):
    assert check_reference(["ce", "crckd"], "ce") == "ce"
    assert check_reference(["crckd"], "ce") is None
    with pytest.raises(ConfigError, match="'ce' is not among the compared methods"):
        check_reference(["mt", "crckd"], "ce")
    frame = pd.DataFrame(
        {"method": ["crckd"], "seed": [0], "fold": [None]}
        | {m: [0.5] for m in SCALAR_METRICS}
        | {f"last_{m}": [0.5] for m in SCALAR_METRICS}
    )
    assert write_comparison(frame, tmp_path, "ce").differences is None
    assert "One method only: no differences" in (tmp_path / "comparison.md").read_text()
    assert not (tmp_path / "differences.csv").exists()


@pytest.mark.slow
def test_a_comparison_killed_twice_and_run_again_ends_with_the_uninterrupted_table(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(root)}}))
    settings = [
        "model.backbone=test_resnet",
        "data.image_size=32",
        "train.batch_size=8",
        "train.epochs=2",
        "train.deterministic=true",
        "train.progress=false",
    ]
    command = [sys.executable, "-m", "crckd", "compare", "-c", str(config), *settings]
    command += ["--methods", "ce", "--seeds", "0", "1"]

    def start(out: Path) -> subprocess.Popen:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen([*command, "--out", str(out)], **pipes)

    def kill_once(process: subprocess.Popen, trigger: Path) -> None:
        while not trigger.exists():
            assert process.poll() is None, process.communicate()
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()

    reference, out = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = start(reference)
    first, second = out / "ce" / "seed0", out / "ce" / "seed1"
    kill_once(start(out), first / "config.yaml")  # run 1 started, most likely no last.pt yet
    kill_once(start(out), second / "checkpoints" / "last.pt")  # run 2 one epoch in
    history = load_checkpoint(second / "checkpoints" / "last.pt")["history"]
    finished = start(out)
    stdout, stderr = finished.communicate()
    assert finished.returncode == 0, stderr
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()

    assert "[1/2] ce seed0: done, skipped" in stdout
    assert f"resuming {second} at epoch {len(history) + 1}/2" in stderr
    # The epochs trained before the kill were kept, timings included: no restart from epoch 0.
    rows = pd.read_csv(second / "epochs.csv").to_dict("records")[: len(history)]
    assert [row["train_seconds"] for row in rows] == [r["train_seconds"] for r in history]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "comparison.csv"), pd.read_csv(reference / "comparison.csv")
    )
    assert (out / "comparison.md").read_text() == (reference / "comparison.md").read_text()
