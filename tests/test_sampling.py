"""ContrastSampler: CCD contrast-index sampling (§d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crckd.data.sampling import ContrastSampler

# Imbalanced toy split, shuffled so that classes are not contiguous: sizes 30 / 5 / 12 (N = 47).
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [30, 5, 12]))
LABELS_T = torch.as_tensor(LABELS)
P, K = 8, 20
# "sup" negative pools: class 0 -> 17 (< K: with replacement), class 1 -> 42, class 2 -> 35.
# Positive pools: class 1 has 5 members (< P: with replacement), classes 0 and 2 have >= P.


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def all_index() -> torch.Tensor:
    return torch.arange(len(LABELS))


def test_shape_dtype_and_num_positives() -> None:
    sampler = ContrastSampler(LABELS, num_positives=P, num_negatives=K)
    out = sampler.sample(torch.tensor([3, 31, 40]), gen())
    assert sampler.num_positives == P
    assert out.shape == (3, P + K) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < len(LABELS)


@pytest.mark.parametrize("negatives", ["sup", "unsup"])
def test_multi_positives_share_class_with_anchor_in_slot_0(negatives: str) -> None:
    sampler = ContrastSampler(LABELS, P, K, negatives=negatives)
    index = all_index()[torch.randperm(len(LABELS), generator=gen(1))]
    out = sampler.sample(index, gen())
    assert torch.equal(out[:, 0], index)
    assert (LABELS_T[out[:, :P]] == LABELS_T[index].unsqueeze(1)).all()


def test_multi_positives_without_replacement_when_class_is_big_enough() -> None:
    sampler = ContrastSampler(LABELS, P, K)
    out = sampler.sample(all_index(), gen())
    for i, row in enumerate(out.tolist()):
        if LABELS[i] != 1:  # slot 0 was overwritten by the anchor, which may repeat a draw
            assert len(set(row[1:P])) == P - 1


def test_multi_positives_of_a_small_class_are_drawn_from_all_its_members() -> None:
    sampler = ContrastSampler(LABELS, P, K)  # class 1 has 5 members < P: with replacement
    anchors = torch.from_numpy(np.flatnonzero(LABELS == 1))
    drawn = set()
    for seed in range(20):
        drawn.update(sampler.sample(anchors, gen(seed))[:, 1:P].flatten().tolist())
    assert drawn == set(anchors.tolist())


def test_sup_negatives_never_share_anchor_class() -> None:
    sampler = ContrastSampler(LABELS, P, K, negatives="sup")
    for seed in range(5):
        index = all_index()
        out = sampler.sample(index, gen(seed))
        assert (LABELS_T[out[:, P:]] != LABELS_T[index].unsqueeze(1)).all()


def test_negatives_with_replacement_only_when_pool_smaller_than_k() -> None:
    sampler = ContrastSampler(LABELS, P, K, negatives="sup")
    out = sampler.sample(all_index(), gen())
    for i, row in enumerate(out[:, P:].tolist()):
        if LABELS[i] != 0:
            assert len(set(row)) == K
    # Class 0's pool (the 17 others) is smaller than K: drawn with replacement, from all of it.
    anchors = torch.from_numpy(np.flatnonzero(LABELS == 0))
    drawn = set()
    for seed in range(20):
        drawn.update(sampler.sample(anchors, gen(seed))[:, P:].flatten().tolist())
    assert drawn == set(np.flatnonzero(LABELS != 0).tolist())


def test_unsup_negatives_exclude_anchor_and_cover_everything_else() -> None:
    sampler = ContrastSampler(LABELS, P, num_negatives=30, negatives="unsup")
    anchor = torch.tensor([46] * 4 + [0] * 4 + [20] * 4)
    seen: dict[int, set[int]] = {0: set(), 20: set(), 46: set()}
    for seed in range(40):
        out = sampler.sample(anchor, gen(seed))
        negs = out[:, P:]
        assert (negs != anchor.unsqueeze(1)).all()
        for a, row in zip(anchor.tolist(), negs.tolist(), strict=True):
            assert len(set(row)) == 30  # pool 46 >= K: without replacement
            seen[a].update(row)
    for a, values in seen.items():
        assert values == set(range(len(LABELS))) - {a}


def test_unsup_with_replacement_when_pool_smaller_than_k() -> None:
    sampler = ContrastSampler(LABELS, P, num_negatives=60, negatives="unsup")
    index = all_index()
    out = sampler.sample(index, gen())
    assert out.shape == (len(LABELS), P + 60)
    assert (out[:, P:] != index.unsqueeze(1)).all()
    for anchor, row in enumerate(out[:, P:].tolist()):  # 60 draws from the 46 others
        assert set(row) <= set(range(len(LABELS))) - {anchor}
    drawn = set()
    for seed in range(10):
        drawn.update(sampler.sample(torch.tensor([7]), gen(seed))[0, P:].tolist())
    assert drawn == set(range(len(LABELS))) - {7}


def test_exact_mode_is_anchor_only() -> None:
    sampler = ContrastSampler(LABELS, num_positives=20, num_negatives=K, positives="exact")
    index = torch.tensor([0, 33, 45, 12])
    out = sampler.sample(index, gen())
    assert sampler.num_positives == 1
    assert out.shape == (4, 1 + K)
    assert torch.equal(out[:, 0], index)


def test_relax_mode_is_one_random_class_member() -> None:
    sampler = ContrastSampler(LABELS, num_negatives=K, positives="relax")
    index = all_index()
    out = sampler.sample(index, gen())
    assert sampler.num_positives == 1 and out.shape == (len(LABELS), 1 + K)
    assert (LABELS_T[out[:, 0]] == LABELS_T[index]).all()
    drawn = torch.stack([sampler.sample(index, gen(seed))[:, 0] for seed in range(10)])
    for anchor in range(len(LABELS)):  # a random member each time, not a fixed one
        assert len(set(drawn[:, anchor].tolist())) > 1


def test_generator_makes_it_reproducible() -> None:
    sampler = ContrastSampler(LABELS, P, K)
    index = torch.tensor([5, 30, 44, 2])
    assert torch.equal(sampler.sample(index, gen(3)), sampler.sample(index, gen(3)))
    assert not torch.equal(sampler.sample(index, gen(3)), sampler.sample(index, gen(4)))


def test_accepts_list_and_tensor_labels() -> None:
    index = torch.tensor([1, 35])
    from_list = ContrastSampler(LABELS.tolist(), P, K).sample(index, gen())
    from_tensor = ContrastSampler(LABELS_T, P, K).sample(index, gen())
    assert torch.equal(from_list, from_tensor)


def test_single_class_sup_raises() -> None:
    with pytest.raises(ValueError, match="other classes"):
        ContrastSampler([2, 2, 2, 2], num_positives=2, num_negatives=3, negatives="sup")
    # "unsup" only needs a second sample.
    out = ContrastSampler([2, 2, 2, 2], 2, 3, negatives="unsup").sample(torch.tensor([1]), gen())
    assert 1 not in out[0, 2:].tolist()


def test_sup_negatives_cover_all_other_class_samples() -> None:
    """The shift over the class block reaches every other-class sample, including both ends."""
    sampler = ContrastSampler(LABELS, P, K, negatives="sup")
    anchors = torch.tensor([int(np.flatnonzero(c == LABELS)[0]) for c in (0, 1, 2)])
    seen = [set() for _ in range(3)]
    for seed in range(40):
        out = sampler.sample(anchors, gen(seed))
        for c in range(3):
            seen[c].update(out[c, P:].tolist())
    for c in range(3):
        assert seen[c] == set(np.flatnonzero(c != LABELS).tolist())


def test_two_dimensional_labels_raise() -> None:
    with pytest.raises(ValueError, match="1-D"):
        ContrastSampler(np.eye(3, dtype=int))


@pytest.mark.parametrize(
    "kwargs",
    [{"negatives": "all"}, {"positives": "many"}, {"num_positives": 0}, {"num_negatives": 0}],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ContrastSampler(LABELS, **kwargs)
