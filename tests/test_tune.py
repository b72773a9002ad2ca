"""`crckd tune`: the search space, studies on the validation split only, pruning, and a study
killed mid-trial and continued."""

import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import FAST, make_colour_ham
from crckd.cli import main
from crckd.config import apply_overrides, read_yaml
from crckd.data import datasets
from crckd.engine import RunResult, train
from crckd.errors import ConfigError
from crckd.methods import build_config, load_config
from crckd.tools import tune as tune_module
from crckd.tools.tune import parse_space, tune

# timm's 0.4M-parameter ResNet: trials of a few seconds
TINY = [*FAST, "model.backbone=test_resnet"]
SPACE = {"train.lr": {"float": [1e-3, 1e-2], "log": True}, "method.name": {"choice": ["ce", "mt"]}}


@pytest.fixture(scope="module")
def colour_ham(tmp_path_factory) -> Path:
    return make_colour_ham(tmp_path_factory.mktemp("data") / "ham", n_per_class=8)


def base_for(root: Path, *extra: str) -> dict:
    return apply_overrides({}, [f"data.root={root}", *TINY, "train.epochs=2", *extra])


def test_the_space_gives_optunas_distributions():
    space = {
        "train.lr": {"float": [1e-4, 3e-3], "log": True},
        "method.ema.decay": {"float": [0.9, 0.999]},
        "method.ccd.num_positives": {"int": [2, 20]},
        "train.batch_size": {"int": [8, 64], "log": True},
        "method.name": {"choice": ["mt", "crckd"]},
        "method.distill.params.T": {"float": [1, 8]},
    }
    assert parse_space(space, {}) == {
        "train.lr": FloatDistribution(1e-4, 3e-3, log=True),
        "method.ema.decay": FloatDistribution(0.9, 0.999),
        "method.ccd.num_positives": IntDistribution(2, 20),
        "train.batch_size": IntDistribution(8, 64, log=True),
        "method.name": CategoricalDistribution(["mt", "crckd"]),
        "method.distill.params.T": FloatDistribution(1.0, 8.0),
    }


@pytest.mark.parametrize(
    ("key", "spec", "words"),
    [
        ("train.lrr", {"float": [0.1, 0.2]}, ["train.lrr", "did you mean 'train.lr'"]),
        ("train.lr", {"float": [0.2, 0.1]}, ["train.lr", "low"]),
        ("train.lr", {"float": [0, 0.1], "log": True}, ["train.lr", "log"]),
        ("method.ema.decay", {"float": [0.9, 1.5]}, ["method.ema.decay", "less than or equal"]),
        ("train.epochs", {"float": [1, 3]}, ["train.epochs", "integer"]),
        ("train.epochs", {"int": [1.5, 3]}, ["train.epochs", "two ints"]),
        ("train.epochs", {"int": [1, 3], "step": 1}, ["train.epochs", "unknown ['step']"]),
        ("train.epochs", {"int": [1, 3], "float": [1, 3]}, ["train.epochs", "one of"]),
        ("train.epochs", [1, 3], ["train.epochs", "one of"]),
        ("train.lr", {"float": [0.1, 0.2], "log": "yes"}, ["train.lr", "log must be"]),
        ("method.name", {"choice": []}, ["method.name", "non-empty list"]),
        ("method.name", {"choice": [["ce"]]}, ["method.name", "non-empty list"]),
        ("method.name", {"choice": ["ce", "crkd"]}, ["method.name", "did you mean 'crckd'"]),
        ("method.name", {"choice": ["ce"], "log": True}, ["method.name", "unknown ['log']"]),
        ("output_dir", {"choice": ["a"]}, ["output_dir", "cannot be searched"]),
        ("train.select_metric", {"choice": ["kappa"]}, ["train.select_metric", "--metric"]),
    ],
)
def test_a_bad_space_is_a_config_error_naming_the_key(key, spec, words):
    with pytest.raises(ConfigError) as caught:
        parse_space({key: spec}, {}, source="space.yaml")
    message = str(caught.value)
    assert message.startswith("space.yaml: "), message
    for word in words:
        assert word in message, message


def test_an_empty_space_is_refused():
    with pytest.raises(ConfigError, match="maps config keys"):
        parse_space({}, {})


