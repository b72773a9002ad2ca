"""Baseline KD losses: plain-Python reference loops, torchdistill as an oracle, behaviour.

The reference loops below are written from the papers' formulas, independently of crckd; each
golden number was produced by them and is pinned as well. torchdistill (a dev dependency) is
the oracle for the losses it implements; those tests skip without it.
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


def rand(*shape: int) -> Tensor:
    return torch.randn(*shape)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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


# --- torchdistill as an oracle ------------------------------------------------------------------


@pytest.fixture
def td():
    """torchdistill's mid-level losses; only the oracle tests need it."""
    return pytest.importorskip("torchdistill.losses.mid_level")


def io(x: object, key: str = "output") -> dict:
    """The minimal torchdistill io_dict: {module_path: {io: value}} for module path "m"."""
    return {"m": {key: x}}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_torchdistill(td, temperature: float) -> None:
    """With alpha = 0 KDLoss returns its bare soft term, batchmean KL without the T² factor."""
    s, t = rand(16, 7), rand(16, 7) * 3
    oracle = td.KDLoss("m", "output", "m", "output", temperature=temperature, alpha=0)
    expected = oracle(io(s), io(t)) * temperature**2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected.item(), abs=TOL)


def test_pkt_matches_torchdistill(td) -> None:
    s, t = rand(16, 32), rand(16, 64)
    expected = td.PKTLoss("m", "output", "m", "output")(io(s), io(t))
    assert pkt_loss(s, t).item() == pytest.approx(expected.item(), abs=TOL)


