"""Faults and hostile inputs: bad images mid-run, NaN losses, full disks, read-only and reused
run folders, decompression bombs. docs/reliability.md lists each with the test that shows it."""

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_colour_ham, png_header, write_image
from crckd.cli import EXIT_USER_ERROR, main
from crckd.config import config_to_dict
from crckd.data import list_images
from crckd.engine import RunFolder, Trainer, load_checkpoint, save_checkpoint, train
from crckd.engine import run_folder as run_folder_module
from crckd.engine import trainer as trainer_module
from crckd.engine.distributed import Distributed
from crckd.engine.run_folder import atomic_write_text
from crckd.errors import ConfigError, DataError, NumericalError, RunFolderError
from crckd.methods import get_method, load_config
from crckd.models import build_model

TINY = [
    "model.backbone=test_resnet",
    "data.image_size=32",
    "train.batch_size=8",
    "train.progress=false",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_colour_ham(tmp_path_factory.mktemp("data") / "ham", n_per_class=8)


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", *TINY, *extra]


def tiny_config(root: Path, out: Path, *extra: str):
    return load_config(overrides=tiny_args(root, out, *extra))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# --- bad data ----------------------------------------------------------------------------------


def test_bad_images_stop_training_before_anything_is_written(data_root, tmp_path, capsys):
    root = shutil.copytree(data_root, tmp_path / "ham")
    next(root.rglob("ISIC_0000003.jpg")).write_bytes(b"")
    next(root.rglob("ISIC_0000010.jpg")).write_bytes(b"garbage")
    out = tmp_path / "run"
    assert main(["train", *tiny_args(root, out)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "ISIC_0000003.jpg" in err and "ISIC_0000010.jpg" in err and "zero-byte" in err
    assert not out.exists()


def test_a_run_records_the_data_notes_and_writes_only_inside_its_folder(
    data_root, tmp_path, monkeypatch
):
    root = shutil.copytree(data_root, tmp_path / "ham")
    grey = next(root.rglob("ISIC_0000005.jpg"))
    Image.open(grey).convert("L").save(grey)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = all_files(tmp_path)
    out = tmp_path / "run"
    assert main(["train", *tiny_args(root, out)]) == 0
    assert {p for p in all_files(tmp_path) - before if out not in p.parents} == set()
    report = json.loads((out / "data_check.json").read_text())
    assert report["ok"] and report["notes"][0]["code"] == "converted_to_rgb"
    assert "ISIC_0000005.jpg (L)" in report["notes"][0]["examples"][0]


def test_a_bad_image_mid_run_names_file_epoch_and_batch_and_resume_works(data_root, tmp_path):
    root = shutil.copytree(data_root, tmp_path / "ham")
    out = tmp_path / "run"
    config = tiny_config(root, out, "train.epochs=2", "data.num_workers=1")
    trainer = Trainer(config)
    victim = Path(trainer.data.paths(trainer.data.train)[0])
    good = victim.read_bytes()
    real_save = trainer_module.save_checkpoint

    def save_then_break_an_image(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt":
            victim.write_bytes(good[:200])

    trainer_module.save_checkpoint = save_then_break_an_image
    try:
        with pytest.raises(DataError) as caught:
            trainer.fit()
    finally:
        trainer_module.save_checkpoint = real_save
    message = str(caught.value)
    assert "epoch 2, training batch" in message and victim.name in message
    assert "Traceback" not in message and "last.pt is kept" in message
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    victim.write_bytes(good)
    assert main(["train", "--resume", str(out)]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["epoch"] == 2


# --- numerical faults --------------------------------------------------------------------------


def test_a_nan_loss_exits_2_and_keeps_the_last_good_checkpoint(
    data_root, tmp_path, monkeypatch, capsys
):
    cls = get_method("ce").cls
    real_losses = cls.training_losses

    def nan_in_epoch_two(self, batch, epoch, weights):
        terms = real_losses(self, batch, epoch, weights)
        return {"ce": terms["ce"] * float("nan")} if epoch == 1 else terms

    monkeypatch.setattr(cls, "training_losses", nan_in_epoch_two)
    out = tmp_path / "run"
    assert main(["train", *tiny_args(data_root, out, "train.epochs=2")]) == EXIT_USER_ERROR
    assert "loss term 'ce' is nan at epoch 2" in capsys.readouterr().err
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["progress"]["epoch"] == 1 and len(last["history"]) == 1
    assert all(torch.isfinite(t).all() for t in last["method"].values() if t.is_floating_point())


# --- resource faults ---------------------------------------------------------------------------


class _FullDisk:
    """A binary file whose writes stop half way with ENOSPC, as on a full disk."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, data) -> int:
        self.handle.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(
    data_root, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(data_root, out, "train.epochs=2"))
    real_save, real_fdopen = trainer_module.save_checkpoint, os.fdopen
    saved = []

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return _FullDisk(handle) if mode == "wb" and "last.pt" in saved else handle

    def save(state, path):
        real_save(state, path)
        saved.append(Path(path).name)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(RunFolderError, match=r"cannot write .*(best|last)\.pt: the disk is full"):
        trainer.fit()
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    assert not list(out.rglob("*.tmp"))


def test_a_full_disk_while_writing_a_text_file(tmp_path, monkeypatch):
    path = tmp_path / "epochs.csv"
    atomic_write_text(path, "old\n")
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        handle.write = lambda _: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(RunFolderError, match=r"epochs\.csv: the disk is full"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["epochs.csv"]


def test_a_read_only_or_impossible_output_folder_is_refused(data_root, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="cannot write"):
        Trainer(tiny_config(data_root, blocker))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(run_folder_module.tempfile, "TemporaryFile", read_only)
    with pytest.raises(RunFolderError, match="the file system is read-only"):
        Trainer(tiny_config(data_root, tmp_path / "run"))


def fake_run(folder: Path) -> Path:
    """A run folder of an earlier run, with a file of the user's beside it."""
    (folder / "checkpoints").mkdir(parents=True)
    for name in (
        "config.yaml",
        "metrics.json",
        "test_predictions.csv",
        "checkpoints/last.pt",
        "notes.txt",
    ):
        (folder / name).write_text(f"earlier {name}\n")
    return folder


def test_an_earlier_run_is_kept_without_overwrite_and_cleared_with_it(data_root, tmp_path, capsys):
    out = fake_run(tmp_path / "run")
    before = {p: digest(p) for p in all_files(out)}
    assert main(["train", *tiny_args(data_root, out)]) == EXIT_USER_ERROR
    assert "already holds a run" in capsys.readouterr().err
    assert {p: digest(p) for p in all_files(out)} == before
    RunFolder(out).prepare(resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "notes.txt"]
    assert not any((out / "checkpoints").iterdir())


def test_resume_cleans_temporary_files_and_restarts_a_run_without_checkpoint(data_root, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(data_root, out, "train.deterministic=true")
    assert main(["train", *args]) == 0
    names = ("metrics.json", "per_class.csv", "test_predictions.csv")
    finished = {name: (out / name).read_text() for name in names}
    last_epoch = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]
    # As if killed during the first epoch: the run's files are there, no checkpoint yet, and a
    # half-written one.
    for leftover in [*(out / "checkpoints").iterdir(), out / "epochs.csv", out / "metrics.json"]:
        leftover.unlink()
    stale = out / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(out)]) == 0
    assert not stale.exists()
    assert {name: (out / name).read_text() for name in finished} == finished
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == last_epoch
    with pytest.raises(RunFolderError, match="nothing to resume"):
        RunFolder(tmp_path / "empty").prepare(resume=True, overwrite=False)


def test_resume_repairs_lost_logs_and_refuses_a_changed_model_or_dataset(
    data_root, tmp_path, capsys
):
    root = shutil.copytree(data_root, tmp_path / "ham")
    out = tmp_path / "run"
    assert main(["train", *tiny_args(root, out)]) == 0
    logs = {name: (out / name).read_text() for name in ("epochs.csv", "metrics.json")}
    for name in logs:  # as if killed after the last checkpoint, before these were written
        (out / name).unlink()
    assert main(["train", "--resume", str(out)]) == 0
    assert {name: (out / name).read_text() for name in logs} == logs
    code = main(["train", "--resume", str(out), "model.feat_dim=16"])
    assert code == EXIT_USER_ERROR
    assert "model.feat_dim: 128 -> 16" in capsys.readouterr().err
    meta = root / "HAM10000_metadata.csv"
    meta.write_text("".join(meta.read_text().splitlines(keepends=True)[:-1]))
    assert main(["train", "--resume", str(out)]) == EXIT_USER_ERROR
    assert "split.csv: image_id(s) not in the ham10000 data" in capsys.readouterr().err


def test_resume_refuses_changed_training_settings_and_records_allowed_ones(
    data_root, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["train", *tiny_args(data_root, out)]) == 0
    last = (out / "checkpoints" / "last.pt").read_bytes()
    # More epochs would run the finished OneCycle schedule past its end.
    assert main(["train", "--resume", str(out), "train.epochs=2"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "train.epochs: 1 -> 2" in err and "Start a new run" in err
    assert (out / "checkpoints" / "last.pt").read_bytes() == last
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 1

    (out / "data_check.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "data.num_workers=1"]) == 0
    assert "has run all 1 epochs: testing its best.pt again" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["num_workers"] == 1
    assert (out / "data_check.json").is_file()  # the check ran again and was written


def test_resume_refuses_a_run_whose_epochs_had_another_number_of_steps(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny_args(data_root, out)]) == 0
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    steps = checkpoint["layout"]["steps_per_epoch"]
    assert checkpoint["layout"] == {"world_size": 1, "steps_per_epoch": steps}
    assert checkpoint["progress"]["step"] == steps  # one epoch
    # As if trained by 2 processes, whose epochs dropped the short last batch.
    checkpoint["layout"] = {"world_size": 2, "steps_per_epoch": steps - 1}
    save_checkpoint(checkpoint, out / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(out)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"2 process(es), {steps - 1} steps per epoch; with 1 an epoch has {steps}" in err


def test_batches_that_cannot_give_every_process_two_images_are_refused(
    data_root, tmp_path, monkeypatch
):
    with pytest.raises(ConfigError, match=r"train\.batch_size 1 .* at least 2 images"):
        Trainer(tiny_config(data_root, tmp_path / "one", "train.batch_size=1"))

    class MainOfMany(Distributed):
        """Rank 0 of 32 processes that would all agree: no process group to broadcast over."""

        def on_main(self, action):
            action()

    def many_processes(device_name):  # as if launched by torchrun on 32 processes
        return MainOfMany(rank=0, world_size=32), torch.device("cpu")

    monkeypatch.setattr(trainer_module, "init_distributed", many_processes)
    with pytest.raises(ConfigError, match="multiple of the 32 process"):
        Trainer(tiny_config(data_root, tmp_path / "uneven", "train.batch_size=48"))
    # 64 images a batch, 2 per process, but fewer training images than that: no batch at all.
    with pytest.raises(DataError, match=r"training split has \d+ images: too few for one batch"):
        Trainer(tiny_config(data_root, tmp_path / "few", "train.batch_size=64"))


def test_a_kill_between_a_new_best_and_last_pt_is_settled_on_resume(data_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *tiny_args(data_root, out)]) == 0
    best, pending = out / "checkpoints" / "best.pt", out / "checkpoints" / "best.next.pt"
    kept = best.read_bytes()
    # Killed after writing epoch 5's best but before last.pt: last.pt does not know epoch 5.
    orphan = load_checkpoint(best)
    orphan["epoch"] = 5
    save_checkpoint(orphan, pending)
    assert main(["train", "--resume", str(out)]) == 0
    assert not pending.exists() and best.read_bytes() == kept
    # Killed after last.pt, before the rename: last.pt names the pending best, which is kept.
    best.rename(pending)
    assert main(["train", "--resume", str(out)]) == 0
    assert not pending.exists() and best.read_bytes() == kept


def test_an_undefined_validation_metric_still_selects_a_model(
    data_root, tmp_path, monkeypatch, capsys
):
    real_metrics = Trainer._metrics

    def undefined_kappa(self, name):
        return {**real_metrics(self, name), "kappa": None}  # as for a one-class split

    monkeypatch.setattr(Trainer, "_metrics", undefined_kappa)
    out = tmp_path / "run"
    args = tiny_args(data_root, out, "train.select_metric=kappa", "train.epochs=2")
    assert main(["train", *args, "train.progress=true"]) == 0
    assert "val kappa n/a" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["selected_epoch"] == 0
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] == 0


def test_resume_with_a_loss_scaler_from_a_run_without_one(data_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *tiny_args(data_root, out)]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["scaler"] == {}
    trainer = Trainer(tiny_config(data_root, out), resume=True)
    # As resuming a bf16 or CPU run with train.amp=fp16 on a GPU would make it.
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)
    trainer.fit()
    assert trainer.scaler.get_scale() == 2.0**16  # a fresh scaler, not a failed load


def test_evaluation_runs_in_float32_and_refuses_nan_predictions(data_root, tmp_path, monkeypatch):
    real_predict = trainer_module.predict_probs
    dtypes = []

    def recording(*args, precision, **kwargs):
        dtypes.append(precision.dtype)
        return real_predict(*args, precision=precision, **kwargs)

    monkeypatch.setattr(trainer_module, "predict_probs", recording)
    assert main(["train", *tiny_args(data_root, tmp_path / "bf16", "train.amp=bf16")]) == 0
    assert dtypes and set(dtypes) == {None}  # as `crckd eval`, whatever train.amp is

    def nan_predictions(*args, **kwargs):
        probs, labels = real_predict(*args, **kwargs)
        return np.full_like(probs, np.nan), labels

    monkeypatch.setattr(trainer_module, "predict_probs", nan_predictions)
    with pytest.raises(NumericalError, match="predictions on the val split hold NaN"):
        train(tiny_config(data_root, tmp_path / "nan"))


def test_resume_finds_a_moved_frozen_teacher_and_tensorboard_drops_rerun_epochs(
    data_root, ce_run, tmp_path, monkeypatch, capsys
):
    teacher = shutil.copy(ce_run / "checkpoints" / "best.pt", tmp_path / "teacher.pt")
    out = tmp_path / "run"
    frozen = ["method.name=kd", "method.teacher.mode=frozen", "train.epochs=2"]
    real_full_state = Trainer._full_state

    def interrupted_after_logging_epoch_2(self, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        return real_full_state(self, state)

    monkeypatch.setattr(Trainer, "_full_state", interrupted_after_logging_epoch_2)
    args = tiny_args(data_root, out, *frozen, f"method.teacher.checkpoint={teacher}")
    capsys.readouterr()
    assert main(["train", *args]) == 130
    assert f"continue with crckd train --resume {out}" in capsys.readouterr().err
    monkeypatch.undo()
    moved = shutil.move(teacher, tmp_path / "moved.pt")
    assert main(["train", "--resume", str(out), f"method.teacher.checkpoint={moved}"]) == 0
    assert f"resuming {out} at epoch 2/2" in capsys.readouterr().err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [0, 1]


# --- hostile inputs ----------------------------------------------------------------------------


def test_a_symlink_loop_in_an_image_folder_is_walked_once(tmp_path):
    image = write_image(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "up").symlink_to(tmp_path)
    assert list_images([tmp_path]) == [image]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_predict_refuses_a_decompression_bomb_by_name(tmp_path, capsys):
    config = load_config(overrides=TINY)
    student = build_model("test_resnet", 7)
    checkpoint = tmp_path / "best.pt"
    state = {"config": config_to_dict(config), "classes": list("abcdefg")}
    save_checkpoint({**state, "student": student.state_dict()}, checkpoint)
    images = tmp_path / "images"
    write_image(images / "fine.png")
    (images / "bomb.png").write_bytes(png_header(10_000, 10_000))
    args = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p.csv")]
    assert main([*args, str(images)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "bomb.png" in err and "over the limit" in err
    assert not (tmp_path / "p.csv").exists()
