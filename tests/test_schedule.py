"""The schedule relative to the run: resolution, conflicts, what methods and runs use."""

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST, make_colour_ham
from crckd.config import SCHEDULE_ALTERNATIVES, config_to_dict
from crckd.engine import Trainer
from crckd.engine.resume import training_changes
from crckd.errors import ConfigError
from crckd.losses import sigmoid_rampup
from crckd.methods import MethodContext, get_method, load_config, method_schedules
from crckd.methods.schedule import (
    PAPER_EPOCHS,
    PAPER_SCHEDULE,
    PAPER_STEPS_PER_EPOCH,
    decay_for_half_life,
    half_life_steps,
    paper_half_life_fraction,
    resolve_schedule,
)
from crckd.models import build_model

LABELS = np.array([0, 1, 2] * 4)


def schedule_of(*overrides: str, epochs: int = 80, steps: int | None = PAPER_STEPS_PER_EPOCH):
    config = load_config(overrides=list(overrides)).method
    paper = get_method(config.name).cls.paper_schedule
    return resolve_schedule(config, epochs, steps, paper)


def make_method(name: str, *overrides: str, epochs: int = 80, steps: int = 10):
    config = load_config(overrides=[f"method.name={name}", "method.ccd.num_negatives=4",
                                    "method.ccd.num_positives=2", *overrides])  # fmt: skip
    context = MethodContext(3, LABELS, None, epochs, image_size=32, steps_per_epoch=steps)
    return get_method(name).cls(build_model("resnet18", 3, feat_dim=16), config.method, context)


def test_the_paper_constants_give_decay_0_99_as_its_half_life_fraction():
    assert PAPER_EPOCHS * PAPER_STEPS_PER_EPOCH == 8800
    assert half_life_steps(0.99) == pytest.approx(math.log(0.5) / math.log(0.99))
    assert paper_half_life_fraction() == pytest.approx(68.96756393652842 / 8800, rel=1e-12)


@pytest.mark.parametrize("name", ["crckd", "mt", "dkd"])
def test_relative_at_80_epochs_of_the_papers_steps_gives_the_papers_numbers(name):
    relative = schedule_of(f"method.name={name}", "method.schedule=relative")
    epochs = schedule_of(f"method.name={name}", "method.schedule=epochs")
    assert relative.ema_decay == pytest.approx(0.99, abs=1e-9)
    assert (relative.consistency_begin, relative.crp_begin, relative.ccd_begin) == (20, 20, 0)
    assert relative.consistency_rampup == 30
    assert relative.distill_warmup == (20 if name == "dkd" else 0)
    assert epochs.ema_decay == 0.99
    assert dataclasses.replace(relative, ema_decay=0.99) == epochs


def test_relative_at_6_epochs_starts_at_the_first_epoch_past_the_fraction():
    schedule = schedule_of("method.name=crckd", "method.schedule=relative", epochs=6, steps=94)
    assert schedule.consistency_begin == 2  # 0.25 x 6 = 1.5: on from epoch 2
    assert schedule.crp_begin == 2
    assert schedule.consistency_rampup == 2.25  # 0.375 x 6
    half_life = 68.96756393652842 / 8800 * 6 * 94
    assert schedule.ema_decay == pytest.approx(0.5 ** (1 / half_life), rel=1e-12)
    assert schedule.ema_half_life_steps == pytest.approx(half_life, rel=1e-12)


@pytest.mark.parametrize(
    ("fraction", "epochs", "begin"), [(0.25, 6, 2), (1 / 3, 6, 2), (0.1, 30, 3), (0.0, 6, 0)]
)
def test_a_begin_fraction_is_on_from_the_first_epoch_at_or_past_it(fraction, epochs, begin):
    """e >= f x epochs: exactly 2.0 starts at 2, and 0.1 x 30 is 3 (not 3.0000000000000004)."""
    schedule = schedule_of(f"method.crp.begin_fraction={fraction}", epochs=epochs)
    assert schedule.crp_begin == begin


def test_set_values_win_over_the_mode_in_both_modes():
    for mode in ("epochs", "relative"):
        schedule = schedule_of(
            f"method.schedule={mode}",
            "method.consistency.begin_epoch=3",
            "method.consistency.rampup_fraction=0.5",
            "method.ema.half_life_steps=10",
            epochs=6,
        )
        assert (schedule.consistency_begin, schedule.consistency_rampup) == (3, 3.0)
        assert schedule.ema_decay == pytest.approx(0.5**0.1)


