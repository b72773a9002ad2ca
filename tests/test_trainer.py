"""End-to-end training on tiny, learnable datasets made by the tests."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST, make_colour_ham
from crckd.data import HAM10000_CLASSES
from crckd.engine import Trainer, load_checkpoint, train
from crckd.engine import trainer as trainer_module
from crckd.engine.trainer import TIMING_COLUMNS
from crckd.errors import ConfigError, NumericalError, RunFolderError
from crckd.methods import load_config


@pytest.fixture(scope="module")
def colour_ham(tmp_path_factory) -> Path:
    return make_colour_ham(tmp_path_factory.mktemp("data") / "ham")


def config_for(root: Path, out: Path, *extra: str):
    return load_config(overrides=[f"data.root={root}", f"output_dir={out}", *FAST, *extra])


@pytest.mark.slow
def test_ce_learns_above_chance_in_two_epochs(colour_ham, tmp_path):
    config = config_for(
        colour_ham, tmp_path / "run", "train.epochs=2", "train.lr=3e-3", "train.batch_size=8"
    )
    result = train(config)
    chance = 1 / len(HAM10000_CLASSES)
    assert result.metrics["balanced_accuracy"] > 2 * chance


@pytest.mark.slow
def test_crckd_run_writes_the_documented_run_folder(colour_ham, tmp_path):
    out = tmp_path / "run"
    result = train(config_for(colour_ham, out, "method.name=crckd", "train.epochs=2"))
    names = ("config.yaml", "split.csv", "epochs.csv", "metrics.json", "per_class.csv")
    for name in (*names, "test_predictions.csv"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    assert any((out / "tensorboard").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    for key in (
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "auc_macro",
        "kappa",
        "per_class",
        "confusion_matrix",
        "classes",
        "num_samples",
    ):
        assert key in metrics
    assert metrics["classes"] == list(HAM10000_CLASSES)
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 2
    assert {"train_ce", "train_ccd", "train_kl", "train_crp", "weight_ccd"} <= set(epochs.columns)
    assert np.isnan(epochs.loc[0, "train_crp"]) and epochs.loc[1, "train_crp"] > 0
    assert (
        (epochs["data_wait_seconds"] > 0) & (epochs["data_wait_seconds"] < epochs["train_seconds"])
    ).all()
    split = pd.read_csv(out / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= set(
        state["method"]
    )
    assert state["method"]["memory.z_s"] > 0


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(colour_ham, tmp_path, monkeypatch):
    extra = ("method.name=crckd", "train.epochs=2", "train.deterministic=true")
    full = train(config_for(colour_ham, tmp_path / "full", *extra))

    real_save = trainer_module.save_checkpoint
    saves = {"last": 0}

    def save_then_die(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt":
            saves["last"] += 1
            if saves["last"] == 1:  # one epoch done, the last one cut off
                raise _Killed

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    config = config_for(colour_ham, tmp_path / "killed", *extra)
    with pytest.raises(_Killed):
        train(config)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    real_run_epoch, epochs_run = Trainer._run_epoch, []

    def recording_run_epoch(self, epoch, state):
        epochs_run.append(epoch)
        return real_run_epoch(self, epoch, state)

    monkeypatch.setattr(Trainer, "_run_epoch", recording_run_epoch)
    resumed = train(config, resume=True)
    assert epochs_run == [1]  # only the epoch the kill cut off, not a restart

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    for key, value in a["method"].items():
        torch.testing.assert_close(b["method"][key], value, rtol=0, atol=0, msg=key)
    assert resumed.metrics == full.metrics
    history = pd.read_csv(tmp_path / "killed" / "epochs.csv").drop(columns=list(TIMING_COLUMNS))
    expected = pd.read_csv(tmp_path / "full" / "epochs.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(history, expected)


def test_a_folder_holding_another_run_is_refused(colour_ham, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("earlier run\n")
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(config_for(colour_ham, out, "train.epochs=1"))
    assert (out / "config.yaml").read_text() == "earlier run\n"


def test_sync_batchnorm_on_the_cpu_is_refused_before_anything_is_written(colour_ham, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.sync_batchnorm needs CUDA"):
        Trainer(config_for(colour_ham, out, "train.sync_batchnorm=true", "train.device=cpu"))
    assert not out.exists()


def test_nan_loss_stops_with_the_term_name(colour_ham, tmp_path, monkeypatch):
    trainer = Trainer(config_for(colour_ham, tmp_path / "run", "method.name=mt", "train.epochs=1"))

    def nan_losses(batch, epoch, weights):
        return {"ce": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(trainer.method, "training_losses", nan_losses)
    with pytest.raises(NumericalError, match=r"'ce' is nan at epoch 1, step 0"):
        trainer.fit()


@pytest.mark.slow
def test_compile_compiles_student_and_teacher_and_trains_like_eager(colour_ham, tmp_path):
    settings = ["method.name=mt", "train.epochs=1", "model.backbone=test_resnet"]
    eager = Trainer(config_for(colour_ham, tmp_path / "eager", *settings))
    compiled_config = config_for(colour_ham, tmp_path / "compiled", *settings, "train.compile=true")
    compiled = Trainer(compiled_config)
    for module in (compiled.method.student, compiled.method.teacher):
        assert module._compiled_call_impl is not None
    assert eager.method.student._compiled_call_impl is None
    eager.fit()
    compiled.fit()
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["method"]
    assert list(a) == list(b)  # the same state-dict keys: checkpoints load either way
    for key, value in a.items():
        if value.is_floating_point():
            torch.testing.assert_close(b[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_a_run_too_short_for_a_term_says_so(colour_ham, tmp_path, capsys):
    train(config_for(colour_ham, tmp_path / "run", "method.name=mt", "train.epochs=1"))
    err = capsys.readouterr().err
    assert "crckd: note: the kl term starts at epoch 2, after this run's 1 epochs" in err
    assert "kd term" not in err  # never on in any epoch: nothing to say
    # The schedule as resolved, and the EMA decay in use, logged per epoch.
    assert "method.ema.decay=0.99 (half-life 68.97 steps) method.consistency.begin_epoch=1" in err
    assert pd.read_csv(tmp_path / "run" / "epochs.csv")["ema_decay"].tolist() == [0.99]


def test_without_a_terminal_progress_comes_as_lines(colour_ham, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "LOG_SECONDS", 0.0)  # a line at every loss check
    extra = ("train.epochs=1", "train.batch_size=4", "train.progress=true")
    trainer = Trainer(config_for(colour_ham, tmp_path / "run", *extra))
    trainer.fit()
    out = capsys.readouterr().out  # captured: not a terminal, so no bar
    assert f"ce epoch 1/1: step 10/{trainer.steps_per_epoch}, loss " in out
