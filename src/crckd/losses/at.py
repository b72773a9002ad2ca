"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (AT)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from crckd.losses._common import check_pair, match_spatial


def _energy(feat: Tensor, p: float) -> Tensor:
    """mean_c |F_c|^p, kept as a [B, 1, H, W] map."""
    return feat.abs().pow(p).mean(dim=1, keepdim=True)


def _normalised(energy: Tensor) -> Tensor:
    return F.normalize(energy.flatten(1), dim=1)


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """Spatial attention a = Q / ‖Q‖₂, Q = vec(mean_c |F_c|^p), shape [B, H·W] (AT).

    The paper sums over channels; the mean differs by the factor 1/C, which the L2
    normalisation removes.
    """
    return _normalised(_energy(feat, p))


def at_loss(
    student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2
) -> Tensor:
    """L_AT = (1/L) Σ_l mean_{b, j} (a_s,l[b, j] − a_t,l[b, j])² over L layer pairs.

    Per layer this is the authors' code (also RepDistiller's and torchdistill's ``mode='code'``):
    the squared difference of the normalised maps averaged over the batch and the H·W positions.
    The paper writes β/2 Σ_l ‖a_s,l − a_t,l‖₂ (norm not squared) with β = 10³/(H·W·B). Layers
    are averaged here, not summed as in those codes: a weight β tuned for their sum is L·β here.
    When spatial sizes differ, the larger energy map mean_c |F_c|^p is average-pooled to the
    smaller size before normalisation. Channel counts may differ; teacher maps are detached.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"need the same non-zero number of student and teacher maps, "
            f"got {len(student_feats)} and {len(teacher_feats)}"
        )
    per_layer = []
    for s, t in zip(student_feats, teacher_feats, strict=True):
        check_pair(s, t, batch_only=True)
        e_s, e_t = match_spatial(_energy(s, p), _energy(t.detach(), p))
        per_layer.append((_normalised(e_s) - _normalised(e_t)).pow(2).mean())
    return torch.stack(per_layer).mean()
