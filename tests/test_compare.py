"""`crckd compare`: the grid of runs, skipping finished ones, and the tables it writes."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import FAST, make_colour_ham
from crckd.cli import EXIT_USER_ERROR, main
from crckd.engine import load_checkpoint
from crckd.tools.compare import bar_chart, markdown_table, plan_runs, summarize


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
    capsys.readouterr()
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


@pytest.mark.slow
def test_a_comparison_killed_twice_and_run_again_ends_with_the_uninterrupted_table(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(root)}}))
    settings = [
        "model.backbone=test_resnet",
        "data.image_size=32",
        "train.batch_size=8",
        "train.epochs=3",
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
    assert f"resuming {second} at epoch {len(history) + 1}/3" in stderr
    # The epochs trained before the kill were kept, timings included: no restart from epoch 0.
    rows = pd.read_csv(second / "epochs.csv").to_dict("records")[: len(history)]
    assert [row["train_seconds"] for row in rows] == [r["train_seconds"] for r in history]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "comparison.csv"), pd.read_csv(reference / "comparison.csv")
    )
    assert (out / "comparison.md").read_text() == (reference / "comparison.md").read_text()
