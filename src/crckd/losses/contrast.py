"""CCD machinery: the two memory banks, the projection heads and the loss assembly (§b CCD).

The memory banks and the NCE normalisers Z_S, Z_T are registered buffers, so a checkpoint of the
module restores them (the reference does not save them, §f.5).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crckd.dist import all_gather_cat, all_reduce_mean
from crckd.losses.crckd import nce_loss
from crckd.transfer import to_device

_Z_UNSET = -1.0


class ContrastMemory(nn.Module):
    """Student bank M^S and teacher bank M^T (N x D each) with frozen NCE constants (§b CCD).

    Rows start uniform in [-a, a], a = 1/sqrt(D/3), and are *not* normalised (as in the
    reference); the initial draw uses torch's global RNG, so the caller seeds it. Z_S and Z_T hold
    -1 until the first call to :meth:`scores` sets them. Only that first call (after construction
    or loading) reads Z back to the host; later steps never wait for the device.
    """

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor

    def __init__(
        self, dim: int, n_data: int, temperature: float = 0.07, momentum: float = 0.5
    ) -> None:
        super().__init__()
        self.n_data = n_data
        self.temperature = temperature
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim) * (2 * bound) - bound)
        self.register_buffer("memory_t", torch.rand(n_data, dim) * (2 * bound) - bound)
        self.register_buffer("z_s", torch.tensor(_Z_UNSET))
        self.register_buffer("z_t", torch.tensor(_Z_UNSET))
        self._z_known = False  # whether z_s and z_t have been checked since they were last set
        self.register_load_state_dict_post_hook(_forget_z)

    def scores(
        self, student_emb: Tensor, teacher_emb: Tensor, contrast_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Normalised scores (h_s, h_t), each [B, P+K], against the *other* network's bank.

        h_s[i, j] = exp(g_s,i · M^T[idx_ij] / τ) / Z_S and h_t[i, j] = exp(g_t,i · M^S[idx_ij] / τ)
        / Z_T. On the first call Z = N · mean(exp(·/τ)) over this batch's scores is stored and
        then kept fixed (as in CRD). Bank rows are constants: gradient flows into the embeddings.
        Computed in (at least) float32 with autocast off: exp(1/τ) ≈ 1.6e6 overflows float16.
        """
        with _without_autocast(student_emb.device.type):
            e_s = _exp_scores(student_emb, self.memory_t, contrast_idx, self.temperature)
            e_t = _exp_scores(teacher_emb, self.memory_s, contrast_idx, self.temperature)
            if not self._z_known:
                self._set_unset_z(e_s, e_t)
            return e_s / self.z_s, e_t / self.z_t

    def _set_unset_z(self, e_s: Tensor, e_t: Tensor) -> None:
        """Set Z_S and Z_T from these scores where they are unset (the mean over the global
        batch, the same on every rank); a loaded Z is kept."""
        for z, exp_scores in ((self.z_s, e_s), (self.z_t, e_t)):
            if z.item() < 0:
                z.copy_(all_reduce_mean(exp_scores.detach().mean()) * self.n_data)
        self._z_known = True

    @torch.no_grad()
    def update(self, student_emb: Tensor, teacher_emb: Tensor, index: Tensor) -> None:
        """Momentum update M[i] <- normalize(m·M[i] + (1-m)·g_i) of both banks at ``index`` (§b).

        ``index`` holds the batch's training-set positions (on any device); other rows are left
        untouched.
        """
        # Under DDP every rank applies the whole global batch, so the banks stay identical.
        index = all_gather_cat(to_device(index, self.memory_s.device))
        _momentum_update(self.memory_s, all_gather_cat(student_emb), index, self.momentum)
        _momentum_update(self.memory_t, all_gather_cat(teacher_emb), index, self.momentum)


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off, on device types that have it (not on "meta", for instance)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _forget_z(module: ContrastMemory, incompatible_keys: object) -> None:
    """After loading a state dict, Z must be read again: it may be set or unset."""
    module._z_known = False


def _exp_scores(anchor: Tensor, bank: Tensor, idx: Tensor, temperature: float) -> Tensor:
    """exp(anchor_i · bank[idx_ij] / τ), [B, P+K], with the bank detached.

    When the bank is no bigger than the B·(P+K) rows a gather would copy, scoring every bank row
    with one matmul and then picking columns is cheaper than materialising [B, P+K, D].
    """
    dtype = torch.promote_types(bank.dtype, torch.float32)
    anchor = anchor.to(dtype)
    bank = bank.detach().to(dtype)
    idx = to_device(idx, bank.device).long()
    if bank.shape[0] <= idx.numel():
        # A copy of the bank, since autograd keeps it and `update` later writes the bank in place.
        dots = torch.gather(anchor @ bank.clone().T, 1, idx)
    else:
        dots = torch.einsum("bkd,bd->bk", bank[idx], anchor)
    return torch.exp(dots / temperature)


def _momentum_update(bank: Tensor, emb: Tensor, index: Tensor, momentum: float) -> None:
    index = to_device(index, bank.device).long()
    mixed = bank[index] * momentum + emb.detach().to(bank.dtype) * (1 - momentum)
    bank.index_copy_(0, index, F.normalize(mixed, dim=1))


def ccd_loss(h_s: Tensor, h_t: Tensor, num_positives: int, n_data: int) -> tuple[Tensor, Tensor]:
    """(L_CCD^S, L_CCD^T): NCE over the first P columns as positives, the rest as negatives (§b).

    The caller sums (and weights) the two terms; they are returned apart for logging.
    """
    return _split_nce(h_s, num_positives, n_data), _split_nce(h_t, num_positives, n_data)


def _split_nce(h: Tensor, num_positives: int, n_data: int) -> Tensor:
    return nce_loss(h[:, :num_positives], h[:, num_positives:], n_data)


class ProjectionHead(nn.Module):
    """CCD "Embed": Linear(in_dim -> out_dim) followed by L2 normalisation of each row (§b, §c)."""

    def __init__(self, in_dim: int = 128, out_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)
