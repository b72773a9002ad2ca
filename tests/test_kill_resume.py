"""Crash safety: a training process killed with SIGKILL at random moments (one of them inside a
checkpoint write) and resumed with `--resume` ends exactly where an uninterrupted run ends."""

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_colour_ham
from crckd.engine import load_checkpoint
from crckd.engine.trainer import TIMING_COLUMNS

ARGS = [
    "model.backbone=resnet18",
    "data.image_size=32",
    "train.batch_size=16",
    "train.epochs=3",
    "train.deterministic=true",
    "train.progress=false",
    "method.name=crckd",
    "method.ccd.num_negatives=16",
    "method.ccd.num_positives=2",
    "method.consistency.begin_epoch=1",
    "method.crp.begin_epoch=1",
]


def start(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "crckd", "train", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def modified(path: Path) -> float:
    """Modification time of `path`, 0 when it does not exist (any more)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def writing(run: Path, since: float) -> Callable[[], bool]:
    """True while a checkpoint is being written since `since` (its temporary file exists).

    Older temporary files are the leftovers of a killed process, which a resumed run deletes
    only once it has started: they must not count.
    """
    return lambda: any(modified(p) > since for p in (run / "checkpoints").glob(".*.tmp"))


def training(run: Path, since: float) -> Callable[[], bool]:
    """True once this process has begun writing a checkpoint, i.e. it is well into training."""
    checkpoints = [run / "checkpoints" / name for name in ("best.pt", "last.pt")]
    return lambda: writing(run, since)() or any(modified(p) > since for p in checkpoints)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], delay: float) -> bool:
    """SIGKILL `process` `delay` seconds after `condition` holds; False if it ended first."""
    while process.poll() is None and not condition():
        time.sleep(0.002)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.kill()
    process.wait()
    return True


def assert_same_run(run: Path, reference: Path, note: str) -> None:
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    ), note
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(reference / "checkpoints" / name)
        b = load_checkpoint(run / "checkpoints" / name)
        for part in ("student", "method") if name == "last.pt" else ("student",):
            assert a[part].keys() == b[part].keys(), note
            for key, value in a[part].items():
                torch.testing.assert_close(b[part][key], value, rtol=0, atol=0, msg=f"{key} {note}")
    history = pd.read_csv(run / "epochs.csv").drop(columns=list(TIMING_COLUMNS))
    expected = pd.read_csv(reference / "epochs.csv").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(history, expected, obj=note)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    reference, run = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = start(f"data.root={root}", f"output_dir={reference}", *ARGS)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills: list[str] = []
    # A kill that misses (the run ended first) ends the loop, so the 3 kills asserted below are
    # always these 3: a fresh run and a resumed one killed inside a write, a resumed one between.
    for plan in ("writing", "training", "writing"):
        resume = (run / "config.yaml").exists()
        since = time.time()
        args = ["--resume", str(run)] if resume else [f"data.root={root}", f"output_dir={run}"]
        process = start(*args, *ARGS)
        if plan == "writing":
            killed = kill_when(process, writing(run, since), 0.0)
        else:
            killed = kill_when(process, training(run, since), rng.uniform(0.0, 0.8))
        if not killed:
            break
        # A kill that landed inside a write leaves the temporary file behind.
        inside = " inside a write" if writing(run, since)() else ""
        kills.append(f"{plan}{inside}{' (resumed)' if resume else ''}")
    note = f"seed {seed}, kills: {kills}"
    finished = start("--resume", str(run), *ARGS)
    assert finished.wait() == 0, finished.stderr.read() + note
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()
    assert len(kills) >= 3, note
    assert any("writing inside a write" in kill for kill in kills), note
    assert not list(run.rglob("*.tmp")), note
    assert_same_run(run, reference, note)