def test_half_life_and_decay_convert_both_ways_and_halve_an_ema_gap():
    for steps in (1.0, 4.42, 68.97, 1000.0):
        assert half_life_steps(decay_for_half_life(steps)) == pytest.approx(steps, rel=1e-12)
    assert (half_life_steps(0.0), half_life_steps(1.0)) == (0.0, math.inf)
    # As a fraction of all steps: 0.1 of 5 epochs x 20 steps is 10 steps.
    by_fraction = schedule_of("method.ema.half_life_fraction=0.1", epochs=5, steps=20)
    assert by_fraction.ema_decay == pytest.approx(0.5**0.1, rel=1e-12)
    # The method's EMA with that decay: after 10 steps (past the warm-up) the teacher has
    # moved half of the way to a fixed student.
    method = make_method("mt", "method.ema.half_life_steps=10", "method.ema.include_buffers=false")
    assert method.ema_decay == pytest.approx(0.5**0.1)
    teacher, student = method.teacher.classifier.weight, method.student.classifier.weight
    with torch.no_grad():
        student.add_(1.0)
    gap = (student - teacher).clone()
    for step in range(1000, 1010):
        method.after_step(step)
    torch.testing.assert_close(student - teacher, 0.5 * gap, rtol=1e-5, atol=1e-6)


def test_only_an_ema_teacher_has_a_decay():
    assert make_method("ce").ema_decay is None
    assert make_method("kd").ema_decay == 0.99


def test_a_half_life_fraction_without_the_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="steps per epoch"):
        schedule_of("method.schedule=relative", steps=None)


@pytest.mark.parametrize(("section", "keys"), SCHEDULE_ALTERNATIVES, ids=str)
def test_a_value_set_twice_is_a_config_error_naming_both_keys(section, keys):
    values = {"decay": 0.9, "half_life_steps": 5, "half_life_fraction": 0.1}
    first, second = keys[0], keys[-1]
    overrides = [f"method.{section}.{key}={values.get(key, 1)}" for key in (first, second)]
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    assert f"method.{section}.{first}" in str(error.value)
    assert f"method.{section}.{second}" in str(error.value)


def _old_weights(name: str, epoch: int) -> dict[str, float]:
    """Loss weights of the code before the relative schedule, from its formulas (the paper's
    begin 20, ramp 30, DKD warm-up 20)."""
    kl = 0.0 if epoch < 20 else sigmoid_rampup(epoch, 30)
    if name == "crckd":
        return {"ce": 1.0, "kd": 0.0, "kl": kl, "ccd": 0.1, "crp": 0.0 if epoch < 20 else 1.0}
    if name == "crckd-paper":
        return {**_old_weights("crckd", epoch), "ccd": 0.1 if epoch < 20 else 0.01}
    if name == "mt":
        return {"ce": 1.0, "kd": 0.0, "kl": kl}
    return {"ce": 1.0, "kd": 0.0, "dkd": min(1.0, (epoch + 1) / 20)}


@pytest.mark.parametrize("name", ["crckd", "crckd-paper", "mt", "dkd"])
def test_the_epochs_mode_keeps_the_old_weights_and_decay(name):
    extra = ("method.preset=paper_faithful",) if name == "crckd-paper" else ()
    method = make_method(name.removesuffix("-paper"), *extra)
    assert method.config.schedule == "epochs" and method.ema_decay == 0.99
    for epoch in range(100):
        assert method.loss_weights(epoch) == pytest.approx(_old_weights(name, epoch)), epoch


def test_a_config_written_before_the_relative_schedule_resolves_as_before():
    old = [
        "method.name=crckd", "method.ema.decay=0.99", "method.consistency.begin_epoch=20",
        "method.consistency.rampup_epochs=30", "method.ccd.begin_epoch=0",
        "method.crp.begin_epoch=20", "method.distill.begin_epoch=0",
        "method.distill.warmup_epochs=0",
    ]  # fmt: skip
    assert schedule_of(*old) == PAPER_SCHEDULE
    assert schedule_of(*old, "method.schedule=relative", epochs=6) == PAPER_SCHEDULE


def test_paper_faithful_sets_the_epochs_mode_under_the_users_settings():
    assert load_config(overrides=["method.preset=paper_faithful"]).method.schedule == "epochs"


def test_methods_command_shows_both_modes():
    crckd = method_schedules(get_method("crckd"))
    assert "method.consistency.begin_epoch=20" in crckd["epochs"]
    assert "method.consistency.begin_fraction=0.25" in crckd["relative"]
    assert "method.consistency.rampup_fraction=0.375" in crckd["relative"]
    assert "method.ema.half_life_fraction=0.007837" in crckd["relative"]
    assert "method.distill.warmup_fraction=0.25" in method_schedules(get_method("dkd"))["relative"]
    crd = method_schedules(get_method("crd"))["epochs"]  # no MT and no CRP: not listed
    assert "consistency" not in crd and "crp" not in crd
    assert method_schedules(get_method("ce")) == {}