def test_cli_refuses_a_bad_space_before_training(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("train: {epochs: 1}\n")
    (tmp_path / "space.yaml").write_text("train.lrr: {float: [0.001, 0.01]}\n")
    args = ["tune", "-c", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml")]
    assert main([*args, "--trials", "2", "--out", str(tmp_path / "out")]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_interrupted_trial_runs_again_with_its_values_and_folder(tmp_path, monkeypatch):
    runs: list[tuple[Path, float]] = []

    def fake_train(config, **options):
        runs.append((config.output_dir, config.train.lr))
        if len(runs) == 1:
            raise KeyboardInterrupt
        assert options["evaluate_test"] is False
        return RunResult(config.output_dir, {"selected_epoch": 0, "val_balanced_accuracy": 0.5})

    monkeypatch.setattr(tune_module, "train", fake_train)
    out, space = tmp_path / "study", {"train.lr": {"float": [1e-3, 1e-2]}}
    with pytest.raises(KeyboardInterrupt):
        tune({}, space, out, trials=1)
    result = tune({}, space, out, trials=1)
    assert runs[0] == runs[1] and runs[0][0] == out / "trials" / "trial-0000"
    assert list(result.table["state"]) == ["fail", "complete"]
    assert list(result.table["note"]) == [
        "interrupted; run again as trial 1",
        "rerun of trial 0, from the start",
    ]
    assert result.best_value == 0.5 and result.best_params == {"train.lr": runs[0][1]}


def test_the_default_pruner_judges_no_trial_in_the_first_third_of_its_epochs():
    study = optuna.create_study(direction="maximize", pruner=tune_module.default_pruner(True, 6))
    for _ in range(5):  # the median pruner's start-up trials, all better than the next one
        good = study.ask()
        for epoch in range(6):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    poor = study.ask()
    judged = []
    for epoch in range(3):
        poor.report(0.1, epoch)
        judged.append(poor.should_prune())
    assert judged == [False, False, True]  # epochs 1 and 2 of 6 are not judged, epoch 3 is
    never = optuna.create_study(pruner=tune_module.default_pruner(False, 6))
    assert isinstance(never.pruner, optuna.pruners.NopPruner)


@pytest.mark.slow
def test_without_test_evaluation_no_test_image_is_opened(colour_ham, tmp_path, monkeypatch):
    opened: list[str] = []

    def recording(path, *args, **kwargs):
        opened.append(Path(path).stem)
        return open_rgb(path, *args, **kwargs)

    open_rgb = datasets.open_rgb
    monkeypatch.setattr(datasets, "open_rgb", recording)
    out = tmp_path / "run"
    overrides = [f"data.root={colour_ham}", f"output_dir={out}", *TINY, "data.check=false"]
    result = train(load_config(overrides=[*overrides, "train.epochs=2"]), evaluate_test=False)
    split = pd.read_csv(out / "split.csv").groupby("split")["image_id"].apply(set)
    assert split["val"] <= set(opened)  # the recorder sees what the loaders open
    assert not split["test"] & set(opened)
    assert not (out / "metrics.json").exists() and not (out / "per_class.csv").exists()
    epochs = pd.read_csv(out / "epochs.csv")
    assert not [c for c in epochs.columns if c.startswith("test_")]
    selected = int(epochs["val_balanced_accuracy"].idxmax())
    assert result.metrics["selected_epoch"] == selected
    assert result.metrics["val_balanced_accuracy"] == epochs["val_balanced_accuracy"][selected]
    assert not [key for key in result.metrics if not key.startswith(("val_", "selected_"))]


@pytest.fixture(scope="module")
def study(colour_ham, tmp_path_factory) -> tuple[Path, dict, str]:
    """A 3-trial study of ce and mt on the colour folder; its folder, base config and output."""
    out = tmp_path_factory.mktemp("tune") / "study"
    base = base_for(colour_ham)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tune(base, SPACE, out, trials=3, seed=0)
    return out, base, printed.getvalue()


@pytest.mark.slow
def test_a_study_writes_the_best_config_and_the_trials(study):
    out, _, printed = study
    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["complete"] * 3
    assert list(table["epochs"]) == [2, 2, 2]
    lines = printed.splitlines()
    assert [line.split(" (#")[0] for line in lines] == [f"trial {k}/3" for k in (1, 2, 3)]
    best = table.loc[table["value"].idxmax()]
    assert f"| best {best['value']:.4f} (trial {best['trial']})" in lines[-1]
    for _, row in table.iterrows():
        folder = out / row["run_dir"]
        epochs = pd.read_csv(folder / "epochs.csv")
        # The objective: the validation metric of the selected (best validation) epoch.
        assert row["value"] == epochs["val_balanced_accuracy"].max()
        assert not [c for c in epochs.columns if c.startswith("test_")]
        assert not (folder / "metrics.json").exists()
        assert read_yaml(folder / "config.yaml")["train"]["lr"] == row["train.lr"]
    config = build_config(read_yaml(out / "best.yaml"))
    assert config.train.lr == best["train.lr"]
    assert config.method.name == best["method.name"]
    assert config.output_dir is None  # a new run folder, not a trial's
    assert (out / "trials.png").read_bytes().startswith(b"\x89PNG")
    assert f"| {best['trial']} | complete |" in (out / "trials.md").read_text()


@pytest.mark.slow
def test_a_study_continues_only_with_its_own_settings(study):
    out, base, _ = study
    before = (out / "trials.csv").read_text()
    result = tune(base, SPACE, out, trials=3, seed=0)  # all trials done: none runs
    assert (out / "trials.csv").read_text() == before
    assert len(result.table) == 3
    other_space = {**SPACE, "train.lr": {"float": [1e-4, 1e-2], "log": True}}
    with pytest.raises(ConfigError, match=r"another search space \(\['train.lr'\]\)"):
        tune(base, other_space, out, trials=4)
    with pytest.raises(ConfigError, match=r"another config .*train.epochs: 2 -> 3"):
        tune({**base, "train": {**base["train"], "epochs": 3}}, SPACE, out, trials=4)
    with pytest.raises(ConfigError, match="study of val balanced_accuracy, not kappa"):
        tune(base, SPACE, out, trials=4, metric="kappa")
    assert (out / "trials.csv").read_text() == before


@pytest.mark.slow
def test_a_pruned_trial_stops_after_its_epoch_and_is_marked(colour_ham, tmp_path):
    out = tmp_path / "study"
    # A pruner that prunes every value below 2: every trial, at its first epoch.
    pruner = optuna.pruners.ThresholdPruner(lower=2.0)
    space = {"train.lr": {"float": [1e-3, 1e-2]}}
    result = tune(base_for(colour_ham), space, out, trials=2, seed=0, pruner=pruner)
    assert list(result.table["state"]) == ["pruned", "pruned"]
    assert result.best_trial is None and not (out / "best.yaml").exists()
    for run_dir in result.table["run_dir"]:
        assert len(pd.read_csv(out / run_dir / "epochs.csv")) == 1
        record = yaml.safe_load((out / run_dir / "trial.json").read_text())
        assert record["state"] == "pruned"
        assert record["note"].startswith("pruned at epoch 1 (val ")


def start_tune(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "crckd", "tune", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_study_continues_to_the_result_of_an_uninterrupted_one(colour_ham, tmp_path):
    (tmp_path / "base.yaml").write_text(f"data: {{root: {colour_ham}}}\n")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    args = ["-c", str(tmp_path / "base.yaml"), *TINY, "train.epochs=2", "train.deterministic=true"]
    # One complete trial before the killed one, then the killed one run again: 2 trials.
    args += ["--space", str(tmp_path / "space.yaml"), "--trials", "2", "--seed", "0"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = start_tune(*args, "--out", str(reference))
    process = start_tune(*args, "--out", str(killed))
    epochs = killed / "trials" / "trial-0001" / "epochs.csv"
    while process.poll() is None and not epochs.exists():  # trial 1 has finished an epoch
        time.sleep(0.002)
    process.kill()
    process.wait()
    before = pd.read_csv(epochs)
    assert len(before) < 2, "the kill came after trial 1 finished"
    finished = start_tune(*args, "--out", str(killed))
    output, errors = finished.communicate()
    assert finished.returncode == 0, errors
    assert "trial 1 was left running by a killed process" in output
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()

    table = pd.read_csv(killed / "trials.csv")
    assert list(table["state"]) == ["complete", "fail", "complete"]
    assert table["note"][1] == "killed; run again as trial 2"
    assert table["note"][2] == "rerun of trial 1, resumed from its last checkpoint"
    assert table["run_dir"][2] == "trials/trial-0001"
    # Resumed, not run again: the epochs trained before the kill are kept as they were
    # (their timings too), and the others follow.
    after = pd.read_csv(epochs)
    assert list(after["epoch"]) == [0, 1]
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before)
    # The same trials, values and best config as the study that was never killed.
    expected = pd.read_csv(reference / "trials.csv")
    done = table[table["state"] == "complete"].reset_index(drop=True)
    columns = ["value", "train.lr", "method.name"]
    pd.testing.assert_frame_equal(done[columns], expected[columns])
    assert read_yaml(killed / "best.yaml") == read_yaml(reference / "best.yaml")
    # The pruner saw every epoch of the resumed trial, those before the kill too.
    assert intermediate_values(killed, 2) == intermediate_values(reference, 1)
    assert list(intermediate_values(killed, 2)) == [0, 1]


def intermediate_values(out: Path, number: int) -> dict[int, float]:
    """The per-epoch values trial `number` of the study in `out` reported to the pruner."""
    storage = f"sqlite:///{out / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).trials[number].intermediate_values
