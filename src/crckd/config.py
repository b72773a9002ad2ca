"""Typed experiment configuration: YAML files, dotted overrides and method presets.

A config is plain data (no code is executed while reading it): YAML is parsed with a safe
loader and validated by pydantic, so an unknown key or a wrong type is a `ConfigError` that
names the key, before anything is trained or written. A method's registered defaults are
passed in (`crckd.methods.build_config` does): this module imports nothing of crckd but errors.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crckd.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images are and how they are split and resized."""

    dataset: Literal["ham10000", "aptos", "csv", "imagefolder"] = "ham10000"
    root: Path | None = None
    csv: Path | None = Field(None, description="labels CSV of the 'csv' dataset (path,label)")
    classes: list[str] | None = Field(None, description="class order for 'csv' datasets")
    image_size: int = Field(224, gt=0)
    split: Literal["auto", "holdout", "kfold"] = "auto"
    split_file: Path | None = Field(None, description="reuse a split.csv written by a run")
    split_seed: int = 2020
    fold: int = Field(1, ge=1, description="1-based test fold for kfold splits")
    n_folds: int = Field(5, ge=2)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    num_workers: int | Literal["auto"] = Field(
        "auto", description="loader processes; auto: up to 8 on CUDA, 0 on the CPU"
    )
    cache: bool = Field(False, description="decode and resize every image once, reuse it")
    cache_dir: Path | None = Field(None, description="default $CRCKD_CACHE_DIR or ~/.cache/crckd")
    check: bool = Field(True, description="open every image once before training (check-data)")
    labeled_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep the labels of this stratified part of the training split; the rest "
        "trains as unlabelled images",
    )
    unlabeled_root: Path | None = Field(
        None, description="folder of unlabelled training images (any depth)"
    )
    labeled_batch_size: int | None = Field(
        None,
        ge=1,
        description="labelled images per global batch when there are unlabelled ones; "
        "none: a quarter of train.batch_size",
    )


class ModelConfig(_Section):
    """Backbone and the paper's head (bottleneck of `feat_dim`, then the classifier)."""

    backbone: str = "densenet121"
    pretrained: bool | str = False
    feat_dim: int = Field(128, gt=0)
    drop_rate: float = Field(0.0, ge=0, lt=1)


class EMAConfig(_Section):
    """Mean-teacher exponential moving average (§b step 6): a decay, or a half-life (set one;
    none: the paper's 0.99, or its half-life fraction under `method.schedule=relative`)."""

    decay: float | None = Field(None, ge=0, le=1)
    half_life_steps: float | None = Field(None, gt=0, description="decay = 0.5 ** (1 / steps)")
    half_life_fraction: float | None = Field(
        None, gt=0, le=1, description="half-life as a fraction of all training steps"
    )
    include_buffers: bool = True
    teacher_mode: Literal["eval", "train"] = "eval"


class ConsistencyConfig(_Section):
    """Mean-teacher consistency between student and teacher predictions."""

    type: Literal["kl", "mse"] = "kl"
    weight: float = Field(1.0, ge=0)
    rampup_epochs: float | None = Field(None, ge=0, description="none: the paper's 30")
    rampup_fraction: float | None = Field(None, ge=0, description="ramp-up / train.epochs")
    begin_epoch: int | None = Field(None, ge=0, description="none: the paper's 20")
    begin_fraction: float | None = Field(None, ge=0, le=1, description="start / train.epochs")


class CCDConfig(_Section):
    """Class-guided contrastive distillation with memory banks (§b CCD, §d sampling)."""

    weight: float = Field(0.1, ge=0)
    late_weight: float | None = Field(
        None, ge=0, description="weight from consistency.begin_epoch on (paper_faithful: 0.01)"
    )
    begin_epoch: int | None = Field(None, ge=0, description="none: the paper's 0")
    begin_fraction: float | None = Field(None, ge=0, le=1, description="start / train.epochs")
    num_positives: int = Field(20, ge=1)
    num_negatives: int = Field(4096, ge=1)
    positives: Literal["multi", "exact", "relax"] = "multi"
    negatives: Literal["sup", "unsup"] = "sup"
    temperature: float = Field(0.07, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1)
    embed_dim: int = Field(128, gt=0)
    teacher_side: bool = Field(
        True, description="also L_CCD^(T): the teacher's embedding against the student bank"
    )


