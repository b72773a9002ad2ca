"""One writer per run folder: a second writer is refused at once naming the holder, a lock left
by a killed process is taken over, and a running training survives a `--resume` beside it."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_colour_ham
from crckd.cli import EXIT_USER_ERROR, main
from crckd.engine import RunLock, load_checkpoint
from crckd.engine.lock import HOLDER_NAME, LOCK_NAME
from crckd.errors import RunFolderError

# Holds the lock of argv[1] until killed; with "fork", first forks a child that outlives it
# (as a killed trainer's DataLoader workers do for a while).
HOLDER = """
import os, sys, time
from crckd.engine.lock import RunLock
RunLock(sys.argv[1]).acquire()
if sys.argv[2:] == ["fork"] and os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("held", flush=True)
time.sleep(600)
"""
# Exit code 1 if another process holds the lock file argv[1] (crckd is not imported).
PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(1)
"""


def hold(folder: Path, *args: str) -> subprocess.Popen:
    """A process holding `folder`'s lock (returned once it holds it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "held\n"
    return process


def locked_by_us(folder: Path) -> bool:
    """Whether a process other than the probe holds `folder`'s lock (this one, in tests)."""
    probe = subprocess.run([sys.executable, "-c", PROBE, str(folder / LOCK_NAME)])
    return probe.returncode == 1


def test_a_second_writer_is_refused_at_once_and_a_killed_holders_lock_is_taken_over(
    tmp_path, capsys
):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        # Refused before any other check: the data root does not even exist.
        args = ["train", "data.root=/nonexistent", f"output_dir={folder}"]
        assert main(args) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        holder_named = f"is being written by pid {holder.pid} on host {socket.gethostname()}"
        assert f"{folder} {holder_named}" in err
        assert "Wait for that process to end" in err
        config = tmp_path / "base.yaml"
        config.write_text("{}\n")
        compare = ["compare", "-c", str(config), "--methods", "ce", "--out", str(folder)]
        assert main(compare) == EXIT_USER_ERROR
        assert f"pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            RunLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    lock = RunLock(folder)
    lock.acquire()  # the kernel dropped the dead holder's lock
    assert f"locked by pid {holder.pid}" in capsys.readouterr().err
    assert json.loads((folder / HOLDER_NAME).read_text())["pid"] == os.getpid()
    assert locked_by_us(folder)
    lock.release()
    assert not locked_by_us(folder)
    assert not (folder / HOLDER_NAME).exists() and (folder / LOCK_NAME).exists()
    with RunLock(folder):  # a clean release leaves no note for the next holder
        pass
    assert "locked by" not in capsys.readouterr().err


def test_forked_children_of_a_killed_holder_do_not_keep_its_lock(tmp_path):
    folder = tmp_path / "run"
    holder = hold(folder, "fork")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(folder):  # at once, while the forked child still runs
        assert locked_by_us(folder)


def test_nested_holders_in_one_process_share_the_lock_until_the_last_releases(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder) as outer:
        inner = RunLock(folder)
        inner.check()  # held by this process: not a second writer
        inner.acquire()
        inner.acquire()  # one object holds once
        inner.release()
        assert outer.held and not inner.held
        assert locked_by_us(folder)
    assert not locked_by_us(folder)


# `crckd train --resume RUN` (argv[2]) as soon as the file argv[1] exists, crckd and the trainer
# imported before (so that it reaches the lock within a fraction of the first run's epochs)
SECOND_WRITER = """
import sys, time
from pathlib import Path
import crckd.engine.trainer
from crckd.cli import main
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
sys.exit(main(["train", "--resume", sys.argv[2]]))
"""


@pytest.mark.slow
def test_resume_while_the_run_trains_is_refused_and_the_run_finishes_untouched(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    run = tmp_path / "run"
    args = [
        f"data.root={root}",
        f"output_dir={run}",
        "model.backbone=test_resnet",
        "data.image_size=32",
        "train.batch_size=8",
        "train.epochs=10",  # the second writer is refused within a fraction of one
        "train.progress=false",
    ]
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen([sys.executable, "-m", "crckd", "train", *args], **pipes)
    last = run / "checkpoints" / "last.pt"  # the second starts once the first is training
    second = subprocess.Popen([sys.executable, "-c", SECOND_WRITER, str(last), str(run)], **pipes)
    refused = second.wait()
    assert first.wait() == 0, first.stderr.read()
    err = second.stderr.read()
    assert refused == EXIT_USER_ERROR, err
    # the refusal came while the first process held the folder: it names that process
    assert f"{run} is being written by pid {first.pid} on host" in err
    assert "Traceback" not in err
    assert pd.read_csv(run / "epochs.csv")["epoch"].tolist() == list(range(10))
    assert load_checkpoint(last)["epoch"] == 9
    best = load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]
    assert json.loads((run / "metrics.json").read_text())["selected_epoch"] == best
    assert not list(run.rglob("*.tmp")) and not (run / HOLDER_NAME).exists()
