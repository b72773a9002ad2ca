"""Baseline KD losses: plain-Python reference loops, torchdistill as an oracle, behaviour.

The reference loops below are written from the papers' formulas, independently of crckd; each
golden number was produced by them and is pinned as well. torchdistill is only imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from crckd.losses import (
    VIDLoss,
    at_loss,
    attention_map,
    cc_loss,
    dist_loss,
    dkd_loss,
    fitnet_loss,
    kd_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
    src_loss,
)

TOL = 1e-5


def grid(shape: tuple[int, ...], seed: float) -> list:
    """A fixed nested list of the given shape with irregular values in (-2, 2)."""
    count = math.prod(shape)
    flat = [2 * math.sin(seed + 1.7 * k + 0.3 * k * k) for k in range(count)]

    def nest(values: list[float], dims: tuple[int, ...]) -> list:
        if len(dims) == 1:
            return values
        step = len(values) // dims[0]
        return [nest(values[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]

    return nest(flat, shape)


def t64(x: list) -> Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --- plain-Python references --------------------------------------------------------------------


def flat(x) -> list[float]:
    return [v for item in x for v in flat(item)] if isinstance(x, list) else [x]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def unit(v: list[float], eps: float = 0.0) -> list[float]:
    n = math.sqrt(dot(v, v))
    return [x / (n + eps) for x in v] if eps else [x / n for x in v]


def softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True) if a > 0)


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [x - ma for x in a], [x - mb for x in b]
    return dot(ca, cb) / math.sqrt(dot(ca, ca) * dot(cb, cb))


def ref_kd(s, t, temp: float) -> float:
    rows = [
        kl(softmax([x / temp for x in b]), softmax([x / temp for x in a]))
        for a, b in zip(s, t, strict=True)
    ]
    return temp * temp * sum(rows) / len(s)


def ref_fitnet(s, t) -> float:
    a, b = flat(s), flat(t)
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a)


def ref_pool(m: list[list[float]], oh: int, ow: int) -> list[list[float]]:
    """Adaptive average pooling of one H x W map (bins [floor(iH/oh), ceil((i+1)H/oh)))."""
    h, w = len(m), len(m[0])
    out = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        row = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cells = [m[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def ref_energy(sample, p: float) -> list[list[float]]:
    """mean_c |F_c|^p of one [C][H][W] sample."""
    c, h, w = len(sample), len(sample[0]), len(sample[0][0])
    return [
        [sum(abs(sample[k][i][j]) ** p for k in range(c)) / c for j in range(w)] for i in range(h)
    ]


def ref_at(student_layers, teacher_layers, p: float = 2) -> float:
    total = 0.0
    for s, t in zip(student_layers, teacher_layers, strict=True):
        layer, count = 0.0, 0
        for s_b, t_b in zip(s, t, strict=True):
            e_s, e_t = ref_energy(s_b, p), ref_energy(t_b, p)
            oh, ow = min(len(e_s), len(e_t)), min(len(e_s[0]), len(e_t[0]))
            a_s, a_t = unit(flat(ref_pool(e_s, oh, ow))), unit(flat(ref_pool(e_t, oh, ow)))
            layer += sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True))
            count += len(a_s)
        total += layer / count
    return total / len(student_layers)


def ref_relation(feat) -> list[list[float]]:
    rows = [flat(x) for x in feat]
    return [unit([dot(a, b) for b in rows]) for a in rows]


def ref_relation_distance(s, t) -> float:
    r_s, r_t = ref_relation(s), ref_relation(t)
    return sum(
        (x - y) ** 2 for a, b in zip(r_s, r_t, strict=True) for x, y in zip(a, b, strict=True)
    )


def ref_sp(s, t) -> float:
    return ref_relation_distance(s, t) / len(s) ** 2


def ref_src(s, t) -> float:
    return ref_relation_distance(s, t) / len(s)


def ref_rkd_distance(s, t) -> float:
    def psi(e):
        n = len(e)
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[x / mu for x in row] for row in d]

    d_s, d_t = psi(s), psi(t)
    n = len(s)
    return sum(huber(d_s[i][j] - d_t[i][j]) for i in range(n) for j in range(n)) / n**2


def ref_rkd_angle(s, t) -> float:
    def cosine(e, i, j, k):  # angle at vertex j; degenerate triplets count as cosine 0
        u = [a - b for a, b in zip(e[i], e[j], strict=True)]
        v = [a - b for a, b in zip(e[k], e[j], strict=True)]
        if i == j or k == j:
            return 0.0
        return dot(unit(u), unit(v))

    n = len(s)
    total = sum(
        huber(cosine(s, i, j, k) - cosine(t, i, j, k))
        for i in range(n)
        for j in range(n)
        for k in range(n)
    )
    return total / n**3


def ref_pkt(s, t, eps: float = 1e-7) -> float:
    def cond(e):
        u = [unit(x, eps) for x in e]
        k = [[(dot(a, b) + 1) / 2 for b in u] for a in u]
        return [[x / sum(row) for x in row] for row in k]

    p, q = cond(t), cond(s)
    n = len(s)
    total = sum(
        p[i][j] * math.log((p[i][j] + eps) / (q[i][j] + eps)) for i in range(n) for j in range(n)
    )
    return total / n**2


def ref_cc(s, t, gamma: float = 0.4, order: int = 2) -> float:
    def psi(e):
        return [
            [
                math.exp(-2 * gamma)
                * sum(
                    (2 * gamma) ** p / math.factorial(p) * dot(a, b) ** p for p in range(order + 1)
                )
                for b in e
            ]
            for a in e
        ]

    k_s, k_t = psi(s), psi(t)
    n = len(s)
    return sum((k_s[i][j] - k_t[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def ref_dkd(s, t, labels, alpha: float, beta: float, temp: float) -> float:
    total = 0.0
    for z_s, z_t, y in zip(s, t, labels, strict=True):
        p_s, p_t = softmax([x / temp for x in z_s]), softmax([x / temp for x in z_t])
        tckd = kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        rest = [c for c in range(len(z_s)) if c != y]
        nckd = kl(softmax([z_t[c] / temp for c in rest]), softmax([z_s[c] / temp for c in rest]))
        total += alpha * tckd + beta * nckd
    return temp * temp * total / len(s)


def ref_dist(s, t, beta: float, gamma: float, temp: float) -> float:
    y_s = [softmax([x / temp for x in row]) for row in s]
    y_t = [softmax([x / temp for x in row]) for row in t]
    inter = 1 - sum(pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / len(s)
    cols = range(len(s[0]))
    intra = 1 - sum(pearson([r[c] for r in y_s], [r[c] for r in y_t]) for c in cols) / len(cols)
    return temp * temp * (beta * inter + gamma * intra)


def ref_vid(module: VIDLoss, s, t) -> float:
    """The VID forward in loops: three 1x1 convolutions per pixel, then the Gaussian NLL."""
    layers = [
        (m.weight.detach().flatten(1).tolist(), m.bias.detach().tolist())
        for m in module.regressor
        if isinstance(m, torch.nn.Conv2d)
    ]
    var = [math.log1p(math.exp(a)) + module.eps for a in module.alpha.detach().tolist()]
    total, count = 0.0, 0
    for s_b, t_b in zip(s, t, strict=True):
        for i in range(len(s_b[0])):
            for j in range(len(s_b[0][0])):
                x = [ch[i][j] for ch in s_b]
                for k, (w, b) in enumerate(layers):
                    x = [dot(row, x) + bias for row, bias in zip(w, b, strict=True)]
                    x = x if k == len(layers) - 1 else [max(v, 0.0) for v in x]
                for c, mu in enumerate(x):
                    total += 0.5 * (math.log(var[c]) + (t_b[c][i][j] - mu) ** 2 / var[c])
                    count += 1
    return total / count


# --- golden values ------------------------------------------------------------------------------

LOGITS_S, LOGITS_T = grid((3, 5), 0.1), grid((3, 5), 2.3)
LABELS = [4, 0, 2]
EMB_S, EMB_T = grid((4, 3), 0.5), grid((4, 6), 1.9)  # embedding sizes differ on purpose
MAPS_S = [grid((2, 2, 4, 4), 0.2), grid((2, 3, 2, 3), 0.9)]
MAPS_T = [grid((2, 3, 2, 2), 1.4), grid((2, 2, 2, 3), 3.1)]  # layer 1: 4x4 pooled to 2x2
HINT_T = grid((2, 3, 2, 3), 4.6)

# Pinned outputs of the reference loops on the inputs above.
EXPECTED = {
    "kd": 2.316404467317787,
    "kd_t2": 2.103373480832533,
    "fitnet": 7.558105619431182,
    "at": 0.06233191072802172,
    "at_p3": 0.08326863307998625,
    "sp": 0.227387052988906,
    "sp_maps": 0.016444054503794082,
    "src": 0.909548211955624,
    "rkd_distance": 0.11501104090386358,
    "rkd_angle": 0.04666595239010973,
    "rkd": 0.37001993897805635,
    "pkt": 0.029604395396130058,
    "cc": 99.42542596400389,
    "cc_order3": 121.44992717429585,
    "dkd": 17.530792395914897,
    "dkd_weights": 3.9963871930994492,
    "dist": 3.012495885185838,
    "dist_weights": 34.28896148112844,
}

GOLDEN: list[tuple[str, Callable[[], Tensor], Callable[[], float]]] = [
    (
        "kd",
        lambda: kd_loss(t64(LOGITS_S), t64(LOGITS_T)),
        lambda: ref_kd(LOGITS_S, LOGITS_T, 4.0),
    ),
    (
        "kd_t2",
        lambda: kd_loss(t64(LOGITS_S), t64(LOGITS_T), temperature=2.0),
        lambda: ref_kd(LOGITS_S, LOGITS_T, 2.0),
    ),
    (
        "fitnet",
        lambda: fitnet_loss(t64(MAPS_S[1]), t64(HINT_T)),
        lambda: ref_fitnet(MAPS_S[1], HINT_T),
    ),
    (
        "at",
        lambda: at_loss([t64(m) for m in MAPS_S], [t64(m) for m in MAPS_T]),
        lambda: ref_at(MAPS_S, MAPS_T),
    ),
    (
        "at_p3",
        lambda: at_loss([t64(m) for m in MAPS_S], [t64(m) for m in MAPS_T], p=3),
        lambda: ref_at(MAPS_S, MAPS_T, p=3),
    ),
    ("sp", lambda: sp_loss(t64(EMB_S), t64(EMB_T)), lambda: ref_sp(EMB_S, EMB_T)),
    (
        "sp_maps",
        lambda: sp_loss(t64(MAPS_S[1]), t64(MAPS_T[1])),
        lambda: ref_sp(MAPS_S[1], MAPS_T[1]),
    ),
    ("src", lambda: src_loss(t64(EMB_S), t64(EMB_T)), lambda: ref_src(EMB_S, EMB_T)),
    (
        "rkd_distance",
        lambda: rkd_distance_loss(t64(EMB_S), t64(EMB_T)),
        lambda: ref_rkd_distance(EMB_S, EMB_T),
    ),
    (
        "rkd_angle",
        lambda: rkd_angle_loss(t64(EMB_S), t64(EMB_T)),
        lambda: ref_rkd_angle(EMB_S, EMB_T),
    ),
    (
        "rkd",
        lambda: rkd_loss(t64(EMB_S), t64(EMB_T), distance_weight=2.0, angle_weight=3.0),
        lambda: 2 * ref_rkd_distance(EMB_S, EMB_T) + 3 * ref_rkd_angle(EMB_S, EMB_T),
    ),
    ("pkt", lambda: pkt_loss(t64(EMB_S), t64(EMB_T)), lambda: ref_pkt(EMB_S, EMB_T)),
    ("cc", lambda: cc_loss(t64(EMB_S), t64(EMB_T)), lambda: ref_cc(EMB_S, EMB_T)),
    (
        "cc_order3",
        lambda: cc_loss(t64(EMB_S), t64(EMB_T), gamma=0.2, order=3),
        lambda: ref_cc(EMB_S, EMB_T, gamma=0.2, order=3),
    ),
    (
        "dkd",
        lambda: dkd_loss(t64(LOGITS_S), t64(LOGITS_T), torch.tensor(LABELS)),
        lambda: ref_dkd(LOGITS_S, LOGITS_T, LABELS, 1.0, 8.0, 4.0),
    ),
    (
        "dkd_weights",
        lambda: dkd_loss(t64(LOGITS_S), t64(LOGITS_T), torch.tensor(LABELS), 0.5, 2.0, 1.5),
        lambda: ref_dkd(LOGITS_S, LOGITS_T, LABELS, 0.5, 2.0, 1.5),
    ),
    (
        "dist",
        lambda: dist_loss(t64(LOGITS_S), t64(LOGITS_T)),
        lambda: ref_dist(LOGITS_S, LOGITS_T, 1.0, 1.0, 1.0),
    ),
    (
        "dist_weights",
        lambda: dist_loss(t64(LOGITS_S), t64(LOGITS_T), beta=2.0, gamma=0.5, temperature=3.0),
        lambda: ref_dist(LOGITS_S, LOGITS_T, 2.0, 0.5, 3.0),
    ),
]


@pytest.mark.parametrize(("name", "loss", "reference"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden(name: str, loss, reference) -> None:
    assert reference() == pytest.approx(EXPECTED[name], abs=TOL), "the reference loop moved"
    assert loss().item() == pytest.approx(EXPECTED[name], abs=TOL)


def test_vid_golden() -> None:
    torch.manual_seed(0)
    vid = VIDLoss(3, 4, 2, init_pred_var=2.0).double()
    with torch.no_grad():
        vid.alpha.copy_(t64([0.3, -1.2]))
    s, t = grid((2, 3, 2, 3), 0.4), grid((2, 2, 2, 3), 2.2)
    assert vid(t64(s), t64(t)).item() == pytest.approx(ref_vid(vid, s, t), abs=TOL)


def test_attention_map_golden() -> None:
    feat = MAPS_S[1]
    expected = [unit(flat(ref_energy(sample, 2))) for sample in feat]
    torch.testing.assert_close(attention_map(t64(feat)), t64(expected), atol=TOL, rtol=0)
