"""The training runtime: training loop, inference, checkpoints and run folders."""

from crckd.engine.checkpoint import load_checkpoint, save_checkpoint
from crckd.engine.inference import load_student
from crckd.engine.lock import RunLock
from crckd.engine.run_folder import RunFolder
from crckd.engine.trainer import RunResult, Trainer, default_run_dir, train

__all__ = [
    "RunFolder",
    "RunLock",
    "RunResult",
    "Trainer",
    "default_run_dir",
    "load_checkpoint",
    "load_student",
    "save_checkpoint",
    "train",
]
