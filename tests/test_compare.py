"""`crckd compare`: the grid of runs, skipping finished ones, and the tables it writes."""

import pandas as pd
import pytest
import yaml

from conftest import FAST, make_colour_ham
from crckd.cli import EXIT_USER_ERROR, main
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