@pytest.mark.slow
def test_a_relative_run_logs_its_decay_and_starts_its_terms_as_resolved(tmp_path, capsys):
    root = make_colour_ham(tmp_path / "ham")
    overrides = [
        f"data.root={root}", f"output_dir={tmp_path / 'run'}", *FAST, "train.epochs=2",
        "method.name=mt", "method.schedule=relative", "method.consistency.begin_epoch=null",
    ]  # fmt: skip
    trainer = Trainer(load_config(overrides=overrides))
    trainer.fit()
    epochs = pd.read_csv(tmp_path / "run" / "epochs.csv")
    half_life = paper_half_life_fraction() * 2 * trainer.steps_per_epoch
    assert epochs["ema_decay"].tolist() == pytest.approx([0.5 ** (1 / half_life)] * 2, rel=1e-12)
    # 0.25 of 2 epochs: on from epoch 1, ramp-up 0.75 epochs (done by then).
    assert epochs["weight_kl"].tolist() == [0.0, 1.0]
    err = capsys.readouterr().err
    assert f"crckd: schedule (relative, 2 epochs of {trainer.steps_per_epoch} steps): " in err
    assert "method.consistency.begin_epoch=1 method.consistency.rampup_epochs=0.75" in err


def test_a_config_saved_before_the_relative_schedule_is_the_same_run():
    """Runs made before the schedule keys defaulted to none hold the paper's values written
    out: resume, compare and tune must not take them for other settings (but a real change
    and the relative mode still count)."""
    now = config_to_dict(load_config(overrides=["method.name=dkd"]))
    saved = copy.deepcopy(now)
    del saved["method"]["schedule"]
    for section, key, value in [
        ("ema", "decay", 0.99),
        ("consistency", "begin_epoch", 20),
        ("consistency", "rampup_epochs", 30.0),
        ("ccd", "begin_epoch", 0),
        ("crp", "begin_epoch", 20),
        ("distill", "begin_epoch", 0),
        ("distill", "warmup_epochs", 20),  # dkd's own warm-up
    ]:
        saved["method"][section][key] = value
        fraction = key.replace("epochs", "fraction").replace("epoch", "fraction")
        saved["method"][section].pop(fraction, None)  # fraction keys did not exist then
    assert training_changes(saved, now) == ""
    changed = copy.deepcopy(saved)
    changed["method"]["distill"]["warmup_epochs"] = 10
    assert training_changes(changed, now) == "method.distill.warmup_epochs: 10 -> 20.0"
    relative = config_to_dict(
        load_config(overrides=["method.name=dkd", "method.schedule=relative"])
    )
    assert "method.ema.decay: 0.99 -> None" in training_changes(saved, relative)


def test_configs_saying_one_schedule_in_other_units_are_the_same_run():
    """A start given as a fraction, or derived by the relative mode, is the same setting as
    the epoch it resolves to for the run's length (compare met this reusing earlier runs);
    the same fraction of a longer run is not."""

    def config(*overrides: str) -> dict:
        return config_to_dict(load_config(overrides=["method.name=crckd", *overrides]))

    in_epochs = config("train.epochs=8", "method.consistency.begin_epoch=2")
    as_fraction = config("train.epochs=8", "method.consistency.begin_fraction=0.25")
    assert training_changes(in_epochs, as_fraction) == ""
    longer = config("train.epochs=10", "method.consistency.begin_fraction=0.25")
    assert "method.consistency.begin_epoch: 2 -> 3" in training_changes(
        {**in_epochs, "train": longer["train"]}, longer
    )
    # At the paper's 80 epochs the relative mode derives the paper's epochs; only the EMA,
    # a fraction of all steps there, is not comparable without the steps per epoch...
    paper = config("train.epochs=80")
    relative = config("train.epochs=80", "method.schedule=relative")
    assert training_changes(paper, relative) == (
        "method.ema.decay: 0.99 -> None; "
        f"method.ema.half_life_fraction: None -> {paper_half_life_fraction()!r}"
    )
    # ...and with the EMA given, the two are the same run.
    relative_decay = config("train.epochs=80", "method.schedule=relative", "method.ema.decay=0.99")
    assert training_changes(paper, relative_decay) == ""
