"""DDP with the gloo backend on the CPU: two processes against one on the same global batch."""

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from conftest import make_colour_ham, write_image
from crckd.cli import EXIT_USER_ERROR
from crckd.data import eval_transform
from crckd.data.datasets import ImageDataset
from crckd.engine import load_checkpoint
from crckd.engine.distributed import (
    DEFAULT_DIST_TIMEOUT,
    DIST_TIMEOUT_ENV,
    collective_timeout,
    convert_sync_batchnorm,
    wrap_trainable,
)
from crckd.engine.inference import run_model
from crckd.engine.trainer import TIMING_COLUMNS
from crckd.errors import ConfigError
from crckd.methods import MethodContext, available_methods, get_method, load_config
from crckd.models import build_model
from ddp_worker import train_and_describe
from test_run_lock import hold

WORKER = Path(__file__).with_name("ddp_worker.py")
# A BatchNorm-free backbone (LayerNorm): then a 2-rank step is mathematically the
# single-process step on the same global batch, class-weighted CE and the teacher's rotations
# included (per-rank BatchNorm statistics are the one documented difference otherwise).
OVERRIDES = [
    "model.backbone=convnext_atto",
    "data.image_size=32",
    "train.batch_size=16",
    "train.epochs=2",
    "train.progress=false",
    "method.name=crckd",
    "method.ccd.num_negatives=32",
    "method.ccd.num_positives=4",
    "method.consistency.begin_epoch=0",
    "method.crp.begin_epoch=0",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The environment torchrun gives rank `rank` of a one-machine job."""
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def start_ranks(world_size: int, out: Path, overrides: list[str]) -> list:
    """Start the worker as `world_size` ranks (as torchrun would); their dumps go to `out`."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = rank_env(rank, world_size, port)
        dump = out / f"rank{rank}.pt"
        command = [sys.executable, str(WORKER), str(dump), *overrides]
        procs.append((subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True), dump))
    return procs


def collect(procs: list) -> list[dict]:
    """Wait for the ranks of `start_ranks` and load each rank's dump."""
    try:
        for proc, _ in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
    finally:  # a failed rank leaves the others blocked in a collective: stop them
        for proc, _ in procs:
            proc.kill()
            proc.wait()
    return [torch.load(dump, weights_only=True) for _, dump in procs]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["crckd", "rkd"])  # rkd: a loss over pairs of the batch
