"""Every registered method trains on a tiny dataset with both teacher modes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST, make_colour_ham
from crckd.data.transforms import IMAGENET_NORMALIZATION
from crckd.engine import train
from crckd.errors import ConfigError
from crckd.methods import MethodContext, available_methods, get_method, load_config
from crckd.methods.frozen_teacher import FrozenTeacher, renormalization
from crckd.models import build_model

METHODS = [spec.name for spec in available_methods()]
TEACHER_METHODS = [name for name in METHODS if name != "ce"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_colour_ham(tmp_path_factory.mktemp("data") / "ham", n_per_class=10)


@pytest.fixture(scope="module")
def frozen_teacher(data_root, tmp_path_factory) -> Path:
    """A `ce` teacher of another backbone than the students', as RepDistiller trains one."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(
        load_config(
            overrides=[f"data.root={data_root}", f"output_dir={out}", "train.epochs=1", *FAST]
        )
    )
    return out / "checkpoints" / "best.pt"


def one_epoch(data_root: Path, out: Path, name: str, *extra: str) -> pd.DataFrame:
    overrides = [
        f"data.root={data_root}",
        f"output_dir={out}",
        f"method.name={name}",
        "train.epochs=1",
        *FAST,
        "method.consistency.begin_epoch=0",
        "method.crp.begin_epoch=0",
        "method.distill.warmup_epochs=0",
        *extra,
    ]
    train(load_config(overrides=overrides))
    return pd.read_csv(out / "epochs.csv")


def own_terms(frame: pd.DataFrame) -> dict[str, float]:
    """Loss terms other than CE whose weight was not 0 in the first epoch."""
    return {
        column[len("train_") :]: frame.loc[0, column]
        for column in frame.columns
        if column.startswith("train_")
        and column not in ("train_loss", "train_ce", "train_seconds")
        and frame.loc[0, f"weight_{column[len('train_') :]}"] > 0
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_method_trains_with_an_ema_teacher(name, data_root, tmp_path):
    # timm's 0.4M-parameter ResNet (4 stages, as resnet18): every method's terms at a fraction
    # of the cost; students of other backbones train with frozen teachers below
    terms = own_terms(one_epoch(data_root, tmp_path / "run", name, "model.backbone=test_resnet"))
    assert terms, f"{name} logged no distillation term"
    assert all(np.isfinite(v) for v in terms.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_method_trains_with_a_frozen_teacher_of_another_backbone(
    name, data_root, frozen_teacher, tmp_path
):
    terms = own_terms(
        one_epoch(
            data_root,
            tmp_path / "run",
            name,
            "model.backbone=mobilenetv3_small_050",
            "method.teacher.mode=frozen",
            f"method.teacher.checkpoint={frozen_teacher}",
        )
    )
    assert terms and all(np.isfinite(v) for v in terms.values())


def test_frozen_teacher_is_not_updated(frozen_teacher, data_root, tmp_path):
    from crckd.engine import load_checkpoint

    before = load_checkpoint(frozen_teacher)["student"]
    one_epoch(
        data_root,
        tmp_path / "run",
        "kd",
        "method.teacher.mode=frozen",
        f"method.teacher.checkpoint={frozen_teacher}",
    )
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["method"]
    for key, value in before.items():
        torch.testing.assert_close(after[f"teacher.{key}"], value, rtol=0, atol=0)


def test_frozen_mode_without_checkpoint_is_a_config_error(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"needs method\.teacher\.checkpoint"):
        one_epoch(data_root, tmp_path / "run", "kd", "method.teacher.mode=frozen")


def test_dkd_is_refused_for_two_classes():
    config = load_config(overrides=["method.name=dkd"])
    context = MethodContext(2, np.array([0, 1, 0, 1]), None, 1, image_size=32)
    with pytest.raises(ConfigError, match="at least 3 classes"):
        get_method("dkd").cls(build_model("resnet18", 2), config.method, context)


def test_kd_can_be_added_to_any_method_by_weight():
    config = load_config(overrides=["method.name=rkd", "method.distill.kd_weight=0.5"])
    context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32)
    method = get_method("rkd").cls(build_model("resnet18", 3, feat_dim=16), config.method, context)
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([0, 1, 2, 0]),
        "index": torch.arange(4),
    }
    terms = method.train().training_losses(batch, 0, method.loss_weights(0))
    assert set(terms) == {"ce", "kd", "rkd"}
    assert method.loss_weights(0)["kd"] == 0.5


