"""`crckd tune`: hyper-parameter search on the validation split, with Optuna.

A search space maps dotted config keys to distributions (docs/tune.md):

    train.lr: {float: [1.0e-4, 3.0e-3], log: true}
    method.ccd.num_positives: {int: [2, 20]}
    method.name: {choice: [mt, crckd]}

Each trial trains one run from the base config with the trial's values, in
`OUT/trials/trial-NNNN`, without ever loading the test split; its objective is the validation
metric of its selected (best validation) epoch. The study lives in `OUT/study.db` (Optuna's
SQLite storage), so the same command continues an interrupted study: a trial that a killed
process left running (or Ctrl-C interrupted) is run again with its values, from its run's last
checkpoint. After each trial
`OUT` gets best.yaml (the base config with the best values, for `crckd train -c`), trials.csv,
trials.md and trials.png.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from matplotlib.ticker import MaxNLocator
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, Trial, TrialState

from crckd.config import config_to_dict, deep_merge, nested_setting
from crckd.engine.lock import RunLock
from crckd.engine.metrics import SCALAR_METRICS
from crckd.engine.resume import training_changes
from crckd.engine.run_folder import RunFolder, atomic_file, atomic_write_text
from crckd.engine.trainer import train
from crckd.errors import ConfigError, NumericalError
from crckd.methods import build_config
from crckd.tools.plots import new_figure

SAMPLERS = ("tpe", "random")
SPACE_KINDS = ("float", "int", "choice")
# Settings tune sets itself in every trial.
NOT_TUNABLE = {"output_dir": "tune sets it", "train.select_metric": "set it with --metric"}
_SCHEMA = "{float: [low, high]} or {int: [low, high]} (either with log: true) or {choice: [...]}"
# Trial states a study counts towards the trials wanted (a failed trial counts when it failed
# by itself, e.g. a diverged loss; not when its process was killed: it is run again).
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class TuneResult:
    """A study's outcome: its best trial (None before any trial completed) and its table."""

    out: Path
    metric: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    table: pd.DataFrame


def parse_space(
    space: Mapping[str, Any], base: dict[str, Any], source: str = "search space"
) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each dotted config key of `space`. Every key and bound is
    checked against the config (`base` with that value must be valid): a ConfigError names
    the key."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{source}: a search space maps config keys to {_SCHEMA}")
    return {str(key): _distribution(str(key), spec, base, source) for key, spec in space.items()}


