"""Training batches and augmentations depend on (seed, epoch) only: not on workers or ranks."""

import pytest
import torch
from PIL import Image

from conftest import make_ham_layout
from crckd.data import eval_transform, load_table, train_transform
from crckd.data.datasets import ImageDataset
from crckd.data.samplers import GlobalBatchSampler
from crckd.engine.data import make_loader


def epochs_of(loader, seeds):
    out = []
    for seed in seeds:
        loader.batch_sampler.set_seed(seed)
        out.append([(batch["index"].tolist(), batch["image"]) for batch in loader])
    return out


@pytest.mark.slow
def test_persistent_workers_give_the_batches_and_augmentations_of_no_workers(tmp_path):
    table = load_table("ham10000", make_ham_layout(tmp_path / "ham", n_per_class=3))
    paths, labels = table.frame["path"].tolist(), table.frame["label"].to_numpy()

    def loader(workers):
        transform = train_transform(16)
        return make_loader(
            paths, labels, transform, batch_size=4, shuffle=True, num_workers=workers
        )

    plain, workers = epochs_of(loader(0), [11, 12]), epochs_of(loader(2), [11, 12])
    for epoch_plain, epoch_workers in zip(plain, workers, strict=True):
        for (idx_a, img_a), (idx_b, img_b) in zip(epoch_plain, epoch_workers, strict=True):
            assert idx_a == idx_b
            torch.testing.assert_close(img_a, img_b, rtol=0, atol=0)
    assert [i for i, _ in plain[0]] != [i for i, _ in plain[1]]  # another epoch, another order


def test_iterating_a_loader_leaves_the_global_generator_alone(tmp_path):
    table = load_table("ham10000", make_ham_layout(tmp_path / "ham", n_per_class=2))
    paths, labels = table.frame["path"].tolist(), table.frame["label"].to_numpy()
    for shuffle in (True, False):
        loader = make_loader(
            paths, labels, eval_transform(16), batch_size=4, shuffle=shuffle, num_workers=0
        )
        torch.manual_seed(5)
        before = torch.get_rng_state()
        next(iter(loader))
        assert torch.equal(torch.get_rng_state(), before), shuffle


def test_rank_chunks_make_up_the_single_process_batches():
    single = list(GlobalBatchSampler(22, 8, seed=3))
    ranks = [list(GlobalBatchSampler(22, 8, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    assert [len(b) for b in single] == [8, 8, 6]
    assert all(seed == 3 for batch in single for _, seed in batch)
    indices = sorted(i for batch in single for i, _ in batch)
    assert indices == sorted(set(indices))


def test_last_batches_are_cut_to_the_ranks_and_dropped_when_too_small_for_batchnorm():
    assert [len(b) for b in GlobalBatchSampler(17, 8, seed=0)] == [8, 8]
    assert [len(b) for b in GlobalBatchSampler(18, 8, seed=0)] == [8, 8, 2]
    # 2 ranks: a last batch of 3 leaves each rank one image, one of 5 is cut to 4.
    assert len(GlobalBatchSampler(19, 8, seed=0, world_size=2)) == 2
    assert [len(b) for b in GlobalBatchSampler(21, 8, seed=0, rank=1, world_size=2)] == [4, 4, 2]
    # 4 ranks, a last batch of 10: cut to 8, two images per rank.
    assert len(GlobalBatchSampler(34, 12, seed=0, world_size=4)) == 3
    last = [list(GlobalBatchSampler(34, 12, seed=0, rank=r, world_size=4))[-1] for r in range(4)]
    single_last = list(GlobalBatchSampler(34, 12, seed=0))[-1]
    assert len(single_last) == 10
    assert [key for share in last for key in share] == single_last[:8]


def test_a_seeded_item_depends_on_its_key_only_and_leaves_the_global_generator_alone():
    images = [torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8).numpy() for _ in range(3)]
    dataset = ImageDataset(
        ["a", "b", "c"], [0, 1, 0], train_transform(12), views=2,
        images=[Image.fromarray(image) for image in images],
    )  # fmt: skip
    torch.manual_seed(0)
    first = dataset[(1, 5)]
    expected_next = torch.rand(4)
    torch.manual_seed(0)
    again = dataset[(1, 5)]
    assert torch.equal(torch.rand(4), expected_next)  # as if the item had not been drawn
    torch.manual_seed(99)  # another global state: the same item
    for other in (again, dataset[(1, 5)]):
        assert torch.equal(other["image"], first["image"])
        assert torch.equal(other["image2"], first["image2"])
    assert not torch.equal(first["image"], first["image2"])  # two independent views
    assert not torch.equal(dataset[(1, 6)]["image"], first["image"])  # another epoch seed


@pytest.mark.slow
def test_evaluation_loader_workers_persist_and_give_the_same_batches(tmp_path):
    table = load_table("ham10000", make_ham_layout(tmp_path / "ham", n_per_class=2))
    paths, labels = table.frame["path"].tolist(), table.frame["label"].to_numpy()
    loader = make_loader(
        paths, labels, eval_transform(16), batch_size=4, shuffle=False, num_workers=1
    )
    assert loader.persistent_workers
    first = [batch["image"] for batch in loader]
    workers = loader._iterator._workers  # the processes of the first pass
    second = [batch["image"] for batch in loader]
    assert loader._iterator._workers == workers  # reused, not started again
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
