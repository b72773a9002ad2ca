"""Methods with unlabelled images (label -1): CE on labelled rows, teacher terms on every row,
CRCKD's bank labels and pseudo-labels (docs/crckd.md, "Unlabelled images")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crckd.methods.base as base
import crckd.methods.crckd as crckd_method
from crckd.methods import MethodContext, available_methods, get_method, load_config
from crckd.models import build_model
from crckd.transfer import HostCopy
from test_host_sync import BlockingCopies, one_step

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
    [("kd", {"kd"}), ("mt", {"kl"}), ("src_mt", {"kl", "src"}), ("crckd", {"kl", "ccd", "crp"})],
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


# --- CRCKD: bank labels and pseudo-labels ---------------------------------------------------


def teacher_logits(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


def test_pseudo_labels_follow_the_confident_teacher_and_can_be_revoked() -> None:
    method = make_method("crckd", "method.semi.threshold=0.9")
    index = torch.tensor([0, 6, 7, 8])  # image 0 is labelled (class 0)
    method.pseudo_label(
        teacher_logits([[0.02, 0.02, 0.96], [0.03, 0.95, 0.02], [0.85, 0.1, 0.05], [0, 0, 1]]),
        index,
    )
    expected = LABELS.copy()
    expected[[6, 8]] = [1, 2]  # 7 is below the threshold; 0 keeps its label
    assert method.bank_labels.tolist() == expected.tolist()
    # The sampler gets them before its next draw (a step later), where the contrast sets of
    # image 6 become class-guided: positives of class 1, labelled or pseudo-labelled.
    assert method.sampler.labels.tolist() == LABELS.tolist()
    assert (method.contrast_indices(torch.tensor([6]))[0, :3] == 6).all()
    method._receive_pseudo_labels()
    assert method.sampler.labels.tolist() == expected.tolist()
    positives = set()
    for _ in range(10):
        positives.update(method.contrast_indices(torch.tensor([6]))[0, :3].tolist())
    assert positives == {1, 4, 6}
    # A teacher no longer confident revokes the pseudo-label.
    method.pseudo_label(teacher_logits([[0.3, 0.4, 0.3]]), torch.tensor([6]))
    expected[6] = -1
    assert method.bank_labels.tolist() == expected.tolist()


def test_pseudo_labels_of_every_rank_reach_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP the (index, label) rows of all ranks are gathered: a second rank's rows
    (image 9 confidently class 2, labelled image 3 predicted 1) are applied here too."""
    other_rank = torch.tensor([[9, 2], [3, 1]])
    monkeypatch.setattr(crckd_method, "all_gather_cat", lambda rows: torch.cat([rows, other_rank]))
    method = make_method("crckd")
    method.pseudo_label(
        teacher_logits([[0.5, 0.25, 0.25], [0.01, 0.01, 0.98]]), torch.tensor([7, 8])
    )
    expected = LABELS.copy()
    expected[[8, 9]] = [2, 2]
    assert method.bank_labels.tolist() == expected.tolist()
    method._receive_pseudo_labels()
    assert method.sampler.labels.tolist() == expected.tolist()


@pytest.mark.parametrize("pseudo_labels", [True, False])
def test_a_training_step_pseudo_labels_only_when_asked(pseudo_labels: bool) -> None:
    method = make_method("crckd", f"method.semi.pseudo_labels={str(pseudo_labels).lower()}")
    with torch.no_grad():  # a teacher sure of class 2 for every image
        method.teacher.classifier.weight.zero_()
        method.teacher.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    batch = make_batch()
    method.training_losses(batch, 30, method.loss_weights(30))
    expected = LABELS.copy()
    if pseudo_labels:
        expected[[6, 9]] = 2  # the batch's unlabelled images; labelled image 4 stays class 1
    assert method.bank_labels.tolist() == expected.tolist()