def _distribution(key: str, spec: Any, base: dict[str, Any], source: str) -> BaseDistribution:
    where = f"{source}: {key}"
    if key in NOT_TUNABLE:
        raise ConfigError(f"{where} cannot be searched: {NOT_TUNABLE[key]}")
    kinds = [kind for kind in SPACE_KINDS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give one of {_SCHEMA}, got {spec!r}")
    kind = kinds[0]
    allowed = {kind} if kind == "choice" else {kind, "log"}
    if set(spec) - allowed:
        raise ConfigError(f"{where}: unknown {sorted(set(spec) - allowed)}; {kind} takes {allowed}")
    values, log = spec[kind], spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if kind == "choice":
        if not isinstance(values, list) or not values or not all(map(_plain, values)):
            raise ConfigError(
                f"{where}: choice takes a non-empty list of numbers, strings, true/false or "
                f"null, got {values!r}"
            )
        distribution: BaseDistribution = CategoricalDistribution(values)
        examples = values
    else:
        number = int if kind == "int" else (int, float)
        if not (isinstance(values, list) and len(values) == 2) or not all(
            isinstance(v, number) and not isinstance(v, bool) for v in values
        ):
            raise ConfigError(f"{where}: {kind} takes [low, high], two {kind}s; got {values!r}")
        low, high = values
        try:
            distribution = (IntDistribution if kind == "int" else FloatDistribution)(
                low, high, log=log
            )
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        examples = [low, high]
        if kind == "float":  # a value strictly inside, which an integer setting refuses
            examples = [float(low), float(high), math.nextafter(float(low), float(high))]
    for value in examples:
        setting = f"{where}={value!r}"
        try:
            build_config(deep_merge(base, nested_setting(key, value)), source=setting)
        except ConfigError as exc:  # an unknown method.name names no source
            message = str(exc)
            raise ConfigError(
                message if message.startswith(setting) else f"{setting}: {message}"
            ) from None
    return distribution


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _with_params(raw: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        raw = deep_merge(raw, nested_setting(key, value))
    return raw


def tune(
    base: dict[str, Any],
    space: Mapping[str, Any],
    out: Path,
    *,
    trials: int,
    metric: str | None = None,
    sampler: str = "tpe",
    seed: int | None = None,
    prune: bool = True,
    pruner: optuna.pruners.BasePruner | None = None,
    source: str = "config",
    space_source: str = "search space",
) -> TuneResult:
    """Run (or continue) the study in `out` until `trials` trials have finished.

    `base` is the raw config (YAML and overrides), `metric` the validation metric maximised
    (default: the config's train.select_metric, which every trial then selects its epoch by).
    `sampler` is "tpe" or "random"; with a `seed`, the study is reproducible, also across a
    kill and a restart. `pruner` (default: `default_pruner`) stops poor trials by their
    per-epoch validation metric.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be 1 or more, got {trials}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; one of {SAMPLERS}")
    metric = metric or build_config(base, source=source).train.select_metric
    if metric not in SCALAR_METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {SCALAR_METRICS}")
    base = deep_merge(base, {"train": {"select_metric": metric}})
    config = build_config(base, source=source)
    distributions = parse_space(space, base, space_source)
    settings = {
        "config": config_to_dict(config),
        "space": json.loads(json.dumps(dict(space))),
        "metric": metric,
    }
    # One process per study (the lock of `out`), so trials found RUNNING were left by a killed
    # process; each trial's run also takes the lock of its own folder.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with RunLock(out):
            return _optimize(
                out,
                settings,
                base,
                distributions,
                metric,
                trials,
                sampler,
                seed,
                pruner if pruner is not None else default_pruner(prune, config.train.epochs),
            )
    finally:
        optuna.logging.set_verbosity(verbosity)


def _optimize(
    out: Path,
    settings: dict[str, Any],
    base: dict[str, Any],
    distributions: dict[str, Any],
    metric: str,
    trials: int,
    sampler: str,
    seed: int | None,
    pruner: optuna.pruners.BasePruner,
) -> TuneResult:
    study = _open_study(out, settings, sampler, seed, pruner)
    _requeue_stopped(study)
    run = _Study(study, out, base, distributions, metric, trials, sampler, seed)
    remaining = trials - run.finished()
    if remaining > 0:
        try:
            study.optimize(
                run.objective,
                n_trials=remaining,
                catch=(NumericalError,),
                callbacks=[run.after_trial],
            )
        except KeyboardInterrupt:
            print("crckd: the same crckd tune command continues the study", file=sys.stderr)
            raise
    return run.write_reports()


def default_pruner(prune: bool, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's MedianPruner, judging no trial in the first third of its epochs: there the
    validation metric does not yet rank runs by their final value (docs/tune.md, measured with
    bench/early_validation.py); without `prune`, none."""
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_warmup_steps=epochs // 3)


def _sampler(kind: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _open_study(
    out: Path,
    settings: dict[str, Any],
    sampler: str,
    seed: int | None,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study stored in `out/study.db`, created on the first call; refused when made with
    another config, space or metric."""
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    names = optuna.study.get_all_study_names(storage)
    trial_folders = out / "trials"
    if not names and trial_folders.is_dir() and any(trial_folders.iterdir()):
        raise ConfigError(
            f"{out} holds trial folders but no study.db: choose another --out, or delete "
            f"{trial_folders} to start a new study there"
        )
    # Named after the folder; a renamed folder keeps its one study.
    name = names[0] if len(names) == 1 else out.resolve().name
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        pruner=pruner,
    )
    if not study.user_attrs and not study.get_trials(deepcopy=False):  # a new study
        for key, value in settings.items():
            study.set_user_attr(key, value)
    _check_same_study(study, settings, out)
    done = sum(_counts(trial) for trial in study.get_trials(deepcopy=False))
    study.sampler = _sampler(sampler, None if seed is None else seed + done)
    return study


def _check_same_study(study: optuna.Study, settings: dict[str, Any], out: Path) -> None:
    saved = study.user_attrs
    if "config" not in saved:
        raise ConfigError(f"{out}/study.db holds a study that crckd tune did not make")
    restart = "continue it with the same config, space and metric, or choose another --out"
    if saved["metric"] != settings["metric"]:
        raise ConfigError(
            f"{out} holds a study of val {saved['metric']}, not {settings['metric']}: {restart}"
        )
    if saved["space"] != settings["space"]:
        keys = sorted(
            key
            for key in saved["space"].keys() | settings["space"].keys()
            if saved["space"].get(key) != settings["space"].get(key)
        )
        raise ConfigError(f"{out} holds a study of another search space ({keys}): {restart}")
    changes = training_changes(saved["config"], settings["config"])
    if changes:
        raise ConfigError(f"{out} holds a study of another config ({changes}): {restart}")


def _requeue_stopped(study: optuna.Study) -> None:
    """Queue again each trial that a killed process left running (marked failed first) or
    that Ctrl-C interrupted, with its values and run folder (which resumes from its last
    checkpoint)."""
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs.get("retry_of") for trial in trials}
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
            how = "left running by a killed process"
        elif trial.user_attrs.get("interrupted") and trial.number not in retried:
            how = "interrupted"
        else:
            continue
        attrs = {"retry_of": trial.number}
        if "run_dir" in trial.user_attrs:
            attrs["run_dir"] = trial.user_attrs["run_dir"]
        study.enqueue_trial(trial.params, user_attrs=attrs)
        print(f"trial {trial.number} was {how}: running it again")


def _counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the trials wanted (see `_FINISHED`)."""
    return trial.state in _FINISHED and (
        trial.state != TrialState.FAIL or "error" in trial.user_attrs
    )


class _Study:
    """One study's objective, its per-trial progress and its report files."""

    def __init__(
        self,
        study: optuna.Study,
        out: Path,
        base: dict[str, Any],
        distributions: dict[str, BaseDistribution],
        metric: str,
        wanted: int,
        sampler: str,
        seed: int | None,
    ) -> None:
        self.study, self.out, self.base = study, out, base
        self.distributions, self.metric, self.wanted = distributions, metric, wanted
        self.sampler, self.seed = sampler, seed

    def finished(self) -> int:
        return sum(_counts(trial) for trial in self.study.get_trials(deepcopy=False))

    def objective(self, trial: Trial) -> float:
        """Train the trial's run (resumed when its folder holds a checkpoint) and return the
        validation metric of its selected epoch."""
        folder = trial.user_attrs.get("run_dir", f"trials/trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", folder)
        params = {key: _suggest(trial, key, dist) for key, dist in self.distributions.items()}
        raw = _with_params(deep_merge(self.base, {"output_dir": str(self.out / folder)}), params)
        config = build_config(raw, source=f"trial {trial.number}")
        resume = RunFolder(self.out / folder).last_checkpoint.exists()
        trial.set_user_attr("resumed", resume)

        def report(epoch: int, record: dict[str, Any]) -> None:
            trial.set_user_attr("epochs", epoch + 1)
            value = record[f"val_{self.metric}"]
            if value is None or math.isnan(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch + 1)
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

        try:
            result = train(
                config,
                resume=resume,
                overwrite=not resume,
                evaluate_test=False,
                on_epoch_end=report,
            )
        except NumericalError as err:
            trial.set_user_attr("error", str(err))
            raise
        except KeyboardInterrupt:  # Optuna marks the trial failed: the next start reruns it
            trial.set_user_attr("interrupted", True)
            raise
        value = result.metrics[f"val_{self.metric}"]
        if value is None or math.isnan(value):
            trial.set_user_attr("error", f"the validation {self.metric} is undefined")
            return math.nan  # Optuna marks the trial failed
        trial.set_user_attr("selected_epoch", result.metrics["selected_epoch"] + 1)
        return float(value)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Print the trial's progress line, write its trial.json and the study's reports; a
        seeded study draws each new trial's values with a sampler seeded by the trials done,
        the same whether the study ran at once or was killed and continued."""
        done = self.finished()
        print(self._progress_line(trial, done), flush=True)
        if "run_dir" in trial.user_attrs:
            atomic_write_text(
                self.out / trial.user_attrs["run_dir"] / "trial.json",
                json.dumps(_row(trial, list(self.distributions), {}), indent=2) + "\n",
            )
        self.write_reports()
        if self.seed is not None:
            study.sampler = _sampler(self.sampler, self.seed + done)

    def _progress_line(self, trial: FrozenTrial, done: int) -> str:
        params = " ".join(f"{key}={_short(value)}" for key, value in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            outcome = f"val {self.metric} {trial.value:.4f}"
        else:
            outcome = _note(trial, {})
        best = self._best()
        shown = "none yet" if best is None else f"{best.value:.4f} (trial {best.number})"
        return f"trial {done}/{self.wanted} (#{trial.number}) {params}: {outcome} | best {shown}"

    def _best(self) -> FrozenTrial | None:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return self.study.best_trial if complete else None

    def write_reports(self) -> TuneResult:
        """best.yaml (once a trial completed), trials.csv, trials.md and trials.png."""
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        table = trials_table(trials, list(self.distributions))
        atomic_write_text(self.out / "trials.csv", table.to_csv(index=False))
        best = self._best()
        summary = "no trial has completed yet"
        if best is not None:
            summary = f"best: trial {best.number}, val {self.metric} {best.value:.4f}"
            raw = _with_params(self.base, best.params)
            build_config(raw, source="best.yaml")  # ready to run
            atomic_write_text(
                self.out / "best.yaml",
                f"# crckd tune {self.out}: {summary}\n" + yaml.safe_dump(raw, sort_keys=False),
            )
        atomic_write_text(
            self.out / "trials.md",
            f"# crckd tune: {self.study.study_name}\n\nObjective: the validation {self.metric} "
            f"of each trial's selected epoch (maximised). {self.finished()} of {self.wanted} "
            f"trials finished; {summary}.\n\n{markdown(table)}",
        )
        plot_trials(trials, self.metric, self.out / "trials.png")
        return TuneResult(
            self.out,
            self.metric,
            None if best is None else best.number,
            None if best is None else best.value,
            {} if best is None else dict(best.params),
            table,
        )


def _suggest(trial: Trial, key: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, log=distribution.log)
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(trial: FrozenTrial, reruns: dict[int, int]) -> str:
    """What a trial's state alone does not say: pruned when, why failed, resumed or killed."""
    attrs = trial.user_attrs
    if trial.state == TrialState.PRUNED:
        # Optuna gives a pruned trial its last reported value
        value = "" if trial.value is None else f" (val {trial.value:.4f})"
        return f"pruned at epoch {attrs.get('pruned_at_epoch', '?')}{value}"
    if trial.state == TrialState.FAIL:
        if trial.number in reruns:
            how = "interrupted" if attrs.get("interrupted") else "killed"
            return f"{how}; run again as trial {reruns[trial.number]}"
        return f"failed: {attrs.get('error', 'see the error above')}".splitlines()[0]
    if "retry_of" in attrs:
        how = "resumed from its last checkpoint" if attrs.get("resumed") else "from the start"
        return f"rerun of trial {attrs['retry_of']}, {how}"
    return ""


def _row(trial: FrozenTrial, keys: list[str], reruns: dict[int, int]) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "epochs": trial.user_attrs.get("epochs"),
        **{key: trial.params.get(key) for key in keys},
        "run_dir": trial.user_attrs.get("run_dir"),
        "note": _note(trial, reruns),
    }


def trials_table(trials: list[FrozenTrial], keys: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, value (completed trials), epochs run, the values of
    `keys`, its run folder and a note (pruned at, failure, rerun)."""
    reruns = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    columns = ["trial", "state", "value", "epochs", *keys, "run_dir", "note"]
    return pd.DataFrame([_row(t, keys, reruns) for t in trials], columns=columns)


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table of `table` (floats to 4 significant digits, empty cells blank)."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return _short(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_trials(trials: list[FrozenTrial], metric: str, path: Path) -> None:
    """The objective of each completed trial, the last value of each pruned one, and the best
    so far."""
    fig, ((ax,),) = new_figure(7, 4)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    if complete:
        numbers = [t.number for t in complete]
        values = np.array([t.value for t in complete])
        ax.plot(numbers, values, "o", label="trial")
        ax.step(numbers, np.maximum.accumulate(values), where="post", label="best so far")
    if pruned:
        ax.plot(
            [t.number for t in pruned],
            [t.value for t in pruned],
            "x",
            color="grey",
            label="pruned (last value)",
        )
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"val {metric}")
    if complete or pruned:
        ax.legend(fontsize="small")
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