def test_two_ranks_match_one_process_and_keep_identical_banks(method, tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=10)
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    common = [f"data.root={root}", *OVERRIDES, f"method.name={method}"]
    # The single-process reference trains here (no second Python start-up) while the ranks run.
    ranks = start_ranks(2, ddp_dir, [*common, f"output_dir={ddp_dir / 'run'}"])
    try:
        single = train_and_describe([*common, f"output_dir={single_dir / 'run'}"])
    finally:
        rank0, rank1 = collect(ranks)

    assert (single["world_size"], rank0["world_size"], rank1["world_size"]) == (1, 2, 2)
    # Each rank trains on its contiguous half of the single process's global batch.
    assert rank0["first_batch"] + rank1["first_batch"] == single["first_batch"]
    assert len(rank0["first_batch"]) == 8
    banks = [key for key in single["method"] if key.startswith("memory.")]
    assert len(banks) == (4 if method == "crckd" else 0)
    for key in banks:
        torch.testing.assert_close(rank0["method"][key], rank1["method"][key], rtol=0, atol=0)
    for key, value in single["method"].items():
        torch.testing.assert_close(rank0["method"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    losses = [c for c in pd.read_csv(single_dir / "run" / "epochs.csv") if c.startswith("train_")]
    single_log = pd.read_csv(single_dir / "run" / "epochs.csv")
    ddp_log = pd.read_csv(ddp_dir / "run" / "epochs.csv")
    for column in (c for c in losses if c != "train_seconds"):
        assert ddp_log[column].tolist() == pytest.approx(single_log[column].tolist(), rel=1e-4)
    assert rank0["metrics"]["confusion_matrix"] == single["metrics"]["confusion_matrix"]
    # Each test image keeps its own label and prediction when the ranks' shares are gathered.
    single_preds, ddp_preds = (
        pd.read_csv(d / "run" / "test_predictions.csv").sort_values("image_id", ignore_index=True)
        for d in (single_dir, ddp_dir)
    )
    assert ddp_preds["image_id"].tolist() == single_preds["image_id"].tolist()
    assert ddp_preds["label"].tolist() == single_preds["label"].tolist()
    probs = [c for c in single_preds.columns if c.startswith("prob_")]
    assert ddp_preds[probs].to_numpy() == pytest.approx(single_preds[probs].to_numpy(), abs=1e-4)
    assert not (ddp_dir / "run" / "rank1").exists()
    # Dropout masks differ between ranks, as between a process's images.
    assert not torch.equal(rank0["global_draw"], rank1["global_draw"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    # crckd: the pseudo-labels of the unlabelled bank rows are gathered over the ranks (a
    # threshold every teacher reaches, so that every unlabelled row gets one).
    [["method.name=mt"], ["method.name=crckd", "method.semi.threshold=0.01"]],
    ids=["mt", "crckd"],
)
def test_a_semi_supervised_run_on_two_ranks_matches_one_process(method, tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    for i in range(8):
        write_image(tmp_path / "unlabeled" / f"{i}.png", size=(32, 24), seed=50 + i)
    common = [
        f"data.root={root}",
        *OVERRIDES,
        *method,
        "train.epochs=1",
        "data.labeled_fraction=0.5",
        f"data.unlabeled_root={tmp_path / 'unlabeled'}",
        "data.labeled_batch_size=4",
    ]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    ranks = start_ranks(2, ddp_dir, [*common, f"output_dir={ddp_dir / 'run'}"])
    try:
        single = train_and_describe([*common, f"output_dir={single_dir / 'run'}"])
    finally:
        rank0, rank1 = collect(ranks)
    # Each rank takes its contiguous share of the one-process batch (and so of each part).
    assert rank0["first_batch"] + rank1["first_batch"] == single["first_batch"]
    for key, value in single["method"].items():
        torch.testing.assert_close(rank0["method"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert rank0["metrics"]["confusion_matrix"] == single["metrics"]["confusion_matrix"]
    if "bank_labels" in single["method"]:  # every row has a class now, the same on each rank
        unlabelled = single["method"]["train_labels"] < 0
        assert unlabelled.sum() >= 8
        assert (single["method"]["bank_labels"][unlabelled] >= 0).all()
        for dump in (rank0, rank1):
            assert torch.equal(dump["method"]["bank_labels"], single["method"]["bank_labels"])


def test_collectives_wait_as_long_as_the_environment_says(monkeypatch):
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert collective_timeout() == timedelta(seconds=DEFAULT_DIST_TIMEOUT) == timedelta(minutes=10)
    monkeypatch.setenv(DIST_TIMEOUT_ENV, "45.5")
    assert collective_timeout() == timedelta(seconds=45.5)
    for bad in ("0", "-3", "soon", "inf", "nan"):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=f"{DIST_TIMEOUT_ENV}='{bad}'"):
            collective_timeout()


TIMEOUT = 20  # seconds, CRCKD_DIST_TIMEOUT of the test's jobs
# CRCKD_DIST_TIMEOUT of the job whose rank hangs, which rank 0 then waits out: shorter, as long
# as an answering rank never takes that long (data check, startup skew) on a slow machine
HANG_TIMEOUT = 10


def train_ranks(*args: str, timeout: float = TIMEOUT) -> list[subprocess.Popen]:
    """`crckd train ARGS` as the 2 ranks of a job (as torchrun starts them) on the CPU, with
    CRCKD_DIST_TIMEOUT=`timeout`."""
    port = free_port()
    command = [sys.executable, "-m", "crckd", "train", *args]
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    return [
        subprocess.Popen(
            command, env={**rank_env(r, 2, port), DIST_TIMEOUT_ENV: str(timeout)}, **pipes
        )
        for r in range(2)
    ]


def finish(ranks: list[subprocess.Popen]) -> None:
    for rank in ranks:
        assert rank.wait(timeout=600) == 0, rank.stderr.read()[-3000:]


def stop_one_rank(ranks: list[subprocess.Popen], run: Path, epochs: int, how: signal.Signals):
    """Once the run has logged `epochs` epochs, send `how` to rank 1; return rank 0's exit
    code, stderr and the seconds it took to exit after the signal."""
    log = run / "epochs.csv"
    while not (log.exists() and len(pd.read_csv(log)) >= epochs):
        assert ranks[0].poll() is None, ranks[0].stderr.read()[-3000:]
        time.sleep(0.01)
    ranks[1].send_signal(how)
    sent = time.monotonic()
    code = ranks[0].wait(timeout=TIMEOUT + 120)
    seconds = time.monotonic() - sent
    ranks[1].kill()  # a stopped rank, or one already dead
    ranks[1].wait()
    return code, ranks[0].stderr.read(), seconds


@pytest.mark.slow
def test_a_killed_or_hung_rank_stops_the_other_in_bounded_time_and_resume_matches(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=8)
    common = [
        f"data.root={root}",
        "model.backbone=test_resnet",
        "data.image_size=32",
        "train.batch_size=8",
        "train.epochs=3",
        "train.device=cpu",
        "train.deterministic=true",
        "train.progress=false",
    ]
    reference, run = tmp_path / "reference", tmp_path / "run"
    uninterrupted = train_ranks(*common, f"output_dir={reference}")

    # SIGKILL rank 1 one epoch in: rank 0 sees its connection drop and stops, cleanly.
    code, err, seconds = stop_one_rank(
        train_ranks(*common, f"output_dir={run}"), run, 1, signal.SIGKILL
    )
    assert code == EXIT_USER_ERROR and "Traceback" not in err, err[-3000:]
    assert "another process of this job stopped or did not answer in time" in err
    assert "continue it with the same 2 processes" in err
    assert seconds < TIMEOUT
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 0  # intact

    # SIGSTOP rank 1 (a hung process): rank 0 gives up after CRCKD_DIST_TIMEOUT seconds.
    hung = train_ranks("--resume", str(run), timeout=HANG_TIMEOUT)
    code, err, seconds = stop_one_rank(hung, run, 2, signal.SIGSTOP)
    assert code == EXIT_USER_ERROR and "Traceback" not in err, err[-3000:]
    assert "another process of this job stopped" in err
    assert seconds < HANG_TIMEOUT + 60
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 1

    finish(train_ranks("--resume", str(run)))
    finish(uninterrupted)
    assert (run / "metrics.json").read_text() == (reference / "metrics.json").read_text()
    for name in ("last.pt", "best.pt"):
        expected = load_checkpoint(reference / "checkpoints" / name)["student"]
        for key, value in load_checkpoint(run / "checkpoints" / name)["student"].items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    logs = [pd.read_csv(folder / "epochs.csv") for folder in (run, reference)]
    pd.testing.assert_frame_equal(*(log.drop(columns=list(TIMING_COLUMNS)) for log in logs))


def test_a_run_folder_another_process_writes_is_refused_on_every_rank(tmp_path):
    """Only rank 0 checks the run folder, but every rank says why the job stopped (they used to
    report a lost peer)."""
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        ranks = train_ranks("data.root=/nonexistent", f"output_dir={folder}", "train.device=cpu")
        for rank in ranks:
            assert rank.wait(timeout=300) == EXIT_USER_ERROR
            err = rank.stderr.read()
            assert f"{folder} is being written by pid {holder.pid}" in err, err[-3000:]
            assert "another process of this job" not in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()


def test_sync_batchnorm_converts_the_trained_modules_only_and_keeps_their_tensors():
    config = load_config(overrides=["method.name=crckd"])
    context = MethodContext(3, [0, 1, 2] * 4, torch.ones(3), epochs=80)
    method = get_method("crckd").cls(build_model("resnet18", 3), config.method, context)
    before = method.state_dict(keep_vars=True)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)

    converted = convert_sync_batchnorm(method)

    assert "student" in converted and "teacher" not in converted
    norms = [
        m for m in method.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in method.teacher.modules())
    after = method.state_dict(keep_vars=True)
    assert list(after) == list(before)  # checkpoints and the EMA pairing see the same keys
    assert all(after[key] is before[key] for key in before)  # the very same tensors
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in method.trainable_parameters()} == trained


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group in this process, so that DDP wrappers can be built."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", [spec.name for spec in available_methods()])
def test_every_method_trains_a_step_with_its_modules_wrapped_in_ddp(name, one_rank_group):
    config = load_config(
        overrides=[
            f"method.name={name}",
            "method.ccd.num_negatives=8",
            "method.ccd.num_positives=2",
        ]
    )
    context = MethodContext(3, torch.arange(12) % 3, torch.ones(3), epochs=2, image_size=32)
    torch.manual_seed(0)
    method = get_method(name).cls(build_model("resnet18", 3), config.method, context)
    wrapped = wrap_trainable(method, torch.device("cpu"))
    assert "student" in wrapped and "teacher" not in wrapped
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "image2": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([0, 1, 2, 0]),
        "index": torch.arange(4),
    }
    weights = method.loss_weights(100)  # every term on
    terms = method.train().training_losses(batch, 100, weights)
    sum(weights[k] * v for k, v in terms.items() if weights[k]).backward()
    method.after_step(0)
    assert {k for k, w in weights.items() if w} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())


def test_a_rank_without_images_of_a_split_evaluates_to_empty_outputs():
    """A split smaller than the number of processes leaves some rank no image to evaluate;
    its empty outputs must still gather with the others'."""
    model = build_model("resnet18", 3, feat_dim=16)
    empty = torch.utils.data.DataLoader(ImageDataset([], [], eval_transform(32)), batch_size=4)
    outputs = run_model(model, empty, torch.device("cpu"), progress=False)
    assert outputs.features.shape == (0, 16)
    assert outputs.probs.shape == (0, 3)
    assert outputs.labels.shape == (0,)