def test_crp_centroids_count_a_row_once_it_has_a_class() -> None:
    """Moving the bank rows of unlabelled image 6 changes no centroid, until the teacher gives
    it a class: then each bank's row moves its own centroids."""
    method = make_method("crckd")
    generator = torch.Generator().manual_seed(4)
    emb_s, emb_t = (F.normalize(torch.randn(4, 128, generator=generator), dim=1) for _ in "st")
    losses = [method.relation_loss(emb_s, emb_t)]
    with torch.no_grad():
        method.memory.memory_s[6] = 1.0
        method.memory.memory_t[6] = 1.0
    torch.testing.assert_close(method.relation_loss(emb_s, emb_t), losses[0], rtol=0, atol=0)
    method.pseudo_label(teacher_logits([[0.01, 0.98, 0.01]]), torch.tensor([6]))
    losses.append(method.relation_loss(emb_s, emb_t))
    for bank in (method.memory.memory_s, method.memory.memory_t):
        with torch.no_grad():
            bank[6] = -0.5
        losses.append(method.relation_loss(emb_s, emb_t))
    assert losses[1] != losses[0] and losses[2] != losses[1] and losses[3] != losses[2]


def test_bank_labels_are_checkpointed_and_the_sampler_follows_them() -> None:
    trained = make_method("crckd")
    trained.pseudo_label(teacher_logits([[0.98, 0.01, 0.01]]), torch.tensor([10]))
    state = trained.state_dict()
    resumed = make_method("crckd")
    resumed.load_state_dict(state)
    assert resumed.bank_labels.tolist() == trained.bank_labels.tolist()
    trained._receive_pseudo_labels()  # the uninterrupted run's next draw
    assert torch.equal(resumed.sampler.labels, trained.sampler.labels)
    index = torch.tensor([10, 2, 7])
    resumed.seed(5)
    trained.seed(5)
    assert torch.equal(resumed.contrast_indices(index), trained.contrast_indices(index))
    # A checkpoint from before pseudo-labels: its bank rows have the training labels.
    older = make_method("crckd")
    older.load_state_dict({k: v for k, v in state.items() if k != "bank_labels"})
    assert older.bank_labels.tolist() == older.sampler.labels.tolist() == LABELS.tolist()


class _RecordedCopy:
    """A HostCopy stand-in on the meta device, where nothing can be copied out."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@pytest.mark.parametrize("name", ["crckd", "kd"])
def test_a_step_with_unlabelled_images_never_reads_the_device(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As tests/test_host_sync.py, with unlabelled images: CE, bank labels and centroids queue
    without reading back. The pseudo-labels' copy to the host is a `HostCopy` (read a step
    later), recorded here instead."""
    method = make_method(name)
    batch = make_batch()
    one_step(method, batch, 0)  # on the CPU: the first step reads CCD's Z once
    monkeypatch.setattr(crckd_method, "HostCopy", _RecordedCopy)
    method.to("meta")
    meta_batch = {key: value.to("meta") for key, value in batch.items() if key != "index"}
    with BlockingCopies() as copies:
        terms = one_step(method, {**meta_batch, "index": batch["index"]}, 1)
    assert copies.found == []
    assert all(value.device.type == "meta" for value in terms.values())
    if name == "crckd":
        assert method._pending.tensor.shape == (2, 4)


def test_host_copy_gives_the_tensor_back() -> None:
    tensor = torch.tensor([[3, 4], [1, -1]])
    assert torch.equal(HostCopy(tensor).get(), tensor)


# --- CCD directions ---------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_side", [True, False])
def test_ccd_teacher_side_decides_whether_the_teacher_head_learns(teacher_side: bool) -> None:
    """L_CCD^(T) is the only term that reaches the teacher's projection head."""
    method = make_method(
        "crckd", "method.crp.weight=0", "method.consistency.weight=0",
        f"method.ccd.teacher_side={str(teacher_side).lower()}",
    )  # fmt: skip
    batch = make_batch(labels=(0, 1, 2, 0), index=(0, 1, 2, 3))
    weights = {**method.loss_weights(0), "ccd": 1.0}
    method.training_losses(batch, 0, weights)  # first call sets the NCE constants Z
    terms = method.training_losses(batch, 0, weights)
    terms["ccd"].backward()
    grads = [p.grad for p in method.embed_teacher.parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reached == teacher_side
    assert all(p.grad.abs().sum() > 0 for p in method.embed_student.parameters())