def test_unknown_loss_parameter_is_a_config_error():
    config = load_config(overrides=["method.name=dist", "method.distill.params={alpha: 2}"])
    context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32)
    with pytest.raises(ConfigError, match="alpha"):
        get_method("dist").cls(build_model("resnet18", 3), config.method, context)


def test_a_bad_loss_parameter_names_the_key_the_method_and_the_accepted_keys():
    config = load_config(overrides=["method.name=dkd", "method.distill.params={gama: 2}"])
    context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32)
    match = r"'gama' for method 'dkd' \(dkd_loss\); accepted keys: alpha, beta, temperature$"
    with pytest.raises(ConfigError, match=match):
        get_method("dkd").cls(build_model("resnet18", 3), config.method, context)


@pytest.mark.parametrize("name", ["ce", "kd", "mt", "crckd", "sp", "fitnet"])
def test_loss_parameters_are_refused_by_a_method_that_takes_none(name):
    config = load_config(overrides=[f"method.name={name}", "method.distill.params={alpha: 2}"])
    context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32)
    with pytest.raises(ConfigError, match=rf"'alpha' for method '{name}'.*; it accepts no keys$"):
        get_method(name).cls(build_model("resnet18", 3), config.method, context)


def test_a_loss_parameter_is_bound_when_the_method_is_built():
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])}
    losses = {}
    for params in ("{}", "{beta: 0}"):
        torch.manual_seed(0)
        student, teacher = build_model("resnet18", 3), build_model("resnet18", 3)
        frozen = FrozenTeacher(teacher, ("a", "b", "c"), 32, IMAGENET_NORMALIZATION, Path("t.pt"))
        context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32, frozen_teacher=frozen)
        overrides = ["method.name=dkd", "method.teacher.mode=frozen"]
        config = load_config(overrides=[*overrides, f"method.distill.params={params}"])
        method = get_method("dkd").cls(student, config.method, context).train()
        losses[params] = method.training_losses(batch, 0, method.loss_weights(0))["dkd"]
    # beta = 0 drops the non-target term (NCKD >= 0) of the default beta = 8
    assert losses["{beta: 0}"] < losses["{}"]


def test_feature_map_methods_tap_without_changing_the_forward():
    config = load_config(overrides=["method.name=at"])
    context = MethodContext(3, np.arange(12) % 3, None, 1, image_size=32)
    student = build_model("resnet18", 3)
    x = torch.randn(2, 3, 32, 32)
    student.eval()
    before = student(x).logits
    method = get_method("at").cls(student, config.method, context)
    assert method.student_tap.layers == [
        "backbone.layer2",
        "backbone.layer3",
        "backbone.layer4",
    ]
    torch.testing.assert_close(method.student(x).logits, before)


def test_a_frozen_teacher_sees_images_in_its_own_normalisation():
    student_norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet
    teacher_norm = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # e.g. efficientnet_lite0_pypi
    assert renormalization(student_norm, student_norm) is None
    scale, shift = renormalization(student_norm, teacher_norm)
    raw = torch.rand(2, 3, 8, 8)  # pixels in [0, 1]
    as_student = normalize(raw, student_norm)
    expected = normalize(raw, teacher_norm)

    config = load_config(overrides=["method.name=kd", "method.teacher.mode=frozen"])
    teacher = build_model("resnet18", 3)
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    frozen = FrozenTeacher(teacher, ("a", "b", "c"), 8, teacher_norm, Path("teacher.pt"))
    assert frozen.input_map(student_norm) == (scale, shift)
    context = MethodContext(
        3, np.arange(12) % 3, None, 1, image_size=8, normalization=student_norm,
        frozen_teacher=frozen,
    )  # fmt: skip
    method = get_method("kd").cls(build_model("resnet18", 3), config.method, context)
    method.teacher_output({"image": as_student})
    torch.testing.assert_close(seen[0], expected)
    assert not any("teacher_s" in key for key in method.state_dict())  # checkpoints unchanged


def normalize(images: torch.Tensor, normalization) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization)
    return (images - mean) / std


def test_a_frozen_teacher_of_another_image_size_is_noted(
    data_root, frozen_teacher, tmp_path, capsys
):
    one_epoch(
        data_root, tmp_path / "run", "kd", "data.image_size=48", "method.teacher.mode=frozen",
        f"method.teacher.checkpoint={frozen_teacher}",
    )  # fmt: skip
    assert "was trained on 32 px images; it sees this run's 48 px images" in capsys.readouterr().err
