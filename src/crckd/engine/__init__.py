"""Training loop, evaluation, checkpoints and run folders."""

from crckd.engine.checkpoint import load_checkpoint, save_checkpoint
from crckd.engine.evaluate import evaluate_checkpoint, load_student, predict_paths
from crckd.engine.run_folder import RunFolder
from crckd.engine.trainer import RunResult, Trainer, default_run_dir, train

__all__ = [
    "RunFolder",
    "RunResult",
    "Trainer",
    "default_run_dir",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_student",
    "predict_paths",
    "save_checkpoint",
    "train",
]
