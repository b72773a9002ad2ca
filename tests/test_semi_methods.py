"""Methods with unlabelled images (label -1): CE on labelled rows, teacher terms on every row
(docs/crckd.md, "Unlabelled images")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crckd.methods.base as base
from crckd.methods import MethodContext, available_methods, get_method, load_config
from crckd.models import build_model

NUM_CLASSES = 3
# Training images 0..5 are labelled, 6..11 are not.
LABELS = np.array([0, 1, 2, 0, 1, 2, -1, -1, -1, -1, -1, -1])
WEIGHTS = np.array([1.0, 2.0, 4.0])


def make_method(name: str, *overrides: str, weighted: bool = True):
    torch.manual_seed(0)
    config = load_config(
        overrides=[
            f"method.name={name}",
            "method.ccd.num_negatives=8",
            "method.ccd.num_positives=3",
            *overrides,
        ]
    )
    weights = torch.tensor(WEIGHTS, dtype=torch.float32) if weighted else None
    context = MethodContext(NUM_CLASSES, LABELS, weights, epochs=40, image_size=16)
    student = build_model("test_efficientnet", NUM_CLASSES, feat_dim=16)
    method = get_method(name).cls(student, config.method, context)
    method.seed(0)
    return method.train()


def make_batch(labels=(0, 1, -1, -1), index=(0, 4, 6, 9)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(len(index), 3, 16, 16, generator=generator),
        "image2": torch.randn(len(index), 3, 16, 16, generator=generator),
        "label": torch.tensor(labels),
        "index": torch.tensor(index),
    }


def ref_cross_entropy(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> float:
    """Weighted CE over the rows with a label, normalised by their weights (numpy)."""
    keep = labels >= 0
    z, y = logits[keep], labels[keep]
    m = z.max(1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    w = np.ones(len(y)) if weights is None else weights[y]
    return float(-(w * log_p[np.arange(len(y)), y]).sum() / w.sum())


# --- cross-entropy --------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [True, False])
def test_cross_entropy_counts_the_labelled_rows_only(weighted: bool) -> None:
    method = make_method("ce", weighted=weighted)
    logits = np.random.default_rng(0).normal(size=(6, NUM_CLASSES)) * 2
    labels = np.array([2, -1, 0, -1, 1, 2])
    z = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    loss = method.cross_entropy(z, torch.tensor(labels))
    expected = ref_cross_entropy(logits, labels, WEIGHTS if weighted else None)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    keep = labels >= 0
    without = method.cross_entropy(z[torch.tensor(keep)], torch.tensor(labels[keep]))
    torch.testing.assert_close(loss, without)
    loss.backward()
    assert (z.grad[~torch.tensor(keep)] == 0).all()
    assert (z.grad[torch.tensor(keep)].abs().sum(1) > 0).all()


def test_cross_entropy_of_a_batch_without_labels_is_zero() -> None:
    method = make_method("ce")
    z = torch.randn(3, NUM_CLASSES, requires_grad=True)
    loss = method.cross_entropy(z, torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert (z.grad == 0).all()


@pytest.mark.parametrize("weighted", [True, False])
def test_cross_entropy_under_ddp_normalises_by_the_global_labelled_weight(
    weighted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks simulated: rank 0's rows are all unlabelled. Each rank's CE is world size x
    its summed CE / the global weight, so their mean (what DDP's averaged gradient follows) is
    the CE of the global batch, and rank 0 adds 0."""
    method = make_method("ce", weighted=weighted)
    rng = np.random.default_rng(3)
    logits = [rng.normal(size=(4, NUM_CLASSES)), rng.normal(size=(4, NUM_CLASSES))]
    labels = [np.full(4, -1), np.array([1, -1, 2, 2])]
    weights = WEIGHTS if weighted else np.ones(NUM_CLASSES)
    local = [weights[y[y >= 0]].sum() for y in labels]  # each rank's labelled weight
    monkeypatch.setattr(base, "world_size", lambda: 2)
    losses = []
    for rank in (0, 1):
        # The all-reduce of the local weight: check it, then give the mean over both ranks.
        def all_reduce_mean(weight: torch.Tensor, rank: int = rank) -> torch.Tensor:
            assert weight.item() == pytest.approx(local[rank])
            return weight * 0 + sum(local) / 2

        monkeypatch.setattr(base, "all_reduce_mean", all_reduce_mean)
        z = torch.tensor(logits[rank], dtype=torch.float32)
        losses.append(method.cross_entropy(z, torch.tensor(labels[rank])).item())
    expected = ref_cross_entropy(np.concatenate(logits), np.concatenate(labels), weights)
    assert losses[0] == 0.0
    assert sum(losses) / 2 == pytest.approx(expected, rel=1e-6)
    # No labelled row on any rank: 0, not 0/0.
    monkeypatch.setattr(base, "all_reduce_mean", lambda weight: weight)
    assert method.cross_entropy(torch.randn(4, NUM_CLASSES), torch.full((4,), -1)).item() == 0


# --- which methods, and their teacher terms -------------------------------------------------


def test_which_methods_learn_from_unlabelled_images() -> None:
    learners = {spec.name for spec in available_methods() if spec.cls.learns_from_unlabeled}
    label_free_terms = {"kd", "dist", "rkd", "pkt", "cc", "sp", "at", "fitnet", "vid"}
    mean_teachers = {"mt", "src_mt", "crckd", "mt+ccd", "mt+crp", "crckd-unsup", "crckd-exact"}
    assert learners == label_free_terms | mean_teachers | {"crd", "crd-relax"}
    assert {spec.name for spec in available_methods()} - learners == {"ce", "dkd"}


@pytest.mark.parametrize(
    ("name", "terms"),
    [("kd", {"kd"}), ("mt", {"kl"}), ("src_mt", {"kl", "src"})],
)
def test_teacher_terms_read_no_label_and_reach_every_image(name: str, terms: set[str]) -> None:
    """The same terms whether two images are unlabelled or labelled, and each term's gradient
    reaches the unlabelled images."""
    values, batches = [], [make_batch((0, 1, -1, -1)), make_batch((0, 1, 2, 0))]
    for batch in batches:
        method = make_method(name)
        batch["image"].requires_grad_(True)
        torch.manual_seed(2)
        values.append(method.training_losses(batch, 30, method.loss_weights(30)))
        assert terms <= set(values[-1])
    for term in terms:
        torch.testing.assert_close(values[0][term], values[1][term], rtol=0, atol=0)
        (grad,) = torch.autograd.grad(values[0][term], batches[0]["image"], retain_graph=True)
        assert (grad[2:].flatten(1).abs().sum(1) > 0).all(), term