@pytest.mark.parametrize(("dist_w", "angle_w"), [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_torchdistill(td, dist_w: float, angle_w: float) -> None:
    s, t = rand(12, 8, 2, 2), rand(12, 48)  # 4-D student embeddings are flattened
    oracle = td.RKDLoss("m", "m", dist_factor=dist_w, angle_factor=angle_w, reduction="mean")
    expected = oracle(io(s), io(t))
    loss = rkd_loss(s, t, distance_weight=dist_w, angle_weight=angle_w)
    assert loss.item() == pytest.approx(expected.item(), abs=TOL)


def test_at_matches_torchdistill_code_mode(td) -> None:
    """torchdistill sums weighted layers, so weights 1/L give our layer mean."""
    student = [rand(6, 4, 8, 8), rand(6, 8, 4, 4)]
    teacher = [rand(6, 16, 8, 8), rand(6, 32, 4, 4)]
    pairs = {
        f"pair{i}": {
            "student": {"io": "output", "path": f"s{i}"},
            "teacher": {"io": "output", "path": f"t{i}"},
            "weight": 1 / len(student),
        }
        for i in range(len(student))
    }
    oracle = td.ATLoss(pairs, mode="code")
    expected = oracle(
        {f"s{i}": {"output": x} for i, x in enumerate(student)},
        {f"t{i}": {"output": x} for i, x in enumerate(teacher)},
    )
    assert at_loss(student, teacher).item() == pytest.approx(expected.item(), abs=TOL)


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_torchdistill(td, beta: float, gamma: float, temperature: float) -> None:
    s, t = rand(16, 7), rand(16, 7) * 2
    oracle = td.DISTLoss("m", "output", "m", "output", beta=beta, gamma=gamma, tau=temperature)
    expected = oracle(io(s), io(t))
    loss = dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature)
    assert loss.item() == pytest.approx(expected.item(), abs=TOL)


def test_vid_matches_torchdistill(td) -> None:
    """torchdistill's VIDLoss takes the (mean, variance) pair its regressor wrapper produces."""
    vid = VIDLoss(4, 8, 6)
    s, t = rand(3, 4, 5, 5), rand(3, 6, 5, 5)
    prediction = (vid.regressor(s), vid.variance().view(1, -1, 1, 1))
    pairs = {
        "pair": {"student": {"io": "output", "path": "r"}, "teacher": {"io": "output", "path": "m"}}
    }
    expected = td.VIDLoss(pairs)({"r": {"output": prediction}}, io(t))
    assert vid(s, t).item() == pytest.approx(expected.item(), abs=TOL)


def test_fitnet_matches_torchdistill_mse_wrapper(td) -> None:
    """torchdistill's FitNets recipe: SimpleLossWrapper(MSELoss) from regressor output to hint."""
    s, t = rand(4, 8, 3, 3), rand(4, 8, 3, 3)
    oracle = td.SimpleLossWrapper(
        torch.nn.MSELoss(),
        input={"is_from_teacher": False, "module_path": "m", "io": "output"},
        target={"is_from_teacher": True, "module_path": "m", "io": "output"},
    )
    expected = oracle(io(s), io(t), None)
    assert fitnet_loss(s, t).item() == pytest.approx(expected.item(), abs=TOL)


def test_cc_squares_the_norm_that_torchdistill_does_not(td) -> None:
    """CCKDLoss returns ‖ψ_s − ψ_t‖_F / B² (torch.dist); the paper and we use ‖·‖²_F / B²."""
    s, t = (torch.nn.functional.normalize(rand(10, 16), dim=1) for _ in range(2))
    oracle = td.CCKDLoss(
        "m",
        "m",
        kernel_config={"type": "gaussian", "gamma": 0.4, "max_p": 2},
        reduction="batchmean",
    )
    norm = oracle(io(s), io(t)) * s.shape[0] ** 2
    loss = cc_loss(s, t)
    assert loss.item() == pytest.approx(norm.item() ** 2 / s.shape[0] ** 2, abs=TOL)
    assert abs(loss.item() - norm.item() / s.shape[0] ** 2) > 1e-3


def test_sp_follows_the_paper_not_torchdistill(td) -> None:
    """SPKDLoss's ``normalize(G, 1)`` L1-normalises the rows (p = 1); the paper uses L2."""
    s, t = rand(6, 3, 2, 2), rand(6, 20)
    torchdistill_value = td.SPKDLoss("m", "m", reduction="batchmean")(io(s), io(t)).item()
    ours = sp_loss(s, t).item()

    def l1_rows(feat: Tensor) -> Tensor:
        g = feat.flatten(1) @ feat.flatten(1).T
        return g / g.abs().sum(dim=1, keepdim=True)

    l1_formula = (l1_rows(s) - l1_rows(t)).pow(2).sum().item() / 6**2
    assert torchdistill_value == pytest.approx(l1_formula, abs=TOL)
    assert ours == pytest.approx(ref_sp(s.double().tolist(), t.double().tolist()), abs=TOL)
    assert abs(ours - torchdistill_value) > 1e-3


# --- behaviour ----------------------------------------------------------------------------------

LABELS_8 = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
PAIRWISE: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], tuple[int, ...]]] = {
    "kd": (kd_loss, (8, 5)),
    "dkd": (lambda s, t: dkd_loss(s, t, LABELS_8), (8, 5)),
    "dist": (dist_loss, (8, 5)),
    "fitnet": (fitnet_loss, (8, 3, 2, 2)),
    # a map and its double have the same attention map
    "at": (lambda s, t: at_loss([s, s * 2], [t, t]), (8, 3, 4, 4)),
    "sp": (sp_loss, (8, 3, 2, 2)),
    "src": (src_loss, (8, 6)),
    "rkd": (rkd_loss, (8, 6)),
    "pkt": (pkt_loss, (8, 6)),
    "cc": (cc_loss, (8, 6)),
}


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_zero_when_student_equals_teacher(name: str) -> None:
    loss_fn, shape = PAIRWISE[name]
    x = rand(*shape)
    assert loss_fn(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_gradient_reaches_student_only(name: str) -> None:
    loss_fn, shape = PAIRWISE[name]
    s = rand(*shape).requires_grad_()
    t = rand(*shape).requires_grad_()
    loss_fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_vid_gradient_and_dropped_constant() -> None:
    vid = VIDLoss(3, 4, 2, init_pred_var=5.0)
    torch.testing.assert_close(vid.variance(), torch.full((2,), 5.0))
    s, t = rand(2, 3, 4, 4).requires_grad_(), rand(2, 2, 4, 4).requires_grad_()
    vid(s, t).backward()
    assert t.grad is None and s.grad is not None and vid.alpha.grad is not None
    assert all(p.grad is not None for p in vid.regressor.parameters())
    # A perfect mean leaves ½ log σ² per element: the ½ log 2π constant is dropped.
    last = vid.regressor[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    assert vid(s, torch.zeros(2, 2, 4, 4)).item() == pytest.approx(0.5 * math.log(5.0), abs=TOL)


def test_vid_pools_the_larger_spatial_map() -> None:
    vid = VIDLoss(3, 4, 2)
    s_big, s = rand(2, 3, 8, 8), rand(2, 3, 4, 4)
    t, t_big = rand(2, 2, 4, 4), rand(2, 2, 8, 8)
    pool = torch.nn.functional.adaptive_avg_pool2d
    assert vid(s_big, t).item() == pytest.approx(vid(pool(s_big, 4), t).item(), abs=TOL)
    assert vid(s, t_big).item() == pytest.approx(vid(s, pool(t_big, 4)).item(), abs=TOL)


def test_at_is_symmetric_so_either_side_may_be_pooled() -> None:
    s, t = [rand(3, 2, 8, 8), rand(3, 4, 2, 2)], [rand(3, 5, 4, 4), rand(3, 1, 4, 4)]
    assert at_loss(s, t).item() == pytest.approx(at_loss(t, s).item(), abs=1e-7)


def test_src_is_batch_size_times_sp() -> None:
    s, t = rand(5, 7), rand(5, 3)
    assert src_loss(s, t).item() == pytest.approx(5 * sp_loss(s, t).item(), abs=TOL)


def test_dkd_decomposes_kd() -> None:
    """Per sample, KD = TCKD + (1 − p_y^T) NCKD (Zhao et al. 2022)."""
    s, t, y, temperature = rand(1, 6), rand(1, 6), torch.tensor([2]), 3.0
    p_y = torch.softmax(t / temperature, dim=1)[0, 2].item()
    dkd = dkd_loss(s, t, y, alpha=1.0, beta=1 - p_y, temperature=temperature)
    assert dkd.item() == pytest.approx(kd_loss(s, t, temperature).item(), abs=TOL)


def test_dkd_is_finite_for_confident_logits() -> None:
    s = torch.tensor([[200.0, -200.0, 0.0], [0.0, 300.0, -300.0]], requires_grad=True)
    t = torch.tensor([[300.0, 0.0, -300.0], [-200.0, 200.0, 0.0]])
    loss = dkd_loss(s, t, torch.tensor([0, 1]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_rkd_gradient_is_finite_with_duplicate_rows() -> None:
    s = rand(4, 5)
    s = torch.cat([s, s[:1]]).requires_grad_()
    rkd_loss(s, rand(5, 5)).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: kd_loss(rand(4, 3), rand(1, 3)), "shapes differ"),
        (lambda: dist_loss(rand(4, 3), rand(4, 5)), "shapes differ"),
        (lambda: fitnet_loss(rand(2, 3, 4, 4), rand(2, 3, 1, 1)), "shapes differ"),
        (lambda: dkd_loss(rand(4, 2), rand(4, 2), torch.tensor([0, 1, 0, 1])), "at least 3"),
        (lambda: dkd_loss(rand(4, 5), rand(4, 5), torch.tensor([0, 1])), "labels"),
        (lambda: sp_loss(rand(4, 6), rand(3, 6)), "batch sizes differ"),
        (lambda: src_loss(rand(4, 6), rand(3, 6)), "batch sizes differ"),
        (lambda: pkt_loss(rand(4, 6), rand(5, 6)), "batch sizes differ"),
        (lambda: cc_loss(rand(4, 6), rand(5, 6)), "batch sizes differ"),
        (lambda: rkd_loss(rand(4, 6), rand(5, 6)), "batch sizes differ"),
        (lambda: rkd_loss(rand(1, 6), rand(1, 6)), "at least 2"),
        (lambda: at_loss([rand(2, 3, 4, 4)], []), "number of student and teacher"),
        (lambda: at_loss([rand(2, 3, 4, 4)], [rand(3, 3, 4, 4)]), "batch sizes differ"),
        (lambda: at_loss([rand(2, 3, 4)], [rand(2, 3, 4)]), r"\[B, C, H, W\]"),
        (lambda: VIDLoss(3, 4, 2)(rand(2, 3, 4, 4), rand(2, 5, 4, 4)), "shapes differ"),
        (lambda: VIDLoss(3, 4, 2, init_pred_var=0.0), "init_pred_var"),
    ],
)
def test_bad_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
