"""Functional CRCKD losses against golden numbers and plain-Python reference loops (§b)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crckd.losses import (
    class_centroids,
    consistency_kl,
    consistency_mse,
    crp_loss,
    nce_loss,
    sigmoid_rampup,
)

TOL = 1e-5
# Golden inputs; expected numbers were computed by hand-written math loops, not by crckd.
S_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T_LOGITS = [[0.5, 1.5, 1.0], [2.0, 0.0, -0.5]]
MEMORY = [[0.3, -0.2, 0.5], [-0.1, 0.4, 0.2], [0.1, 0.6, -0.3], [0.2, 0.2, 0.2]]
MEMORY_LABELS = [0, 2, 0, 2]
G_S = [[0.6, 0.8, 0.0], [0.0, 0.6, -0.8]]
G_T = [[0.8, 0.6, 0.0], [0.6, 0.0, 0.8]]
C_S = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
C_T = [[0.6, 0.8, 0.0], [0.0, 0.8, 0.6], [0.8, 0.0, 0.6]]
NCE_POS = [[0.9, 0.4], [1.5, 0.2]]
NCE_NEG = [[0.05, 0.3, 0.1], [0.2, 0.01, 0.6]]


def t64(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --- plain-Python references ------------------------------------------------------------------


def ref_softmax(v: np.ndarray) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def ref_batch_kl(student: np.ndarray, teacher: np.ndarray) -> float:
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        p_s, p_t = ref_softmax(s), ref_softmax(t)
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(p_s, p_t, strict=True))
    return total / len(student)


def ref_mse(student: np.ndarray, teacher: np.ndarray) -> float:
    total, count = 0.0, 0
    for s, t in zip(student, teacher, strict=True):
        for a, b in zip(ref_softmax(s), ref_softmax(t), strict=True):
            total += (a - b) ** 2
            count += 1
    return total / count


def ref_centroids(memory: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((num_classes, memory.shape[1]))
    for k in range(num_classes):
        rows = [[max(x, 0.0) for x in memory[j]] for j in range(len(labels)) if labels[j] == k]
        if not rows:
            continue
        mean = [sum(r[d] for r in rows) / len(rows) for d in range(memory.shape[1])]
        norm = math.sqrt(sum(x * x for x in mean))
        out[k] = [x / norm for x in mean]
    return out


def ref_crp(gs, gt, cs, ct, tau: float) -> float:
    def rel(g, c):
        return [sum(a * b for a, b in zip(g, ck, strict=True)) / tau for ck in c]

    return ref_batch_kl([rel(g, cs) for g in gs], [rel(g, ct) for g in gt])


def ref_nce(pos, neg, n_data: int, eps: float = 1e-7) -> float:
    c = len(neg[0]) / n_data
    total = 0.0
    for p, q in zip(pos, neg, strict=True):
        total += sum(math.log(h / (h + c + eps)) for h in p) / len(p)
        total += sum(math.log(c / (h + c + eps)) for h in q)
    return -total / len(pos)


# --- consistency ------------------------------------------------------------------------------


def test_consistency_kl_golden() -> None:
    loss = consistency_kl(t64(S_LOGITS), t64(T_LOGITS))
    assert loss.item() == pytest.approx(1.2392198567208041, abs=TOL)


def test_consistency_kl_divides_by_actual_batch_size() -> None:
    """A 3-row batch is the mean of its rows, not their sum / 64 (§f.13)."""
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    rows = [consistency_kl(s[i : i + 1], t[i : i + 1]) for i in range(3)]
    assert consistency_kl(s, t).item() == pytest.approx(sum(rows).item() / 3, abs=TOL)


def test_consistency_mse_golden() -> None:
    loss = consistency_mse(t64(S_LOGITS), t64(T_LOGITS))
    assert loss.item() == pytest.approx(0.23479537706394937, abs=TOL)


def test_consistency_random_against_loops() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 4)) * 2, rng.normal(size=(6, 4)) * 2
    assert consistency_kl(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(
        ref_batch_kl(s, t), abs=TOL
    )
    assert consistency_mse(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(
        ref_mse(s, t), abs=TOL
    )


@pytest.mark.parametrize("loss_fn", [consistency_kl, consistency_mse])
def test_consistency_gradient_reaches_student_only(loss_fn) -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    loss_fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_consistency_zero_when_equal() -> None:
    z = torch.randn(5, 4)
    assert consistency_kl(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_mse(z, z.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("current", "length", "expected"),
    [
        (20, 30, 0.5737534207374327),
        (25, 30, 0.8703247258333906),
        (0, 30, 0.006737946999085467),
        (30, 30, 1.0),
        (45, 30, 1.0),
        (-3, 30, 0.006737946999085467),
        (5, 0, 1.0),
        (5, -1, 1.0),
    ],
)
def test_sigmoid_rampup(current: float, length: float, expected: float) -> None:
    assert sigmoid_rampup(current, length) == pytest.approx(expected, abs=1e-12)


# --- CRP --------------------------------------------------------------------------------------


def test_class_centroids_golden_and_empty_class() -> None:
    cent = class_centroids(t64(MEMORY), torch.tensor(MEMORY_LABELS), 3)
    expected = [
        [0.4558423058385518, 0.6837634587578276, 0.5698028822981898],
        [0.0, 0.0, 0.0],
        [0.2672612419124244, 0.8017837257372732, 0.5345224838248488],
    ]
    torch.testing.assert_close(cent, t64(expected), atol=TOL, rtol=0)


def test_class_centroids_random_against_loops() -> None:
    rng = np.random.default_rng(1)
    memory, labels = rng.normal(size=(40, 6)), rng.integers(0, 5, size=40)
    labels[labels == 3] = 4  # leave class 3 empty
    cent = class_centroids(torch.tensor(memory), torch.tensor(labels), 5)
    np.testing.assert_allclose(cent.numpy(), ref_centroids(memory, labels, 5), atol=TOL)


def test_class_centroids_leave_out_rows_without_a_class() -> None:
    """Golden numbers with numpy: rows labelled -1 (large, to show if they leaked) count in no
    centroid, so the result is the centroids of the labelled rows alone."""
    rng = np.random.default_rng(2)
    memory = rng.normal(size=(12, 4))
    labels = np.array([0, -1, 1, 1, -1, 0, 2, -1, 0, 1, -1, -1])
    memory[labels == -1] += 5.0
    expected = np.zeros((4, 4))  # class 3 has no rows: a zero centroid
    for k in range(3):
        mean = np.maximum(memory[labels == k], 0.0).mean(axis=0)
        expected[k] = mean / np.linalg.norm(mean)
    cent = class_centroids(torch.tensor(memory), torch.tensor(labels), 4)
    np.testing.assert_allclose(cent.numpy(), expected, atol=1e-12)
    known = labels >= 0
    subset = class_centroids(torch.tensor(memory[known]), torch.tensor(labels[known]), 4)
    torch.testing.assert_close(cent, subset)


def test_class_centroids_accepts_memory_requiring_grad() -> None:
    memory = torch.randn(10, 4, requires_grad=True)
    cent = class_centroids(memory, torch.arange(10) % 2, 2)
    assert not cent.requires_grad
    torch.testing.assert_close(cent.norm(dim=1), torch.ones(2))


def test_crp_loss_golden() -> None:
    loss = crp_loss(t64(G_S), t64(G_T), t64(C_S), t64(C_T), temperature=0.5)
    assert loss.item() == pytest.approx(0.746993960017213, abs=TOL)


def test_crp_loss_random_against_loops() -> None:
    rng = np.random.default_rng(2)
    gs, gt = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    cs, ct = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    gs /= np.linalg.norm(gs, axis=1, keepdims=True)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    cs /= np.linalg.norm(cs, axis=1, keepdims=True)
    ct /= np.linalg.norm(ct, axis=1, keepdims=True)
    args = [torch.tensor(a) for a in (gs, gt, cs, ct)]
    assert crp_loss(*args).item() == pytest.approx(ref_crp(gs, gt, cs, ct, 0.07), abs=TOL)


def test_crp_loss_gradient_reaches_student_emb_only() -> None:
    g_s, g_t, c_s, c_t = (torch.randn(4, 6, requires_grad=True) for _ in range(4))
    crp_loss(g_s, g_t, c_s, c_t).backward()
    assert g_t.grad is None and c_s.grad is None and c_t.grad is None
    assert g_s.grad is not None and g_s.grad.abs().sum() > 0


# --- NCE --------------------------------------------------------------------------------------


def test_nce_loss_golden() -> None:
    loss = nce_loss(t64(NCE_POS), t64(NCE_NEG), n_data=10)
    assert loss.item() == pytest.approx(1.8750821597846374, abs=TOL)


def test_nce_loss_random_against_loops() -> None:
    rng = np.random.default_rng(3)
    pos, neg = rng.uniform(0.01, 3.0, size=(4, 5)), rng.uniform(0.0, 1.0, size=(4, 30))
    loss = nce_loss(torch.tensor(pos), torch.tensor(neg), n_data=200)
    assert loss.item() == pytest.approx(ref_nce(pos, neg, 200), abs=TOL)


def test_nce_loss_with_one_positive_is_crd_loss() -> None:
    """CRD: -(Σ_i log D1_i + Σ_ik log D0_ik)/B with D1 = h/(h + mPn + ε), D0 = mPn/(h + mPn + ε)."""
    torch.manual_seed(0)
    x = torch.rand(8, 1 + 64, dtype=torch.float64) * 2
    n_data, eps = 500, 1e-7
    m_pn = 64 / n_data
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m_pn + eps))
    log_d0 = torch.log(m_pn / (x[:, 1:] + m_pn + eps))
    crd = -(log_d1.sum() + log_d0.sum()) / x.shape[0]
    assert nce_loss(x[:, :1], x[:, 1:], n_data).item() == pytest.approx(crd.item(), abs=TOL)


def test_nce_loss_averages_positives_and_sums_negatives() -> None:
    torch.manual_seed(1)
    pos = torch.rand(3, 4, dtype=torch.float64) + 0.1
    neg = torch.rand(3, 16, dtype=torch.float64)
    n_data = 100
    base = nce_loss(pos, neg, n_data)
    noise = neg.shape[1] / n_data
    neg_term = -torch.log(noise / (neg + noise + 1e-7)).sum(dim=1).mean()
    # Duplicated positive columns: the average is unchanged.
    assert nce_loss(torch.cat([pos, pos], 1), neg, n_data).item() == pytest.approx(base.item())
    # Duplicated negatives (with N doubled so that the noise mass K/N is unchanged): the
    # negative term doubles.
    doubled = nce_loss(pos, torch.cat([neg, neg], 1), 2 * n_data)
    assert (doubled - base).item() == pytest.approx(neg_term.item(), abs=TOL)
