"""The benchmark scripts run end to end with tiny settings on the CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml

from conftest import make_colour_ham

REPO = Path(__file__).resolve().parents[1]


def bench_module(name: str) -> ModuleType:
    """A bench/ script imported in this process (its functions, without a Python start-up)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_reproduce(
    tmp_path: Path, epochs: int, *options: str, overrides: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run bench/gpu_reproduce.py tiny on the CPU, on a colour HAM folder, into tmp_path/out
    (config overrides last, where no option can take them for its values)."""
    root = make_colour_ham(tmp_path / "ham", n_per_class=10)
    command = [
        sys.executable,
        str(REPO / "bench" / "gpu_reproduce.py"),
        "--data-root", str(root), "--epochs", str(epochs), "--image-size", "32",
        "--backbone", "resnet18", "--batch-size", "16", "--workers", "0",
        "--device", "cpu", *options, "--out", str(tmp_path / "out"), *overrides,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.slow
def test_gpu_reproduce_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    gpu_reproduce(tmp_path, 2, "--no-cache").check_returncode()
    report = json.loads((out / "gpu_reproduce.json").read_text())
    assert set(report["results"]) == {"ce", "crckd"}
    for row in report["results"].values():
        assert row["train_images_per_second"] > 0
        assert 0 <= row["data_wait_fraction"] <= 1
        assert 0 <= row["test"]["balanced_accuracy"] <= 1
    method = yaml.safe_load((out / "crckd" / "config.yaml").read_text())["method"]
    # The defaults are 20 (of 80 epochs); scaled to 2 epochs they round to 0.
    assert method["consistency"]["begin_epoch"] == 0
    assert method["crp"]["begin_epoch"] == 0
    assert method["consistency"]["rampup_epochs"] == pytest.approx(30 * 2 / 80)


@pytest.mark.slow
def test_gpu_reproduce_keeps_the_finished_methods_when_a_later_one_fails(tmp_path):
    out = tmp_path / "out"
    methods = ("--methods", "ce", "no_such_method")
    finished = gpu_reproduce(tmp_path, 1, *methods, overrides=("train.lr=0.002",))
    assert finished.returncode != 0
    assert "no_such_method" in finished.stderr
    assert set(json.loads((out / "gpu_reproduce.json").read_text())["results"]) == {"ce"}
    assert yaml.safe_load((out / "ce" / "config.yaml").read_text())["train"]["lr"] == 0.002


@pytest.mark.slow
def test_step_overhead_writes_json(tmp_path):
    out = tmp_path / "step.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "step_overhead.py"),
        "--image-size", "32", "--batch-size", "8", "--n-data", "200",
        "--warmup", "1", "--repeats", "2", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(out.read_text())
    rounds = report["seconds_per_round"]
    assert set(rounds) == {"ce", "mt", "crckd", "forward"}
    assert all(len(times) == 2 for times in rounds.values())
    per_round = [c / e for c, e in zip(rounds["crckd"], rounds["ce"], strict=True)]
    assert report["ratio_crckd_over_ce"] == pytest.approx(sum(per_round) / 2)  # median of 2
    forward = [f / e for f, e in zip(rounds["forward"], rounds["ce"], strict=True)]
    assert report["ratio_ce_plus_one_forward"] == pytest.approx(1 + sum(forward) / 2)
    assert set(report["median_step_seconds"]) == {"ce", "mt", "crckd"}


def test_paired_intervals_reads_a_comparison_csv(tmp_path):
    rows = [("ce", s, 0.60 + 0.01 * s) for s in range(3)]
    rows += [("crckd", s, 0.70 + 0.01 * s) for s in range(3)]  # +0.10 at every seed
    rows += [("mt", s, v) for s, v in enumerate([0.55, 0.66, 0.62])]  # -0.05, +0.05, 0.0
    lines = ["method,seed,fold,balanced_accuracy,f1_macro,auc_macro,kappa"]
    lines += [f"{m},{s},,{v},{v},{v},{v}" for m, s, v in rows]
    csv = tmp_path / "comparison.csv"
    csv.write_text("\n".join(lines) + "\n")
    table = bench_module("paired_intervals").interval_table(pd.read_csv(csv), "ce")
    by_method = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "**+0.100 [+0.100, +0.100]** better" in by_method["crckd"]
    assert "+0.000 [" in by_method["mt"] and "better" not in by_method["mt"]


def test_paired_intervals_pairs_the_seeds_of_two_comparisons(tmp_path):
    header = "method,seed,fold,balanced_accuracy,f1_macro,auc_macro,kappa\n"
    few, many = tmp_path / "few.csv", tmp_path / "many.csv"
    few.write_text(header + "".join(f"mt,{s},,{0.5 + s / 100},0,0,0\n" for s in range(3)))
    many.write_text(header + "".join(f"ce,{s},,{0.7 + s / 50},0,0,0\n" for s in range(3)))
    module = bench_module("paired_intervals")
    frame = module.read_comparisons([str(few), f"{many}@all labels"])
    assert sorted(set(frame["method"])) == ["ce (all labels)", "mt"]
    table = module.interval_table(frame, "ce (all labels)")
    row = next(line for line in table.splitlines() if line.startswith("| mt |"))
    # Paired by seed: -0.20, -0.21, -0.22, mean -0.21.
    assert "**-0.210 [" in row and "worse" in row


def test_long_run_records_memory_files_and_folder_size_per_epoch(tmp_path):
    out = tmp_path / "long_run.json"
    command = [sys.executable, str(REPO / "bench" / "long_run.py"), "--epochs", "3"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, text=True)
    report = json.loads(out.read_text())
    rows = report["per_epoch"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert all(row["rss_bytes"] > 2**20 and row["open_files"] > 2 for row in rows)
    # Each epoch adds an epochs.csv row and TensorBoard points; the checkpoints are replaced.
    assert rows[0]["epochs_csv_bytes"] < rows[1]["epochs_csv_bytes"] < rows[2]["epochs_csv_bytes"]
    assert rows[0]["tensorboard_bytes"] < rows[2]["tensorboard_bytes"]
    assert rows[2]["folder_bytes"] >= rows[2]["checkpoints_bytes"] + rows[2]["tensorboard_bytes"]
    slope = (rows[2]["epochs_csv_bytes"] - rows[0]["epochs_csv_bytes"]) / 2 * 100
    assert report["growth_per_100_epochs"]["epochs_csv_bytes"] == pytest.approx(slope)


def test_schedule_study_table_reads_the_selected_validation_epoch(tmp_path):
    """Each run counts at its best validation balanced accuracy; differences are paired."""
    for folder, base in (
        ("ema_paper/crckd", 0.6),
        ("ema_relative/crckd", 0.5),
        ("ema_paper/ce", 0.5),
    ):
        for seed in range(3):
            run = tmp_path / folder / f"seed{seed}"
            run.mkdir(parents=True)
            bacc = [base - 0.1, base + 0.01 * seed, base - 0.2]  # epoch 1 is selected
            lines = ["epoch,val_balanced_accuracy,val_f1_macro,val_kappa"]
            lines += [f"{e},{b},{b / 2},{e}" for e, b in enumerate(bacc)]
            (run / "epochs.csv").write_text("\n".join(lines) + "\n")
    table = bench_module("schedule_study").tables(tmp_path)
    assert "| crckd, EMA decay 0.99 (paper) | 0.600 | 0.610 | 0.620 | 0.610 |" in table
    paper_vs_ce = next(line for line in table.splitlines() if "(paper) - ce" in line)
    assert "+0.100 [+0.100, +0.100] better" in paper_vs_ce  # balanced accuracy
    assert paper_vs_ce.endswith("+0.000 [+0.000, +0.000] within noise |")  # kappa: epoch 1 both


def test_schedule_study_table_compares_each_given_run_with_those_before_it(tmp_path):
    for folder, base in (("a", 0.5), ("b", 0.6), ("c", 0.8)):
        for seed in (1, 3):
            run = tmp_path / folder / f"seed{seed}"
            run.mkdir(parents=True)
            b = base + 0.01 * seed
            (run / "epochs.csv").write_text(
                f"epoch,val_balanced_accuracy,val_f1_macro,val_kappa\n0,{b},{b},{b}\n"
            )
    runs = {"A": "a", "B": "b", "C": "c"}
    module = bench_module("schedule_study")
    assert module.pairs_with_earlier(3) == ((1, 0), (2, 0), (2, 1))
    table = module.tables(tmp_path, runs, (1, 3), module.pairs_with_earlier(3))
    assert "| run (validation balanced accuracy) | seed 1 | seed 3 | mean |" in table
    assert "| C | 0.810 | 0.830 | 0.820 |" in table
    assert "| C - B | +0.200 [+0.200, +0.200] better" in table
    assert "| B - A | +0.100 [+0.100, +0.100] better" in table


def test_study_findings_correlate_each_key_with_the_objective_over_finished_trials(tmp_path):
    trials = pd.DataFrame(
        {
            "trial": range(6),
            "state": ["complete"] * 5 + ["pruned"],
            "value": [0.50, 0.55, 0.60, 0.65, 0.70, 0.10],
            "epochs": [6] * 5 + [2],
            "method.ccd.weight": [0.01, 0.1, 0.2, 0.5, 1.0, 5.0],  # rises with the value
            "method.crp.weight": [3.0, 2.0, 1.0, 0.5, 0.1, 9.0],  # falls with it
            "method.ccd.teacher_side": [True, False, True, False, True, False],
            "run_dir": [f"trials/trial-{i:04d}" for i in range(6)],
            "note": [""] * 6,
        }
    )
    trials.to_csv(tmp_path / "trials.csv", index=False)
    text = bench_module("study_findings").findings(tmp_path)
    assert text.startswith("6 trials: 5 complete, 1 pruned. Objective over the finished ones: ")
    assert "best 0.7000 (trial 4), median 0.6000, worst 0.5000" in text
    assert "| `method.ccd.weight` | 0.01 to 1 | 1 | rho +1.00 (p 0.00) |" in text  # pruned out
    assert "| `method.crp.weight` | 0.1 to 3 | 0.1 | rho -1.00 (p 0.00) |" in text
    assert "False: mean 0.600 (n 2), True: mean 0.600 (n 3)" in text


def test_early_validation_ranks_each_epoch_against_the_runs_best(tmp_path):
    # Epoch 1 orders the runs backwards, epoch 2 as their best; the short run is left out.
    curves = {"a": [0.5, 0.3, 0.6], "b": [0.4, 0.4, 0.7], "c": [0.3, 0.5, 0.8], "d": [0.9, 0.1]}
    runs = []
    for name, values in curves.items():
        run = tmp_path / name
        run.mkdir()
        rows = "".join(f"{e},{v}\n" for e, v in enumerate(values))
        (run / "epochs.csv").write_text("epoch,val_balanced_accuracy\n" + rows)
        runs.append(run)
    module = bench_module("early_validation")
    text = module.early_ranking(module.validation_curves(runs, "balanced_accuracy"))
    assert text.startswith("3 runs of 3 epochs.")
    assert "| 1 | -1.00 |" in text and "| 2 | +1.00 |" in text


def test_paired_intervals_of_the_last_epochs_read_the_last_columns(tmp_path):
    header = "method,seed,fold,balanced_accuracy,last_balanced_accuracy\n"
    rows = "".join(f"ce,{s},,0.5,{0.6 + s / 100}\n" for s in range(3))
    rows += "".join(f"mt,{s},,0.9,{0.5 + s / 100}\n" for s in range(3))  # selected +0.4, last -0.1
    csv = tmp_path / "comparison.csv"
    csv.write_text(header + rows)
    module = bench_module("paired_intervals")
    last = module.last_epochs(pd.read_csv(csv))
    table = module.interval_table(last, "ce", ["balanced_accuracy"])
    assert "**-0.100 [-0.100, -0.100]** worse" in table
    selected = module.interval_table(pd.read_csv(csv), "ce", ["balanced_accuracy"])
    assert "**+0.400 [+0.400, +0.400]** better" in selected
