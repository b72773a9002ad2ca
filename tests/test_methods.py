"""Methods: loss terms, their schedule, gradient routing, EMA and memory updates."""

import numpy as np
import pytest
import torch

from crckd.errors import ConfigError
from crckd.losses import sigmoid_rampup
from crckd.methods import MethodContext, get_method, load_config
from crckd.models import build_model

NUM_CLASSES = 3
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])


def make_method(name: str, *overrides: str):
    torch.manual_seed(0)
    config = load_config(
        overrides=[
            f"method.name={name}",
            "method.ccd.num_negatives=8",
            "method.ccd.num_positives=3",
            *overrides,
        ]
    )
    context = MethodContext(
        num_classes=NUM_CLASSES,
        train_labels=LABELS,
        class_weights=torch.ones(NUM_CLASSES),
        epochs=40,
    )
    student = build_model("resnet18", NUM_CLASSES, feat_dim=16)
    method = get_method(name).cls(student, config.method, context)
    method.seed(0)
    return method.train()


def make_batch(index=(0, 3, 6, 9)):
    torch.manual_seed(1)
    index = torch.tensor(index)
    return {
        "image": torch.randn(len(index), 3, 32, 32),
        "image2": torch.randn(len(index), 3, 32, 32),
        "label": torch.as_tensor(LABELS[index.numpy()]),
        "index": index,
    }


def losses(method, epoch: int, batch=None) -> dict[str, torch.Tensor]:
    """One step's loss terms, with the weights the trainer hands over."""
    return method.training_losses(batch or make_batch(), epoch, method.loss_weights(epoch))


def grads_after(method, term: str, epoch: int = 30) -> dict[str, bool]:
    """Which parameter groups receive a non-zero gradient from one loss term alone."""
    method.zero_grad(set_to_none=True)
    terms = losses(method, epoch)
    terms[term].backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    groups = {"student": method.student, "teacher": method.teacher}
    if hasattr(method, "embed_student"):
        groups.update(embed_student=method.embed_student, embed_teacher=method.embed_teacher)
    return {name: touched(module) for name, module in groups.items()}


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("ce", {"student": True, "teacher": False, "embed_student": False, "embed_teacher": False}),
        ("kl", {"student": True, "teacher": False, "embed_student": False, "embed_teacher": False}),
        ("ccd", {"student": True, "teacher": False, "embed_student": True, "embed_teacher": True}),
        ("crp", {"student": True, "teacher": False, "embed_student": True, "embed_teacher": False}),
    ],
)
def test_each_crckd_term_reaches_exactly_its_parameters(term, expected):
    method = make_method("crckd")
    # Move the teacher away from the student so KL is not at its minimum (zero gradient).
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert grads_after(method, term) == expected


def test_ccd_teacher_half_sends_no_gradient_to_the_student():
    """The student's gradient from the method's CCD term must not depend on the teacher head:
    if the teacher-anchored half reached the student (through bank rows or the embeddings),
    changing the teacher head's weights would change it."""
    gradients = []
    for scale in (1.0, -3.0):
        method = make_method("crckd")
        with torch.no_grad():
            for p in method.embed_teacher.parameters():
                p.mul_(scale)
        method.zero_grad(set_to_none=True)
        losses(method, 0)["ccd"].backward()
        assert all(p.grad.abs().sum() > 0 for p in method.embed_teacher.parameters())
        gradients.append([p.grad for p in method.student.parameters()])
    for unchanged, changed in zip(*gradients, strict=True):
        torch.testing.assert_close(unchanged, changed, rtol=0, atol=0)
    assert any(g.abs().sum() > 0 for g in gradients[0])


def test_teacher_never_requires_grad():
    method = make_method("crckd")
    assert not any(p.requires_grad for p in method.teacher.parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not trainable & {id(p) for p in method.teacher.parameters()}
    assert {id(p) for p in method.embed_teacher.parameters()} <= trainable


def test_default_schedule_stages_terms_as_the_reference():
    method = make_method("crckd")
    early, late = method.loss_weights(0), method.loss_weights(25)
    assert early == {"ce": 1.0, "kd": 0.0, "kl": 0.0, "ccd": 0.1, "crp": 0.0}
    assert late == {
        "ce": 1.0,
        "kd": 0.0,
        "kl": pytest.approx(sigmoid_rampup(25, 30)),
        "ccd": 0.1,
        "crp": 1.0,
    }
    assert set(losses(method, 0)) == {"ce", "ccd"}
    assert set(losses(method, 25)) == {"ce", "kl", "ccd", "crp"}


def test_paper_faithful_ccd_weight_drops_to_a_hundredth_when_mt_starts():
    method = make_method("crckd", "method.preset=paper_faithful")
    assert method.loss_weights(19)["ccd"] == pytest.approx(0.1)
    assert method.loss_weights(20)["ccd"] == pytest.approx(0.01)
    method.train()
    assert method.teacher.training  # reference: teacher BatchNorm in train mode


def test_default_teacher_runs_in_eval_mode():
    method = make_method("crckd").train()
    assert method.student.training and not method.teacher.training


@pytest.mark.parametrize(("name", "absent"), [("mt+ccd", "crp"), ("mt+crp", "ccd")])
def test_ablations_drop_their_term(name, absent):
    terms = losses(make_method(name), 30)
    assert absent not in terms and "kl" in terms


def test_mean_teacher_skips_teacher_before_begin_epoch():
    method = make_method("mt")
    assert set(losses(method, 0)) == {"ce"}
    assert set(losses(method, 20)) == {"ce", "kl"}


def test_memory_rows_of_the_batch_are_updated_and_others_kept():
    method = make_method("crckd")
    before_s = method.memory.memory_s.clone()
    batch = make_batch()
    losses(method, 0, batch)
    changed = (method.memory.memory_s != before_s).any(dim=1)
    assert changed.nonzero().flatten().tolist() == sorted(batch["index"].tolist())
    assert torch.allclose(method.memory.memory_s[batch["index"]].norm(dim=1), torch.ones(4))


def test_after_step_applies_the_ema_formula():
    method = make_method("mt", "method.ema.include_buffers=false")
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_step(step=9)  # alpha = min(1 - 1/10, 0.99) = 0.9
    for before, t, s in zip(
        teacher_before, method.teacher.parameters(), method.student.parameters(), strict=True
    ):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s)


def test_single_class_data_with_supervised_negatives_is_a_config_error():
    config = load_config(overrides=["method.name=crckd"])
    context = MethodContext(1, np.zeros(5, dtype=int), None, 1)
    with pytest.raises(ConfigError, match=r"method\.ccd"):
        get_method("crckd").cls(build_model("resnet18", 1), config.method, context)
