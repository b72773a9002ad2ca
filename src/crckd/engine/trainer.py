"""The training loop: one loop for every method, which only sees named loss terms."""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from crckd.config import Config, TeacherConfig, TrainConfig, config_to_dict
from crckd.data import (
    eval_transform,
    normalize_images,
    train_transform,
)
from crckd.data.cache import DecodedImages, JoinedImages
from crckd.data.samplers import GlobalBatchSampler, SemiBatchSampler
from crckd.dist import all_gather_uneven, all_reduce_mean, unwrap, world_size
from crckd.engine.checkpoint import load_checkpoint, save_checkpoint
from crckd.engine.data import (
    class_weights,
    epoch_seed,
    labeled_batch_size,
    make_loader,
    prepare_data,
    resolve_workers,
    seed_everything,
)
from crckd.engine.distributed import (
    average_batchnorm_buffers,
    convert_sync_batchnorm,
    init_distributed,
    peer_failure,
    shutdown_distributed,
    wrap_trainable,
)
from crckd.engine.finite import LossWatch
from crckd.engine.inference import load_student, predict_probs
from crckd.engine.lock import RunLock
from crckd.engine.metrics import (
    SCALAR_METRICS,
    classification_metrics,
    per_class_table,
    predictions_table,
    resolve_kappa_weights,
)
from crckd.engine.precision import resolve_precision
from crckd.engine.resume import ResumeState, new_progress, settle_run
from crckd.engine.run_folder import RunFolder
from crckd.errors import ConfigError, DataError, DistributedError, NumericalError
from crckd.methods import Method, MethodContext, get_method
from crckd.methods.frozen_teacher import FrozenTeacher, frozen_checkpoint
from crckd.models import build_model, input_normalization

# Without a progress bar (output not a terminal), the least time between two progress lines.
LOG_SECONDS = 60.0
# Columns of epochs.csv that measure time: the only ones that differ between identical runs.
TIMING_COLUMNS = ("train_seconds", "data_wait_seconds")


