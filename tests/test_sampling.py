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


# --- rows without a class (-1: unlabelled, no pseudo-label) ----------------------------------

# LABELS with 9 rows without a class appended (positions 47..55) and 6 scattered in: 47 + 9 rows.
UNKNOWN_TAIL = np.concatenate([LABELS, np.full(9, -1)])
MIXED = UNKNOWN_TAIL.copy()
MIXED[[2, 9, 17, 25, 33, 41]] = -1
MIXED_T = torch.as_tensor(MIXED)


@pytest.mark.parametrize("positives", ["multi", "relax", "exact"])
def test_rows_without_a_class_leave_class_guided_draws_unchanged(positives: str) -> None:
    """Rows without a class are neither positives nor 'sup' negatives of an anchor with one:
    appended after the labelled rows, they change no draw of those anchors, bit for bit."""
    index = torch.tensor([5, 30, 44, 2, 12, 0, 46])
    plain = ContrastSampler(LABELS, P, K, positives=positives)
    with_unknown = ContrastSampler(UNKNOWN_TAIL, P, K, positives=positives)
    for seed in range(3):
        assert torch.equal(with_unknown.sample(index, gen(seed)), plain.sample(index, gen(seed)))


@pytest.mark.parametrize("positives", ["multi", "relax", "exact"])
def test_an_anchor_without_a_class_is_contrasted_as_an_instance(positives: str) -> None:
    sampler = ContrastSampler(MIXED, P, num_negatives=30, positives=positives)
    unknown = np.flatnonzero(MIXED == -1)
    anchors = torch.tensor([unknown[0], unknown[-1], 3])  # two without a class, one with
    seen: dict[int, set[int]] = {int(a): set() for a in anchors[:2]}
    for seed in range(30):
        out = sampler.sample(anchors, gen(seed))
        assert (out[:2, : sampler.num_positives] == anchors[:2, None]).all()
        negatives = out[:2, sampler.num_positives :].tolist()
        for a, row in zip(anchors[:2].tolist(), negatives, strict=True):
            assert len(set(row)) == 30 and a not in row  # pool 55 >= K: without replacement
            seen[a].update(row)
        # The labelled anchor in the same batch keeps class-guided sets.
        assert (MIXED_T[out[2, : sampler.num_positives]] == MIXED[3]).all()
        assert (MIXED_T[out[2, sampler.num_positives :]] >= 0).all()
    for a, values in seen.items():  # negatives: every other row, with a class or without
        assert values == set(range(len(MIXED))) - {a}


def test_sup_pools_of_a_labelled_anchor_skip_rows_without_a_class() -> None:
    sampler = ContrastSampler(MIXED, P, K)
    anchors = torch.tensor([int(np.flatnonzero(c == MIXED)[0]) for c in (0, 1, 2)])
    positives, negatives = [set() for _ in range(3)], [set() for _ in range(3)]
    for seed in range(40):
        out = sampler.sample(anchors, gen(seed))
        for c in range(3):
            positives[c].update(out[c, :P].tolist())
            negatives[c].update(out[c, P:].tolist())
    for c in range(3):
        assert positives[c] == set(np.flatnonzero(c == MIXED).tolist())
        assert negatives[c] == set(np.flatnonzero((MIXED >= 0) & (c != MIXED)).tolist())


def test_unsup_negatives_of_a_labelled_anchor_include_rows_without_a_class() -> None:
    sampler = ContrastSampler(MIXED, P, num_negatives=30, negatives="unsup")
    drawn = set()
    for seed in range(30):
        out = sampler.sample(torch.tensor([3]), gen(seed))
        assert (MIXED_T[out[0, :P]] == MIXED[3]).all()
        drawn.update(out[0, P:].tolist())
    assert drawn == set(range(len(MIXED))) - {3}


def test_relabel_moves_rows_between_classes_and_no_class() -> None:
    sampler = ContrastSampler(MIXED, P, K)
    gained, revoked = int(np.flatnonzero(MIXED == -1)[0]), int(np.flatnonzero(MIXED == 1)[0])
    sampler.relabel(torch.tensor([gained, revoked]), torch.tensor([1, -1]))
    labels = MIXED.copy()
    labels[[gained, revoked]] = [1, -1]
    assert torch.equal(sampler.labels, torch.as_tensor(labels))
    class_1 = set(np.flatnonzero(labels == 1).tolist())
    drawn = set()
    for seed in range(20):
        out = sampler.sample(torch.tensor([gained, revoked]), gen(seed))
        drawn.update(out[0, 1:P].tolist())
        assert (out[1, :P] == revoked).all()  # now an instance anchor
    assert drawn == class_1  # the new member draws from class 1, itself included


def test_relabel_refuses_to_leave_sup_without_two_classes_and_keeps_the_labels() -> None:
    sampler = ContrastSampler([0, 1, 1, -1], num_positives=2, num_negatives=3)
    with pytest.raises(ValueError, match="only class"):
        sampler.relabel(torch.tensor([0]), torch.tensor([-1]))
    assert sampler.labels.tolist() == [0, 1, 1, -1]
    out = sampler.sample(torch.tensor([1]), gen())
    assert (sampler.labels[out[0, 2:]] == 0).all()


def test_label_errors_with_rows_without_a_class() -> None:
    with pytest.raises(ValueError, match="only class"):  # one class among the labelled rows
        ContrastSampler([0, 0, -1, -1], num_positives=2, num_negatives=3)
    with pytest.raises(ValueError, match="no class"):
        ContrastSampler([-1, -1, -1], num_positives=2, num_negatives=3)
    with pytest.raises(ValueError, match="-1"):
        ContrastSampler([0, 1, -2], num_positives=2, num_negatives=3)
    with pytest.raises(ValueError, match="at least 2"):
        ContrastSampler([-1], num_positives=2, num_negatives=3, negatives="unsup")
    # 'unsup' with no class at all: every anchor is an instance.
    out = ContrastSampler([-1, -1, -1], 2, 4, negatives="unsup").sample(torch.tensor([1]), gen())
    assert out[0, :2].tolist() == [1, 1] and 1 not in out[0, 2:].tolist()
