"""ContrastMemory, ccd_loss and ProjectionHead (§b CCD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crckd.losses import ContrastMemory, ProjectionHead, ccd_loss, nce_loss

TOL = 1e-5
# Golden inputs; expected numbers were computed by hand-written math loops, not by crckd.
H_S = [[2.0, 0.1, 0.3, 0.05], [0.7, 0.5, 0.02, 0.2]]
H_T = [[1.2, 0.4, 0.1, 0.3], [0.3, 0.05, 0.9, 0.15]]


def unit_rows(n: int, d: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d), dim=1)


def ref_exp_scores(anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, tau: float):
    """exp(anchor_i · bank[idx_ij] / τ) by explicit loops, in float64 numpy."""
    a, m, ix = anchor.double().numpy(), bank.double().numpy(), idx.numpy()
    out = np.zeros(ix.shape)
    for i in range(ix.shape[0]):
        for j in range(ix.shape[1]):
            out[i, j] = math.exp(sum(a[i, d] * m[ix[i, j], d] for d in range(a.shape[1])) / tau)
    return out


def test_init_range_and_unset_z() -> None:
    torch.manual_seed(0)
    mem = ContrastMemory(dim=128, n_data=300)
    bound = 1 / math.sqrt(128 / 3)
    for bank in (mem.memory_s, mem.memory_t):
        assert bank.shape == (300, 128)
        assert bank.abs().max() <= bound
        assert bank.abs().max() > 0.95 * bound  # the full range is used
        assert not torch.allclose(bank.norm(dim=1), torch.ones(300))  # not normalised
    assert not torch.equal(mem.memory_s, mem.memory_t)
    assert mem.z_s.item() == -1 and mem.z_t.item() == -1


def test_init_uses_global_rng() -> None:
    torch.manual_seed(5)
    a = ContrastMemory(dim=8, n_data=20)
    torch.manual_seed(5)
    b = ContrastMemory(dim=8, n_data=20)
    torch.testing.assert_close(a.memory_s, b.memory_s)
    torch.testing.assert_close(a.memory_t, b.memory_t)


@pytest.mark.parametrize("batch", [2, 8])  # 2*10 < 50 rows: gather path; 8*10 >= 50: dense path
def test_scores_against_loops_use_other_bank_and_first_batch_z(batch: int) -> None:
    torch.manual_seed(1)
    n_data, tau = 50, 0.07
    mem = ContrastMemory(dim=6, n_data=n_data, temperature=tau)
    g_s, g_t = unit_rows(batch, 6), unit_rows(batch, 6)
    idx = torch.randint(n_data, (batch, 10))
    h_s, h_t = mem.scores(g_s, g_t, idx)

    e_s = ref_exp_scores(g_s, mem.memory_t, idx, tau)  # student anchor vs TEACHER bank
    e_t = ref_exp_scores(g_t, mem.memory_s, idx, tau)  # teacher anchor vs STUDENT bank
    z_s, z_t = n_data * e_s.mean(), n_data * e_t.mean()
    assert mem.z_s.item() == pytest.approx(z_s, rel=TOL)
    assert mem.z_t.item() == pytest.approx(z_t, rel=TOL)
    np.testing.assert_allclose(h_s.numpy(), e_s / z_s, rtol=TOL)
    np.testing.assert_allclose(h_t.numpy(), e_t / z_t, rtol=TOL)

    # A later batch reuses the first batch's Z.
    g_s2, g_t2 = unit_rows(batch, 6), unit_rows(batch, 6)
    h_s2, h_t2 = mem.scores(g_s2, g_t2, idx)
    assert mem.z_s.item() == pytest.approx(z_s, rel=TOL)
    assert mem.z_t.item() == pytest.approx(z_t, rel=TOL)
    np.testing.assert_allclose(
        h_s2.numpy(), ref_exp_scores(g_s2, mem.memory_t, idx, tau) / z_s, rtol=TOL
    )
    np.testing.assert_allclose(
        h_t2.numpy(), ref_exp_scores(g_t2, mem.memory_s, idx, tau) / z_t, rtol=TOL
    )


def test_loading_a_state_dict_makes_z_be_read_again() -> None:
    """Z is read back from the device only on the first call after construction or loading: a
    loaded unset Z must be set from the next batch, a loaded set Z must be kept."""
    torch.manual_seed(4)
    n_data, tau = 40, 0.07
    mem = ContrastMemory(dim=6, n_data=n_data, temperature=tau)
    unset = ContrastMemory(dim=6, n_data=n_data, temperature=tau).state_dict()
    idx = torch.randint(n_data, (4, 10))
    mem.scores(unit_rows(4, 6), unit_rows(4, 6), idx)
    first_z = mem.z_s.clone()

    mem.load_state_dict(unset)
    g_s, g_t = unit_rows(4, 6), unit_rows(4, 6)
    mem.scores(g_s, g_t, idx)
    expected = n_data * ref_exp_scores(g_s, mem.memory_t, idx, tau).mean()
    assert mem.z_s.item() == pytest.approx(expected, rel=TOL)

    loaded = {**unset, "z_s": first_z, "z_t": first_z}
    mem.load_state_dict(loaded)
    mem.scores(unit_rows(4, 6), unit_rows(4, 6), idx)
    assert mem.z_s.item() == pytest.approx(first_z.item(), rel=TOL)


def test_scores_gradient_reaches_embeddings_only() -> None:
    torch.manual_seed(2)
    mem = ContrastMemory(dim=4, n_data=30)
    before = (mem.memory_s.clone(), mem.memory_t.clone())
    g_s = unit_rows(3, 4).requires_grad_()
    g_t = unit_rows(3, 4).requires_grad_()
    h_s, h_t = mem.scores(g_s, g_t, torch.randint(30, (3, 5)))
    (h_s.sum() + h_t.sum()).backward()
    assert g_s.grad is not None and g_s.grad.abs().sum() > 0
    assert g_t.grad is not None and g_t.grad.abs().sum() > 0
    assert not mem.memory_s.requires_grad and not mem.memory_t.requires_grad
    torch.testing.assert_close(mem.memory_s, before[0])
    torch.testing.assert_close(mem.memory_t, before[1])


def test_scores_under_autocast_stay_float32() -> None:
    torch.manual_seed(3)
    mem = ContrastMemory(dim=8, n_data=40)
    g = unit_rows(4, 8)
    idx = torch.randint(40, (4, 6))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        h_s, h_t = mem.scores(g.bfloat16(), g.bfloat16(), idx)
    assert h_s.dtype == torch.float32 and h_t.dtype == torch.float32
    assert torch.isfinite(h_s).all() and torch.isfinite(h_t).all()


def test_update_formula_other_rows_untouched_unit_norm() -> None:
    torch.manual_seed(4)
    mem = ContrastMemory(dim=5, n_data=12, momentum=0.3)
    old_s, old_t = mem.memory_s.clone(), mem.memory_t.clone()
    g_s, g_t = unit_rows(3, 5), unit_rows(3, 5)
    index = torch.tensor([7, 0, 11])
    mem.update(g_s, g_t, index)
    for bank, old, g in ((mem.memory_s, old_s, g_s), (mem.memory_t, old_t, g_t)):
        for row, i in enumerate(index.tolist()):
            mixed = [0.3 * old[i, d].item() + 0.7 * g[row, d].item() for d in range(5)]
            norm = math.sqrt(sum(x * x for x in mixed))
            np.testing.assert_allclose(bank[i].numpy(), [x / norm for x in mixed], atol=1e-6)
        torch.testing.assert_close(bank[index].norm(dim=1), torch.ones(3))
        rest = torch.ones(12, dtype=torch.bool)
        rest[index] = False
        assert torch.equal(bank[rest], old[rest])


def test_update_does_not_track_gradient() -> None:
    mem = ContrastMemory(dim=4, n_data=6)
    g = unit_rows(2, 4).requires_grad_()
    mem.update(g, g, torch.tensor([1, 2]))
    assert not mem.memory_s.requires_grad and mem.memory_s.grad_fn is None


def test_state_dict_round_trip() -> None:
    torch.manual_seed(6)
    mem = ContrastMemory(dim=4, n_data=20)
    mem.scores(unit_rows(3, 4), unit_rows(3, 4), torch.randint(20, (3, 5)))
    mem.update(unit_rows(3, 4), unit_rows(3, 4), torch.tensor([0, 5, 9]))
    state = mem.state_dict()
    assert set(state) == {"memory_s", "memory_t", "z_s", "z_t"}

    torch.manual_seed(99)
    restored = ContrastMemory(dim=4, n_data=20)
    restored.load_state_dict(state)
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(restored, name), getattr(mem, name))
    assert restored.z_s.item() > 0  # a restored Z is not recomputed on the next call
    z_before = restored.z_s.clone()
    restored.scores(unit_rows(3, 4), unit_rows(3, 4), torch.randint(20, (3, 5)))
    assert torch.equal(restored.z_s, z_before)


def test_ccd_loss_golden() -> None:
    h_s = torch.tensor(H_S, dtype=torch.float64)
    h_t = torch.tensor(H_T, dtype=torch.float64)
    loss_s, loss_t = ccd_loss(h_s, h_t, num_positives=1, n_data=8)
    assert loss_s.item() == pytest.approx(1.4384436664852611, abs=TOL)
    assert loss_t.item() == pytest.approx(2.159194196397551, abs=TOL)
    loss_s, loss_t = ccd_loss(h_s, h_t, num_positives=2, n_data=8)
    assert loss_s.item() == pytest.approx(1.338112198111773, abs=TOL)
    assert loss_t.item() == pytest.approx(2.3286566236530075, abs=TOL)


def test_ccd_loss_splits_positives_then_negatives() -> None:
    torch.manual_seed(7)
    h_s, h_t = torch.rand(4, 25) + 0.01, torch.rand(4, 25) + 0.01
    loss_s, loss_t = ccd_loss(h_s, h_t, num_positives=5, n_data=100)
    torch.testing.assert_close(loss_s, nce_loss(h_s[:, :5], h_s[:, 5:], 100))
    torch.testing.assert_close(loss_t, nce_loss(h_t[:, :5], h_t[:, 5:], 100))


def test_memory_and_ccd_end_to_end_gradient_paths() -> None:
    """L_CCD^S reaches the student head, L_CCD^T only the teacher head (§b gradient paths)."""
    torch.manual_seed(8)
    head_s, head_t = ProjectionHead(16, 8), ProjectionHead(16, 8)
    mem = ContrastMemory(dim=8, n_data=40)
    f_s, f_t = torch.randn(4, 16), torch.randn(4, 16)
    g_s, g_t = head_s(f_s), head_t(f_t)
    h_s, h_t = mem.scores(g_s, g_t, torch.randint(40, (4, 3 + 10)))
    loss_s, loss_t = ccd_loss(h_s, h_t, num_positives=3, n_data=40)
    loss_s.backward()
    assert head_s.linear.weight.grad is not None and head_t.linear.weight.grad is None
    student_grad = head_s.linear.weight.grad.clone()
    loss_t.backward()
    assert head_t.linear.weight.grad is not None
    assert torch.equal(head_s.linear.weight.grad, student_grad)  # L_CCD^T left it alone


def test_projection_head_unit_norm() -> None:
    torch.manual_seed(9)
    head = ProjectionHead()
    x = torch.randn(5, 128)
    out = head(x)
    assert out.shape == (5, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    y = head.linear(x)
    torch.testing.assert_close(out, y / y.norm(dim=1, keepdim=True))