# Called after each epoch's files are written, with the epoch (0-based) and its epochs.csv row
# (a resumed run first calls it for each epoch its checkpoint holds, so that the callback sees
# the whole run); whatever it raises ends the run there (`crckd tune` prunes trials this way).
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced: its folder and the test metrics of the selected model
    (without a test evaluation: the validation metrics, `val_*`, of its selected epoch)."""

    run_dir: Path
    metrics: dict[str, Any]


def default_run_dir(config: Config) -> Path:
    """runs/<dataset>-<method>-<backbone>-s<seed>[-fold<k>] when output_dir is not set."""
    if config.output_dir is not None:
        return Path(config.output_dir)
    name = (
        f"{config.data.dataset}-{config.method.name}-{config.model.backbone}-s{config.train.seed}"
    )
    if config.data.dataset == "aptos" and config.data.split in ("auto", "kfold"):
        name += f"-fold{config.data.fold}"
    return Path("runs") / name


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    evaluate_test: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> RunResult:
    """Train and evaluate one run as the config says; see `Trainer`."""
    try:
        return Trainer(
            config,
            resume=resume,
            overwrite=overwrite,
            evaluate_test=evaluate_test,
            on_epoch_end=on_epoch_end,
        ).fit()
    except Exception as exc:
        if not peer_failure(exc):
            raise
        run = default_run_dir(config)
        raise DistributedError(
            f"another process of this job stopped or did not answer in time "
            f"({str(exc).strip().splitlines()[0]}); {run / 'checkpoints' / 'last.pt'} holds the "
            f"finished epochs, if any: continue it with the same {world_size()} processes "
            f"(`torchrun ... -m crckd train --resume {run}`)"
        ) from None
    finally:
        shutdown_distributed()


class Trainer:
    """Builds data, model and method from a config, then trains, selects and tests.

    Everything that can be checked (config, data, split, model name, weights) is checked in the
    constructor, before the run folder is touched. The main process holds the run folder's
    lock (`RunLock`: one writer per folder) from the end of the constructor until `fit` ends.
    With `evaluate_test=False` (hyper-parameter search) the test split is never loaded nor
    evaluated: no test metric is computed or written, and the result holds the validation
    metrics of the selected epoch. `on_epoch_end` is called after each epoch (see
    `EpochCallback`).
    """

    def __init__(
        self,
        config: Config,
        *,
        resume: bool = False,
        overwrite: bool = False,
        evaluate_test: bool = True,
        on_epoch_end: EpochCallback | None = None,
    ) -> None:
        self.config = config
        self.resume = resume
        self.evaluate_test, self.on_epoch_end = evaluate_test, on_epoch_end
        self.run = RunFolder(default_run_dir(config))
        train_cfg = config.train
        if train_cfg.select_metric not in SCALAR_METRICS:
            raise ConfigError(
                f"train.select_metric {train_cfg.select_metric!r} is not one of {SCALAR_METRICS}"
            )
        self.epochs, self.select_metric = train_cfg.epochs, train_cfg.select_metric
        self.dist, self.device = init_distributed(train_cfg.device)
        self.lock = RunLock(self.run.root)
        # Every process refuses what its settings cannot train with, the same way...
        _check_processes(train_cfg, self.dist.world_size, self.device)
        # ...and a second writer, or a folder that holds a run, which the main process checks.
        self.dist.on_main(lambda: self._check_run_folder(resume, overwrite))
        # Progress bars and lines of work that only the main process does (cache, evaluation).
        self.show_progress = train_cfg.progress and self.dist.is_main
        seed_everything(train_cfg.seed)
        if train_cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":  # fixed image sizes: let cuDNN pick the fastest kernels
            torch.backends.cudnn.benchmark = True
        # Labelled images per global batch; None: no unlabelled images, plain global batches.
        self.labeled_batch_size = labeled_batch_size(config, self.dist.world_size)
        resumed_split, resumed_unlabeled = (
            (path if resume and path.is_file() else None)
            for path in (self.run.split, self.run.unlabeled)
        )
        self.data = prepare_data(config, split_file=resumed_split, unlabeled_file=resumed_unlabeled)
        if self.labeled_batch_size is not None and self.data.n_unlabeled == 0:
            raise DataError(
                "no training image is unlabelled (the split file's labeled column keeps every "
                "label): unset data.labeled_fraction for a supervised run"
            )
        spec = get_method(config.method.name)
        # A method that cannot learn from unlabelled images trains on the labelled part of the
        # same batches (the supervised baseline of the same labels).
        self.labeled_only = (
            self.labeled_batch_size is not None and not spec.cls.learns_from_unlabeled
        )
        train_labels = self.data.train_labels()
        weights = (
            class_weights(train_labels, self.data.classes) if train_cfg.class_weights else None
        )
        self.normalization = input_normalization(config.model.backbone, config.model.pretrained)
        self.frozen_teacher = _frozen_teacher(config.method.teacher, self.data.classes)
        # Optimiser steps per epoch: the global batches of an epoch (the same in every epoch).
        self.steps_per_epoch = len(self._sampler(train_cfg.seed))
        if self.steps_per_epoch == 0:
            labeled = "" if self.labeled_batch_size is None else "labelled "
            raise DataError(
                f"the training split has {self.data.n_labeled} {labeled}images: too few for one "
                f"batch that gives each of the {self.dist.world_size} processes at least 2"
            )
        context = MethodContext(
            num_classes=len(self.data.classes),
            train_labels=train_labels,
            class_weights=weights,
            epochs=train_cfg.epochs,
            image_size=config.data.image_size,
            normalization=self.normalization,
            frozen_teacher=self.frozen_teacher,
            steps_per_epoch=self.steps_per_epoch,
        )
        student = build_model(
            config.model.backbone,
            len(self.data.classes),
            pretrained=config.model.pretrained,
            feat_dim=config.model.feat_dim,
            drop_rate=config.model.drop_rate,
        )
        self.precision = resolve_precision(train_cfg, self.device)
        self.method: Method = spec.cls(student, config.method, context).to(self.device)
        if self.precision.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if train_cfg.compile:  # in place: parameters and state-dict keys stay as they are
            self.method.student.compile()
            teacher = getattr(self.method, "teacher", None)
            if teacher is not None:
                teacher.compile()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.kappa = resolve_kappa_weights(train_cfg.kappa_weights, self.data.table.ordinal)
        self.workers = resolve_workers(config.data.num_workers, self.device)
        self.decoded = self.decoded_unlabeled = None
        if config.data.cache:
            self.decoded = self._open_cache(self.data.table.frame["path"].tolist())
            if self.data.unlabeled is not None and not self.labeled_only:
                self.decoded_unlabeled = self._open_cache(self.data.unlabeled.paths)
        self.loaders = self._make_eval_loaders()
        self._train: torch.utils.data.DataLoader | None = None
        self.optimizer = torch.optim.Adam(
            self.method.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
        )
        self.scheduler = self._make_scheduler()
        self.resume_state = ResumeState(
            self.run.last_checkpoint,
            config,
            self.method,
            self.optimizer,
            self.scheduler,
            self.scaler,
            world_size=self.dist.world_size,
            steps_per_epoch=self.steps_per_epoch,
        )
        try:
            self.dist.on_main(lambda: self._claim_run_folder(resume, overwrite))
        except BaseException:
            self.lock.release()  # a no-op unless this (main) process took it
            raise

    def _check_run_folder(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder another process writes, or one whose run this call must not touch."""
        self.lock.check()
        self.run.check_use(resume=resume, overwrite=overwrite)

    def _claim_run_folder(self, resume: bool, overwrite: bool) -> None:
        """Take the run folder's lock and make it ready (files of an overwritten run removed)."""
        self.lock.acquire()
        self.run.prepare(resume=resume, overwrite=overwrite)

    def _open_cache(self, paths: list[str]) -> DecodedImages:
        """The decoded cache of `paths`, built by the main process while the others wait."""
        data = self.config.data

        def open_cache() -> DecodedImages:
            return DecodedImages.open(
                paths, data.image_size, data.cache_dir, progress=self.show_progress
            )

        decoded = open_cache() if self.dist.is_main else None
        self.dist.barrier()
        return decoded or open_cache()

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.config.train
        if cfg.scheduler == "constant":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=cfg.lr,
            total_steps=cfg.epochs * self.steps_per_epoch,
            pct_start=cfg.pct_start,
        )

    def _make_eval_loaders(self) -> dict[str, torch.utils.data.DataLoader]:
        transform = eval_transform(self.config.data.image_size, self.normalization)
        splits = {"val": self.data.val}
        if self.evaluate_test:
            splits["test"] = self.data.test
        return {
            name: make_loader(
                self.data.paths(positions),
                self.data.labels(positions),
                transform,
                batch_size=self.config.train.batch_size,
                shuffle=False,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                images=self._decoded(positions),
            )
            for name, all_positions in splits.items()
            for positions in [all_positions[self.dist.rank :: self.dist.world_size]]
        }

    def train_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """This rank's training batches of `epoch` (their order and augmentations follow the
        run seed and the epoch only); one loader, whose workers persist across epochs."""
        if self._train is None:
            self._train = make_loader(
                self.data.train_paths(),
                self.data.train_labels(),
                train_transform(self.config.data.image_size, to_float=False),
                batch_size=self.config.train.batch_size,
                shuffle=True,
                num_workers=self.workers,
                views=self.method.views,
                pin_memory=self.device.type == "cuda",
                images=self._train_images(),
                batch_sampler=self._sampler(self.config.train.seed),
            )
        self._train.batch_sampler.set_seed(epoch_seed(self.config.train.seed, epoch))
        return self._train

    def _sampler(self, seed: int) -> GlobalBatchSampler | SemiBatchSampler:
        """This rank's sampler of the training list's batches: global batches of the training
        images, or, with unlabelled images, `labeled_batch_size` labelled ones completed with
        unlabelled ones (only the labelled part for a method that cannot use the rest)."""
        common = {"seed": seed, "rank": self.dist.rank, "world_size": self.dist.world_size}
        if self.labeled_batch_size is None:
            return GlobalBatchSampler(len(self.data.train), self.config.train.batch_size, **common)
        return SemiBatchSampler(
            self.data.n_labeled,
            self.data.n_unlabeled,
            self.config.train.batch_size,
            self.labeled_batch_size,
            labeled_only=self.labeled_only,
            **common,
        )

    def _decoded(self, positions: np.ndarray) -> DecodedImages | None:
        return None if self.decoded is None else self.decoded.subset(positions)

    def _train_images(self) -> DecodedImages | JoinedImages | None:
        """The decoded images of the training list (None without the cache)."""
        table_images = self._decoded(self.data.train)
        if self.decoded_unlabeled is None:
            return table_images
        return JoinedImages([table_images, self.decoded_unlabeled])

    def fit(self) -> RunResult:
        """Train all remaining epochs, then test the model selected on the validation split;
        the run folder's lock is released when it ends."""
        try:
            return self._fit()
        finally:
            self.lock.release()

    def _fit(self) -> RunResult:
        state = self._start_state()
        if self.dist.is_main:
            for note in self._notes(state):
                print(f"crckd: {note}", file=sys.stderr)
        if self.dist.enabled:
            if self.config.train.sync_batchnorm:
                convert_sync_batchnorm(self.method)
            wrap_trainable(self.method, self.device)
        # Resumed: drop TensorBoard points of epochs that are about to run again.
        writer = (
            SummaryWriter(self.run.tensorboard, purge_step=state["epoch"] or None)
            if self.dist.is_main
            else None
        )
        try:
            if self.on_epoch_end is not None:  # resumed: first the epochs the checkpoint holds
                for epoch, record in enumerate(state["history"]):
                    self.on_epoch_end(epoch, record)
            for epoch in range(state["epoch"], self.epochs):
                try:
                    record = self._run_epoch(epoch, state)
                except DataError as err:
                    raise DataError(
                        f"epoch {epoch + 1}, {err}; the last checkpoint "
                        f"{self.run.last_checkpoint} is kept: fix the file and resume"
                    ) from None
                state["history"].append(record)
                state["epoch"] = epoch + 1
                score = selection_score(record[f"val_{self.select_metric}"])
                # The first epoch is kept even when its score is undefined, so best.pt exists.
                improved = score > state["best_score"] or state["best_epoch"] < 0
                if improved:
                    state["best_score"], state["best_epoch"] = score, epoch
                if self.dist.is_main:  # only rank 0 writes files
                    self._log_epoch(writer, record)
                    # best.pt changes only together with last.pt, whose progress names it: a
                    # kill between the two writes leaves a pending best that resume settles.
                    if improved:
                        save_checkpoint(
                            self._student_state("student", epoch), self.run.pending_best
                        )
                    save_checkpoint(self._full_state(state), self.run.last_checkpoint)
                    if improved:
                        self.run.commit_best()
                    self.run.write_epochs(state["history"])
                self.dist.barrier()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, record)
        except KeyboardInterrupt:
            if self.dist.is_main and self.run.last_checkpoint.exists():
                print(
                    f"crckd: {self.run.last_checkpoint} holds the finished epochs: continue with "
                    f"crckd train --resume {self.run.root}",
                    file=sys.stderr,
                )
            raise
        finally:
            if writer is not None:
                writer.close()
        return self._finish(state)

    def _start_state(self) -> dict[str, Any]:
        """The progress to start from; a resumed run that never saved a checkpoint restarts."""
        state = self.resume_state.restore() if self.resume else None
        if self.dist.is_main:
            if self.data.check is not None:
                self.run.write_data_check(self.data.check.to_dict())
            self.run.write_config(config_to_dict(self.config))  # with any resumable change
            if state is not None:
                settle_run(self.run, state)
            else:
                self.run.write_split(self.data.split, self.data.labeled)
                if self.data.unlabeled is not None:
                    self.run.write_unlabeled(self.data.unlabeled.to_frame())
        return new_progress() if state is None else state

    def _run_epoch(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config.train
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        if self.dist.enabled:  # other dropout masks on each rank's images, as in one process
            torch.manual_seed(seed + self.dist.rank)
        self.method.seed(seed)  # the same on every rank: contrast sets, teacher rotations
        if cfg.epoch_start_lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.epoch_start_lr
        weights = self.method.loss_weights(epoch)  # the weights of every step of this epoch
        sums: dict[str, torch.Tensor | float] = defaultdict(float)
        started = time.perf_counter()
        self.method.train()
        loader = self.train_loader(epoch)
        bar = tqdm(
            loader,
            desc=f"{self.config.method.name} epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=None if cfg.progress else True,  # None: off when not a terminal
        )
        watch = LossWatch(every=10)
        data_seconds, waiting_since = 0.0, time.perf_counter()
        logged, first_step = started, state["step"]
        for batch in _batches(bar):
            data_seconds += time.perf_counter() - waiting_since
            batch = self._to_device(batch)
            with self.precision.autocast():
                terms = self.method.training_losses(batch, epoch, weights)
                total = sum(weights[name] * value for name, value in terms.items() if weights[name])
            watch.add(state["step"], terms)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.method.after_step(state["step"])
            state["step"] += 1
            sums["loss"] += total.detach()
            for name, value in terms.items():
                sums[name] += value.detach()
            if watch.due:  # the one host read of these steps
                watch.check(epoch, str(self.run.last_checkpoint))
                loss = total.item()
                bar.set_postfix(loss=f"{loss:.3f}")
                now = time.perf_counter()
                if bar.disable and cfg.progress and now - logged >= LOG_SECONDS:
                    # No bar (output is not a terminal): a line now and then for the log.
                    tqdm.write(
                        f"{self.config.method.name} epoch {epoch + 1}/{cfg.epochs}: "
                        f"step {state['step'] - first_step}/{len(loader)}, loss {loss:.4f}, "
                        f"{now - started:.0f}s"
                    )
                    logged = now
            waiting_since = time.perf_counter()
        watch.check(epoch, str(self.run.last_checkpoint))
        batches = max(len(loader), 1)
        record: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(
            {f"train_{name}": float(all_reduce_mean(torch.as_tensor(value))) / batches
             for name, value in sums.items()}
        )  # fmt: skip
        if self.dist.enabled:  # student and teacher BatchNorm statistics, before evaluation
            average_batchnorm_buffers(self.method)
        record.update({f"weight_{name}": value for name, value in weights.items()})
        if self.method.ema_decay is not None:
            record["ema_decay"] = self.method.ema_decay
        record["train_seconds"] = time.perf_counter() - started
        record["data_wait_seconds"] = data_seconds
        record.update(self._evaluate_split("val", prefix="val_"))
        if self.evaluate_test and epoch >= cfg.epochs - cfg.report_last_k:
            record.update(self._evaluate_split("test", prefix="test_"))
        return record

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images (uint8 from the loader, normalised on the device) and labels to the device.
        "index" stays on the host: it is bookkeeping that memory-bank methods read there
        (drawing contrast sets) without a device sync."""
        moved = {}
        for key, value in batch.items():
            if key == "index":
                moved[key] = value
                continue
            value = value.to(self.device, non_blocking=True)
            if key.startswith("image"):
                value = self.precision.images(normalize_images(value, self.normalization))
            moved[key] = value
        return moved

    def _evaluate_split(self, name: str, prefix: str) -> dict[str, float]:
        metrics = self._metrics(name)
        return {f"{prefix}{key}": metrics[key] for key in SCALAR_METRICS}

    def _metrics(self, name: str) -> dict[str, Any]:
        probs, labels = self._predict(name)
        return classification_metrics(labels, probs, self.data.classes, self.kappa)

    def _predict(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels of the whole split (every rank's share, in rank order)."""
        try:
            probs, labels = predict_probs(
                self.student,
                self.loaders[name],
                self.device,
                desc=f"eval {name}",
                progress=self.show_progress,
                # float32, as `crckd eval` of the checkpoint, so that the two agree
                precision=replace(self.precision, dtype=None),
            )
        except DataError as err:
            raise DataError(f"evaluating the {name} split: {_image_error(err)}") from None
        if self.dist.enabled:  # metrics of the whole split, from every rank's share
            probs = all_gather_uneven(torch.as_tensor(probs, device=self.device)).cpu().numpy()
            labels = all_gather_uneven(torch.as_tensor(labels, device=self.device)).cpu().numpy()
        if not np.isfinite(probs).all():
            raise NumericalError(
                f"the model's predictions on the {name} split hold NaN or Inf (the weights or "
                f"BatchNorm statistics overflowed); the last checkpoint {self.run.last_checkpoint} "
                "is kept: resume from it with a lower train.lr or train.amp=bf16/off"
            )
        return probs, labels

    def _test_ids(self) -> np.ndarray:
        """Image ids of the test split in the order `_predict("test")` returns them (each
        rank's share in turn)."""
        test, world = self.data.test, self.dist.world_size
        positions = np.concatenate([test[rank::world] for rank in range(world)])
        return self.data.table.frame["image_id"].to_numpy()[positions]

    @property
    def student(self) -> torch.nn.Module:
        """The student without its DDP wrapper."""
        return unwrap(self.method.student)

    def _log_epoch(self, writer: SummaryWriter, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                group, _, name = key.partition("_")
                writer.add_scalar(f"{group}/{name}", value, epoch)
        if self.show_progress:  # rank 0 only logs epochs
            value = record[f"val_{self.select_metric}"]
            shown = "n/a" if value is None else f"{value:.4f}"
            tqdm.write(
                f"epoch {epoch + 1}/{self.epochs}  loss {record['train_loss']:.4f}  "
                f"val {self.select_metric} {shown}  ({record['train_seconds']:.1f}s)"
            )

    def _notes(self, state: dict[str, Any]) -> list[str]:
        """What to say before training: where a resumed run stands, and settings that may
        surprise (terms that never switch on, a teacher trained at another image size)."""
        notes = list(self.data.notes)
        if self.labeled_batch_size is not None:
            notes.append(self._batches_note())
        done = state["epoch"]
        if self.resume and done > 0:
            notes.append(
                f"{self.run.root} has run all {self.epochs} epochs"
                + (": testing its best.pt again" if self.evaluate_test else "")
                if done >= self.epochs
                else f"resuming {self.run.root} at epoch {done + 1}/{self.epochs}"
            )
        schedule = self.method.schedule_summary()
        if schedule:
            mode = self.config.method.schedule
            notes.append(
                f"schedule ({mode}, {self.epochs} epochs of {self.steps_per_epoch} steps): "
                f"{schedule}"
            )
        notes += _terms_never_on(self.method.loss_weights, self.epochs)
        if self.frozen_teacher is not None:
            notes += self.frozen_teacher.notes(self.config.data.image_size)
        return notes

    def _batches_note(self) -> str:
        """What a batch and an epoch of a run with unlabelled images hold."""
        labeled, batch = self.labeled_batch_size, self.config.train.batch_size
        epoch = (
            f"an epoch is one pass over the {self.data.n_labeled} labelled images "
            f"({self.steps_per_epoch} steps)"
        )
        if self.labeled_only:
            return (
                f"{self.config.method.name} does not learn from unlabelled images: it trains on "
                f"the labelled images only, {labeled} per batch (the labelled part of the "
                f"batches of {batch}); {epoch}"
            )
        return (
            f"each batch holds {labeled} labelled and {batch - labeled} unlabelled images (of "
            f"{self.data.n_unlabeled}); {epoch}"
        )

    def _student_state(self, kind: str, epoch: int) -> dict[str, Any]:
        """What every checkpoint holds: enough to rebuild and run the student."""
        return {
            "kind": kind,
            "config": config_to_dict(self.config),
            "classes": list(self.data.classes),
            "epoch": epoch,
            "student": self.student.state_dict(),
        }

    def _full_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """What last.pt holds: the student and everything `--resume` restores."""
        return {
            **self._student_state("training", state["epoch"] - 1),
            **self.resume_state.entries(state),
        }

    def _finish(self, state: dict[str, Any]) -> RunResult:
        if not self.evaluate_test:
            selected = state["history"][state["best_epoch"]]
            metrics = {key: value for key, value in selected.items() if key.startswith("val_")}
            return RunResult(self.run.root, {"selected_epoch": state["best_epoch"], **metrics})
        best = load_checkpoint(self.run.best_checkpoint)
        self.student.load_state_dict(best["student"])
        probs, labels = self._predict("test")
        metrics = classification_metrics(labels, probs, self.data.classes, self.kappa)
        report_last_k = self.config.train.report_last_k
        last = [r for r in state["history"] if f"test_{self.select_metric}" in r][-report_last_k:]
        metrics.update(
            {
                "method": self.config.method.name,
                "selected_epoch": state["best_epoch"],
                "select_metric": self.select_metric,
                "last_epochs_mean": {key: _mean_of(last, f"test_{key}") for key in SCALAR_METRICS},
                "last_epochs": len(last),
            }
        )
        if self.dist.is_main:
            # The predictions first: a run with metrics.json (finished) has them too.
            table = predictions_table(self._test_ids(), labels, probs, self.data.classes)
            self.run.write_test_predictions(table)
            self.run.write_metrics(metrics)
            self.run.write_per_class(per_class_table(metrics))
        return RunResult(self.run.root, metrics)


def _check_processes(train: TrainConfig, world_size: int, device: torch.device) -> None:
    """Refuse settings this number of processes or this device cannot train with."""
    if train.batch_size % world_size or train.batch_size < 2 * world_size:
        raise ConfigError(
            f"train.batch_size {train.batch_size} (the global batch) must be a multiple "
            f"of the {world_size} process(es) that gives each at least 2 images (BatchNorm "
            "cannot train on one)"
        )
    if train.sync_batchnorm and device.type != "cuda":
        raise ConfigError(
            "train.sync_batchnorm needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU"
        )


def _frozen_teacher(teacher: TeacherConfig, classes: tuple[str, ...]) -> FrozenTeacher | None:
    """The trained teacher of `method.teacher.mode=frozen`, read from its checkpoint and checked
    against the data's classes."""
    checkpoint = frozen_checkpoint(teacher)
    if checkpoint is None:
        return None
    loaded = load_student(checkpoint)
    frozen = FrozenTeacher(
        loaded.model, loaded.classes, loaded.image_size, loaded.normalization, checkpoint
    )
    frozen.check_classes(classes)
    return frozen


def _terms_never_on(loss_weights: Callable[[int], dict[str, float]], epochs: int) -> list[str]:
    """Notes on loss terms that a method's schedule would switch on, but only after the last
    epoch (a short run of `mt` or `crckd` with the paper's begin epochs is plain CE)."""
    schedule = [loss_weights(epoch) for epoch in range(epochs)]
    later = range(epochs, 100 * epochs + 1000)
    notes = []
    for name in schedule[0]:
        if any(weights[name] for weights in schedule):
            continue
        first = next((epoch for epoch in later if loss_weights(epoch)[name]), None)
        if first is not None:
            notes.append(
                f"note: the {name} term starts at epoch {first + 1}, after this run's {epochs} "
                "epochs, so it never trains: lower its begin_epoch (or begin_fraction), train "
                "longer, or scale the schedule to the run with method.schedule=relative"
            )
    return notes


def selection_score(value: float | None) -> float:
    """A validation metric as a selection score: undefined (None, NaN) ranks lowest."""
    return -math.inf if value is None or math.isnan(value) else float(value)


def _batches(loader: Iterable[dict]) -> Iterator[dict]:
    """The batches of `loader`; an unreadable image raises DataError naming the batch."""
    batches = iter(loader)
    for number in itertools.count(1):
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DataError as err:
            raise DataError(f"training batch {number}: {_image_error(err)}") from None
        yield batch


def _image_error(err: DataError) -> str:
    """The message of a DataError, without the traceback a DataLoader worker wraps around it."""
    return str(err).rsplit("DataError: ", 1)[-1].strip()


def _mean_of(records: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a metric over epochs, leaving out epochs where it was undefined (None)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None
