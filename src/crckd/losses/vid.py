"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer" (VID)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crckd.losses._common import check_pair, match_spatial


class VIDLoss(nn.Module):
    """−log q(t | s) under a Gaussian q = N(μ(s), diag σ²) with per-channel variance (VID).

    μ is a regressor of three 1×1 convolutions (in → mid → mid → out, ReLU between);
    σ²_c = softplus(α_c) + ε with α initialised so that σ²_c = ``init_pred_var``. The loss is

        L_VID = mean over b, c, h, w of ½ (log σ²_c + (t_bchw − μ_bchw)² / σ²_c),

    i.e. the negative log-likelihood per element without its constant ½ log 2π. The mean over
    elements (the paper sums) is the usual scaling of VID baselines. If the spatial sizes differ,
    the larger of the student input and the teacher map is average-pooled to the smaller one.
    The teacher map is detached; the gradient reaches the student map, μ and α.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if init_pred_var <= eps:
            raise ValueError(f"init_pred_var must exceed eps={eps}, got {init_pred_var}")
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1),
        )
        # softplus⁻¹(v) = log(exp(v) − 1)
        alpha = math.log(math.expm1(init_pred_var - eps))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha))
        self.eps = eps

    def variance(self) -> Tensor:
        """σ²_c = softplus(α_c) + ε, shape [C]."""
        return F.softplus(self.alpha) + self.eps

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        student_feat, teacher_feat = match_spatial(student_feat, teacher_feat.detach())
        mean = self.regressor(student_feat)
        check_pair(mean, teacher_feat)
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * (var.log() + (teacher_feat - mean).pow(2) / var)).mean()
