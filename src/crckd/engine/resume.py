"""Resume bookkeeping: what a run's training checkpoint (last.pt) holds beyond the student, how
`--resume` checks and restores it, and how it settles what a kill left in the run folder.

The run's progress is a plain dict (`new_progress`): epochs done, optimiser steps, the epoch
records (history) and the best validation score with its epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crckd.config import Config, config_to_dict, flat_settings
from crckd.engine.checkpoint import load_checkpoint
from crckd.engine.distributed import plain_state_dict
from crckd.engine.run_folder import RunFolder
from crckd.errors import CheckpointError, ConfigError
from crckd.methods import get_method
from crckd.methods.schedule import explicit_schedule

# Settings a resumed run may change: where the data and run are, and how this machine runs it.
# Any other change (epochs, learning rate, method, model...) would make the checkpoint's
# optimiser, schedule or banks wrong for the rest of the run.
RESUMABLE_SETTINGS = frozenset(
    {
        "output_dir",
        "data.root",
        "data.unlabeled_root",  # its files are checked against the run's unlabeled.csv
        "data.num_workers",
        "data.cache",
        "data.cache_dir",
        "data.check",
        "train.device",
        "train.deterministic",
        "train.amp",
        "train.channels_last",
        "train.compile",
        "train.sync_batchnorm",
        "train.progress",
        "method.teacher.checkpoint",  # a moved frozen teacher: last.pt holds its weights
    }
)
# The progress entries a checkpoint saves under "progress" (the history is saved on its own).
_PROGRESS_KEYS = ("epoch", "step", "best_score", "best_epoch")


def _explicit(config: dict[str, Any]) -> dict[str, Any]:
    name = (config.get("method") or {}).get("name", "ce")
    try:
        paper = get_method(name).cls.paper_schedule
    except ConfigError:  # an unknown method: nothing to fill in
        return config
    return explicit_schedule(config, paper)


def new_progress() -> dict[str, Any]:
    """The progress of a run that has trained no epoch yet."""
    return {"epoch": 0, "step": 0, "history": [], "best_score": -math.inf, "best_epoch": -1}


def training_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The training settings (all but RESUMABLE_SETTINGS) that differ between two configs, as
    "key: old -> new; ..." ('' when none): what a run's checkpoints do not fit. Schedule values
    left unset and the paper's values written out are the same setting."""
    before, after = (flat_settings(_explicit(config)) for config in (saved, now))
    changed = sorted(
        key
        for key in before.keys() & after.keys()  # a setting added by a newer crckd is new
        if key not in RESUMABLE_SETTINGS and before[key] != after[key]
    )
    return "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in changed)


class ResumeState:
    """What a training checkpoint saves besides the student, and `--resume` restores: the
    method (student, teacher, heads, banks), optimiser, schedule, loss scaler and progress,
    with the layout (processes, steps per epoch) the schedule was laid out for."""

    def __init__(
        self,
        path: Path,
        config: Config,
        method: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        *,
        world_size: int,
        steps_per_epoch: int,
    ) -> None:
        self.path = path
        self.config = config
        self.method = method
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.layout = {"world_size": world_size, "steps_per_epoch": steps_per_epoch}

    def entries(self, progress: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint entries of this state at `progress`."""
        return {
            "method": plain_state_dict(self.method),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {key: progress[key] for key in _PROGRESS_KEYS},
            "history": progress["history"],
            "layout": dict(self.layout),
        }

    def restore(self) -> dict[str, Any] | None:
        """Restore the state saved at `path` and return its progress; None when the run never
        saved a checkpoint (it starts afresh). Refuses a checkpoint the run no longer fits."""
        if not self.path.exists():
            return None
        checkpoint = load_checkpoint(self.path)
        self._check_resumable(checkpoint["config"])
        self._check_layout(checkpoint.get("layout"))
        try:
            self.method.load_state_dict(checkpoint["method"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path} does not fit the configured method and model; was the config "
                f"changed since the run started? ({str(exc).splitlines()[0]})"
            ) from None
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # empty when saved without fp16: then the fresh scaler starts
            self.scaler.load_state_dict(checkpoint["scaler"])
        progress = dict(checkpoint["progress"])
        progress["history"] = list(checkpoint["history"])
        return progress

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        """Refuse to resume with settings other than RESUMABLE_SETTINGS changed."""
        details = training_changes(saved, config_to_dict(self.config))
        if details:
            raise ConfigError(
                f"--resume continues a run with its own settings, but these differ from "
                f"{self.path}: {details}. Start a new run to change them; only "
                f"{', '.join(sorted(RESUMABLE_SETTINGS))} may change on resume"
            )

    def _check_layout(self, saved: dict[str, int] | None) -> None:
        """Refuse to resume where an epoch has a different number of steps: the learning-rate
        schedule was laid out for the saved count. The number of processes can change it
        (a short last batch is kept only if every rank gets 2 or more of its images)."""
        steps = self.layout["steps_per_epoch"]
        if saved is None or saved["steps_per_epoch"] == steps:
            return
        raise ConfigError(
            f"{self.path} was trained with {saved['world_size']} process(es), "
            f"{saved['steps_per_epoch']} steps per epoch; with {self.layout['world_size']} an "
            f"epoch has {steps}, which its learning-rate schedule does not fit. Resume it with "
            f"{saved['world_size']} process(es)"
        )


def settle_run(run: RunFolder, progress: dict[str, Any]) -> None:
    """Tidy what a kill may have left in a resumed run's folder: an epochs.csv cut mid-row is
    written again from the checkpoint's history, and a pending best checkpoint (written before
    a kill between it and last.pt) is kept if last.pt names its epoch (the kill came after
    last.pt), else dropped (that epoch runs again, and best.pt still holds the best of the
    epochs last.pt knows)."""
    run.write_epochs(progress["history"])
    pending = run.pending_best
    if not pending.exists():
        return
    if load_checkpoint(pending)["epoch"] == progress["best_epoch"]:
        run.commit_best()
    else:
        pending.unlink()