class CRPConfig(_Section):
    """Categorical relation preserving loss against class centroids of the banks."""

    weight: float = Field(1.0, ge=0)
    begin_epoch: int | None = Field(None, ge=0, description="none: the paper's 20")
    begin_fraction: float | None = Field(None, ge=0, le=1, description="start / train.epochs")


class SemiConfig(_Section):
    """How a class-guided method (CRCKD's CCD and CRP) uses unlabelled images: a row of the
    memory banks takes the teacher's class where the teacher is this confident, else it has no
    class (instance contrast only, and left out of the centroids)."""

    pseudo_labels: bool = Field(True, description="give confident unlabelled rows a class")
    threshold: float = Field(
        0.95, gt=0, le=1, description="teacher probability a pseudo-label needs"
    )


class TeacherConfig(_Section):
    """Where the teacher comes from: an EMA of the student, or a frozen trained checkpoint."""

    mode: Literal["ema", "frozen"] = "ema"
    checkpoint: Path | None = Field(None, description="crckd checkpoint of a frozen teacher")
    view: Literal["auto", "same", "second"] = Field(
        "auto", description="teacher input: the student's view or a second augmented view"
    )


class DistillConfig(_Section):
    """A baseline's distillation term, and an optional Hinton KD term on top of any method."""

    weight: float = Field(1.0, ge=0, description="weight of the method's distillation term")
    begin_epoch: int | None = Field(None, ge=0, description="none: 0")
    begin_fraction: float | None = Field(None, ge=0, le=1, description="start / train.epochs")
    warmup_epochs: int | None = Field(
        None, ge=0, description="linear ramp of the weight; none: the method's (DKD: 20, else 0)"
    )
    warmup_fraction: float | None = Field(None, ge=0, description="warm-up / train.epochs")
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy term")
    kd_weight: float = Field(0.0, ge=0, description="add Hinton KD with this weight")
    temperature: float = Field(4.0, gt=0, description="temperature of the kd term")
    layers: list[str] | None = Field(None, description="module paths of feature taps")
    params: dict[str, float] = Field(
        default_factory=dict, description="keyword arguments of the method's loss function"
    )


class MethodConfig(_Section):
    """Which method trains the student, and the settings of its loss terms."""

    name: str = "ce"
    preset: Literal["default", "paper_faithful"] = "default"
    # How unset schedule values are read: the paper's epochs as they are, or as the same
    # fractions of this run (docs/crckd.md, "Schedule relative to the run").
    schedule: Literal["epochs", "relative"] = "epochs"
    teacher: TeacherConfig = TeacherConfig()
    teacher_perturb: bool = Field(True, description="rot90 + flip of the teacher's view")
    distill: DistillConfig = DistillConfig()
    ema: EMAConfig = EMAConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    ccd: CCDConfig = CCDConfig()
    crp: CRPConfig = CRPConfig()
    semi: SemiConfig = SemiConfig()


