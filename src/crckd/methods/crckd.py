"""CRCKD: mean teacher + class-guided contrastive distillation (CCD) + categorical relation
preserving (CRP). Xing et al., MICCAI 2021; see docs/crckd.md for every departure from the
reference code, and its "Unlabelled images" for what CCD and CRP do with an image without a
label (a class from the teacher when it is confident, else an instance contrast).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crckd.config import MethodConfig, deep_merge
from crckd.data import ContrastSampler
from crckd.data.sampling import NO_CLASS
from crckd.dist import all_gather_cat, rank, world_size
from crckd.errors import ConfigError
from crckd.losses import ContrastMemory, ProjectionHead, ccd_loss, class_centroids, crp_loss
from crckd.methods.base import MethodContext
from crckd.methods.mean_teacher import MeanTeacher
from crckd.methods.registry import register_method
from crckd.models import Classifier, ClassifierOutput
from crckd.transfer import HostCopy, to_device

_REFERENCE = "Xing et al., MICCAI 2021 (arXiv 2107.03225)"
# CRD is CCD with one positive, negatives from any class, both directions, no MT and no CRP.
_CRD = {
    "consistency": {"weight": 0.0},
    "crp": {"weight": 0.0},
    "ccd": {"weight": 0.8, "positives": "exact", "negatives": "unsup", "num_negatives": 16384},
}


@register_method(
    "crckd",
    summary="mean teacher + CCD (multi-positive, class-guided negatives) + CRP",
    reference=_REFERENCE,
)
@register_method(
    "mt+ccd",
    summary="ablation: mean teacher + CCD, no CRP",
    reference=_REFERENCE,
    defaults={"crp": {"weight": 0.0}},
)
@register_method(
    "mt+crp",
    summary="ablation: mean teacher + CRP, no CCD (banks still updated)",
    reference=_REFERENCE,
    defaults={"ccd": {"weight": 0.0}},
)
@register_method(
    "crckd-unsup",
    summary="CCD mode 'unsup': negatives from any other sample, as in CRD",
    reference=_REFERENCE,
    defaults={"ccd": {"negatives": "unsup"}},
)
@register_method(
    "crckd-exact",
    summary="CCD mode 'exact': one positive, the anchor itself (P = 1)",
    reference=_REFERENCE,
    defaults={"ccd": {"positives": "exact"}},
)
@register_method(
    "crd",
    summary="CRD: contrastive representation distillation, 'exact' positive, any negatives",
    reference="Tian, Krishnan & Isola, ICLR 2020",
    defaults=_CRD,
)
@register_method(
    "crd-relax",
    summary="CRD with the 'relax' positive: a random image of the anchor's class",
    reference="Tian, Krishnan & Isola, ICLR 2020",
    defaults=deep_merge(_CRD, {"ccd": {"positives": "relax"}}),
)
class CRCKD(MeanTeacher):
    """Student, EMA teacher, two projection heads and two memory banks of N x D.

    `bank_labels` holds each bank row's class for CCD's contrast sets and CRP's centroids: the
    label of a labelled image; for an unlabelled one (-1 in `train_labels`) the teacher's class
    when `method.semi.pseudo_labels` is on and the teacher is confident, else -1 (no class).
    """

    train_labels: Tensor
    bank_labels: Tensor

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)
        ccd = config.ccd
        self.embed_student = ProjectionHead(student.bottleneck.out_features, ccd.embed_dim)
        self.embed_teacher = ProjectionHead(self.teacher.bottleneck.out_features, ccd.embed_dim)
        n_data = len(context.train_labels)
        self.memory = ContrastMemory(ccd.embed_dim, n_data, ccd.temperature, ccd.momentum)
        try:
            self.sampler = ContrastSampler(
                context.train_labels,
                num_positives=ccd.num_positives,
                num_negatives=ccd.num_negatives,
                negatives=ccd.negatives,
                positives=ccd.positives,
            )
        except ValueError as exc:
            raise ConfigError(f"method.ccd: {exc}") from None
        labels = torch.as_tensor(context.train_labels).long()
        self.register_buffer("train_labels", labels)
        self.register_buffer("bank_labels", labels.clone())
        unlabelled = bool((np.asarray(context.train_labels) < 0).any())
        uses_classes = ccd.negatives == "sup" or ccd.positives != "exact" or config.crp.weight > 0
        self.pseudo_labelling = config.semi.pseudo_labels and unlabelled and uses_classes
        # The last step's pseudo-labels on their way to the host, for the sampler's next draw.
        self._pending: HostCopy | None = None
        self.register_load_state_dict_post_hook(_resync_sampler)

    @classmethod
    def schedule_fields(cls, config: MethodConfig) -> tuple[str, ...]:
        """The EMA, and the start (and ramp) of each term whose weight is not 0."""
        unused = set()
        if config.consistency.weight == 0:
            unused.add("consistency_rampup")
            if config.ccd.late_weight is None:  # else its begin still switches the CCD weight
                unused.add("consistency_begin")
        used = [field for field in super().schedule_fields(config) if field not in unused]
        terms = (("ccd_begin", config.ccd.weight), ("crp_begin", config.crp.weight))
        return (*used, *(field for field, weight in terms if weight > 0))

    def needs_teacher(self, weights: dict[str, float]) -> bool:
        return True  # the teacher bank is updated every step, whatever the weights

    def teacher_terms(
        self,
        student: ClassifierOutput,
        teacher: ClassifierOutput,
        batch: dict[str, Tensor],
        weights: dict[str, float],
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(student, teacher, batch, weights)
        emb_s = self.embed_student(student.features)
        emb_t = self.embed_teacher(teacher.features)
        index = batch["index"]
        self._receive_pseudo_labels()
        if weights["ccd"] > 0:
            contrast = self.contrast_indices(index)
            h_s, h_t = self.memory.scores(emb_s, emb_t, contrast)
            ccd_s, ccd_t = ccd_loss(h_s, h_t, self.sampler.num_positives, self.memory.n_data)
            # L_CCD^(T) trains the teacher's projection head only (whose rows fill M^T).
            terms["ccd"] = ccd_s + ccd_t if self.config.ccd.teacher_side else ccd_s
        self.memory.update(emb_s.detach(), emb_t.detach(), index)
        if self.pseudo_labelling:
            self.pseudo_label(teacher.logits, index)
        if weights["crp"] > 0:
            terms["crp"] = self.relation_loss(emb_s, emb_t)
        return terms

    @torch.no_grad()
    def pseudo_label(self, teacher_logits: Tensor, index: Tensor) -> None:
        """Relabel the unlabelled rows of the global batch in `bank_labels`: the teacher's class
        where its probability reaches `method.semi.threshold`, else none (-1), so a pseudo-label
        the teacher no longer backs is revoked. Labelled rows keep their labels.

        Like the bank rows, the labels change after this step's contrast sets were drawn and
        before CRP's centroids. Under DDP every rank applies the whole global batch, so the
        labels stay identical. The sampler on the host gets them at the next step's draw,
        copied back meanwhile, so the host never waits for this step's teacher.
        """
        confidence, predicted = F.softmax(teacher_logits.float(), dim=1).max(dim=1)
        candidate = torch.where(confidence >= self.config.semi.threshold, predicted, NO_CLASS)
        device = self.bank_labels.device
        rows = torch.stack([to_device(index, device).long(), candidate.to(device)], dim=1)
        global_index, global_candidate = all_gather_cat(rows).unbind(1)
        fixed = self.train_labels[global_index]
        labels = torch.where(fixed >= 0, fixed, global_candidate)
        self.bank_labels.index_copy_(0, global_index, labels)
        self._pending = HostCopy(torch.stack([global_index, labels]))

    def _receive_pseudo_labels(self) -> None:
        """Hand the last step's pseudo-labels to the sampler (waiting for that step's copy)."""
        if self._pending is not None:
            index, labels = self._pending.get()
            self._pending = None
            self.sampler.relabel(index, labels)

    def contrast_indices(self, index: Tensor) -> Tensor:
        """Contrast sets of this batch's anchors, drawn for the global batch (all ranks draw
        the same sets with the same generator) and cut to this rank's rows.

        The draw runs on the host: in one process a host `index` (the trainer keeps it there)
        costs no device sync; under DDP the indices are gathered on the banks' device first.
        """
        device = self.memory.memory_s.device
        global_index = index
        if world_size() > 1:
            global_index = all_gather_cat(to_device(index, device))
        drawn = self.sampler.sample(global_index.cpu(), generator=self.generator)
        start = rank() * len(index)
        return to_device(drawn[start : start + len(index)], device)

    def relation_loss(self, emb_s: Tensor, emb_t: Tensor) -> Tensor:
        """CRP against class centroids of the banks, after this batch's update (§b CRP); the
        centroids average the rows with a class (labelled, or confidently pseudo-labelled)."""
        classes = self.context.num_classes
        centroids_s = class_centroids(self.memory.memory_s, self.bank_labels, classes)
        centroids_t = class_centroids(self.memory.memory_t, self.bank_labels, classes)
        return crp_loss(emb_s, emb_t, centroids_s, centroids_t, self.config.ccd.temperature)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A checkpoint saved before pseudo-labels has no `bank_labels`: its rows had the labels
        # of a fully labelled run, `train_labels`.
        if prefix + "train_labels" in state_dict:
            state_dict.setdefault(prefix + "bank_labels", state_dict[prefix + "train_labels"])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def loss_weights(self, epoch: int) -> dict[str, float]:
        ccd, crp, schedule = self.config.ccd, self.config.crp, self.schedule
        ccd_weight = ccd.weight if epoch >= schedule.ccd_begin else 0.0
        # The reference's late CCD weight switches on with the consistency term (§f.2).
        if ccd.late_weight is not None and epoch >= schedule.consistency_begin:
            ccd_weight = ccd.late_weight
        return {
            **super().loss_weights(epoch),
            "ccd": ccd_weight,
            "crp": crp.weight if epoch >= schedule.crp_begin else 0.0,
        }


def _resync_sampler(module: CRCKD, incompatible_keys: object) -> None:
    """After loading, the sampler draws from the loaded bank labels (one read to the host)."""
    module._pending = None
    labels = module.bank_labels.cpu()
    module.sampler.relabel(torch.arange(len(labels)), labels)