class TrainConfig(_Section):
    """Optimisation, schedule, seeding and evaluation (defaults: the paper's, §c)."""

    epochs: int = Field(80, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 2020
    deterministic: bool = False
    device: str = "auto"
    class_weights: bool = True
    lr: float = Field(3e-4, gt=0, description="peak learning rate of OneCycle")
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["onecycle", "constant"] = "onecycle"
    pct_start: float = Field(0.3, gt=0, lt=1)
    epoch_start_lr: float | None = Field(
        None, gt=0, description="lr forced at each epoch start (the reference's reset quirk)"
    )
    select_metric: str = "balanced_accuracy"
    report_last_k: int = Field(10, ge=1, description="test epochs averaged for the paper's rule")
    kappa_weights: Literal["auto", "quadratic", "linear", "none"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision; auto: bf16 (or fp16) on CUDA, off on the CPU"
    )

    @field_validator("amp", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: Any) -> Any:
        """YAML reads an unquoted `off` as false: `train.amp=off` means "off"."""
        return "off" if value is False else value

    channels_last: bool | Literal["auto"] = Field("auto", description="auto: on CUDA only")
    compile: bool = Field(False, description="torch.compile the student and any teacher")
    sync_batchnorm: bool = Field(
        False, description="under DDP on CUDA: BatchNorm of trained modules over the global batch"
    )
    progress: bool = True


class Config(_Section):
    """A whole experiment."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    output_dir: Path | None = Field(None, description="run folder; default runs/<name>")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Reproduces the reference code (crckd-method.md §b schedule and §f).
    "paper_faithful": {
        "method": {
            "schedule": "epochs",
            "ema": {"include_buffers": False, "teacher_mode": "train"},
            "ccd": {"weight": 0.1, "late_weight": 0.01},
        },
        "train": {"report_last_k": 11, "epoch_start_lr": 1e-4},
    },
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `update` merged in recursively (update wins)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turn `a.b.c=value` into `{"a": {"b": {"c": value}}}`, the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return nested_setting(key.strip(), value)


def nested_setting(key: str, value: Any) -> dict[str, Any]:
    """`{"a": {"b": value}}` for the dotted key "a.b"."""
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def validate_config(
    raw: dict[str, Any],
    source: str = "config",
    *,
    method_defaults: Callable[[str], dict[str, Any]],
) -> Config:
    """Layer the settings under `raw` and validate them (`crckd.methods.build_config` passes the
    registry's `method_defaults`).

    Precedence, lowest first: field defaults, `method_defaults(method.name)` (for ablations such
    as `mt+crp`), the preset, then the user's file and overrides (`raw`).
    """
    method = raw.get("method", {}) if isinstance(raw.get("method"), dict) else {}
    preset_name = method.get("preset", "default")
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise ConfigError(
            f"{source}: unknown method.preset {preset_name!r}; one of {list(PRESETS)}"
        )
    layered: dict[str, Any] = {}
    name = method.get("name")
    if isinstance(name, str):
        layered = {"method": method_defaults(name)}
    layered = deep_merge(deep_merge(layered, PRESETS[preset_name]), raw)
    try:
        config = Config.model_validate(layered)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, source)) from None
    _check_schedule_keys(config.method, source)
    return config


# Schedule settings that say the same thing in two or three ways: at most one may be set.
SCHEDULE_ALTERNATIVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ema", ("decay", "half_life_steps", "half_life_fraction")),
    ("consistency", ("begin_epoch", "begin_fraction")),
    ("consistency", ("rampup_epochs", "rampup_fraction")),
    ("ccd", ("begin_epoch", "begin_fraction")),
    ("crp", ("begin_epoch", "begin_fraction")),
    ("distill", ("begin_epoch", "begin_fraction")),
    ("distill", ("warmup_epochs", "warmup_fraction")),
)


def _check_schedule_keys(method: MethodConfig, source: str) -> None:
    """Refuse a schedule value given twice (in epochs and as a fraction, say)."""
    for section, keys in SCHEDULE_ALTERNATIVES:
        values = getattr(method, section)
        given = [f"method.{section}.{key}" for key in keys if getattr(values, key) is not None]
        if len(given) > 1:
            raise ConfigError(
                f"{source}: {' and '.join(given)} are set together; they give one setting in "
                "different units: keep one"
            )


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`raw` with each `key=value` override merged in, in order (later ones win)."""
    for text in overrides:
        raw = deep_merge(raw, parse_override(text))
    return raw


def config_source(path: str | Path | None, overrides: list[str] | None) -> str:
    """How error messages name where settings came from: the file, the overrides, or both."""
    if not overrides:
        return str(path) if path else "the defaults"
    return f"{path} with the overrides" if path else "the overrides"


def config_to_dict(config: Config) -> dict[str, Any]:
    """A YAML-ready plain mapping (paths as strings)."""
    return config.model_dump(mode="json")


def flat_settings(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of nested settings under dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        if error["type"] == "extra_forbidden":
            hint = _suggest_key(error["loc"])
            lines.append(f"  unknown key '{key}'{hint}")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _suggest_key(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    if not close:
        return ""
    return f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?"
