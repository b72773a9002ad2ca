"""`crckd embed`: the feature statistics by hand, the teacher from last.pt, a run without one."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, make_colour_ham
from crckd.cli import main
from crckd.engine import load_checkpoint, load_student, save_checkpoint
from crckd.tools.embed import (
    centroid_distance,
    embed_run,
    feature_statistics,
    intra_class_cosine,
    load_teacher,
)

# Two classes in 2-D, mean (0, 0), shifted by an offset that centring must remove.
# Unit vectors: class 0 -> (1, 0), (1, 0); class 1 -> (-1, 1)/sqrt(2), (-2, -1)/sqrt(5);
# the singleton class 2 sits at the mean (0, 0) before the shift.
FEATURES = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [-2.0, -1.0], [0.0, 0.0]]) + np.array(
    [5, -3]
)
LABELS = np.array([0, 0, 1, 1, 2])


def test_intra_class_cosine_matches_a_hand_computation():
    cosines = intra_class_cosine(FEATURES[:4], LABELS[:4])
    assert cosines[0] == pytest.approx(1.0)
    assert cosines[1] == pytest.approx((2 - 1) / (math.sqrt(2) * math.sqrt(5)))  # 1/sqrt(10)


C0 = np.array([1.0, 0.0])
C1 = (np.array([-1.0, 1.0]) / math.sqrt(2) + np.array([-2.0, -1.0]) / math.sqrt(5)) / 2


def test_centroid_distance_matches_a_hand_computation():
    assert centroid_distance(FEATURES[:4], LABELS[:4]) == pytest.approx(np.linalg.norm(C0 - C1))


def test_a_singleton_class_has_no_pair_but_counts_for_centroids():
    stats = feature_statistics(FEATURES, LABELS, ["a", "b", "c"])
    assert set(stats["intra_class_cosine_per_class"]) == {"a", "b"}
    assert stats["intra_class_cosine"] == pytest.approx((1 + 1 / math.sqrt(10)) / 2)
    # the singleton is at the mean, so its centred vector and centroid are (0, 0)
    pairs = [np.linalg.norm(C0 - C1), np.linalg.norm(C0), np.linalg.norm(C1)]
    assert stats["centroid_distance"] == pytest.approx(np.mean(pairs))
    assert centroid_distance(FEATURES[:2], LABELS[:2]) is None


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory) -> Path:
    """One short mean-teacher run (it has a teacher in last.pt)."""
    root = make_colour_ham(tmp_path_factory.mktemp("data") / "ham")
    out = tmp_path_factory.mktemp("runs") / "mt"
    args = [f"data.root={root}", f"output_dir={out}", "method.name=mt", "train.epochs=1", *FAST]
    assert main(["train", *args]) == 0
    return out


def test_the_teacher_is_the_one_in_last_pt(mt_run):
    student = load_student(mt_run / "checkpoints" / "last.pt")
    teacher = load_teacher(mt_run / "checkpoints" / "last.pt", student.model)
    method_state = load_checkpoint(mt_run / "checkpoints" / "last.pt")["method"]
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, method_state[f"teacher.{name}"]), name
    differs = any(
        not torch.equal(value, student.model.state_dict()[name])
        for name, value in teacher.state_dict().items()
    )
    assert differs  # the EMA teacher is not a copy of the student


def test_embed_writes_json_and_tsne_for_student_and_teacher(mt_run, tmp_path):
    result = embed_run(mt_run, tmp_path / "embed", progress=False)
    saved = json.loads((tmp_path / "embed" / "embed.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["method"] == "mt" and saved["checkpoint"].endswith("last.pt")
    split = (mt_run / "split.csv").read_text().splitlines()
    assert saved["num_samples"] == sum(line.endswith(",test") for line in split)
    for model in ("student", "teacher"):
        stats = saved[model]
        assert -1 <= stats["intra_class_cosine"] <= 1
        assert 0 < stats["centroid_distance"] <= 2
    assert saved["student"] != saved["teacher"]
    with Image.open(tmp_path / "embed" / saved["tsne"]) as image:
        assert image.width > image.height  # two panels side by side


def without_teacher(run: Path, out: Path) -> Path:
    """A copy of `run` whose last.pt holds a `ce` run: the student only, no teacher."""
    copy = shutil.copytree(run, out)
    state = load_checkpoint(copy / "checkpoints" / "last.pt")
    state["method"] = {k: v for k, v in state["method"].items() if not k.startswith("teacher.")}
    state["config"]["method"]["name"] = "ce"
    save_checkpoint(state, copy / "checkpoints" / "last.pt")
    return copy


def test_a_run_without_teacher_shows_the_student_and_says_so(mt_run, tmp_path, capsys):
    ce_run = without_teacher(mt_run, tmp_path / "ce")
    assert main(["embed", str(mt_run), str(ce_run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "'ce' has no teacher" in out
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["mt"], ["ce"])]
    assert [row[:3] for row in table] == [
        ["mt", "mt", "student"],
        ["mt", "mt", "teacher"],
        ["ce", "ce", "student"],
    ]
    saved = json.loads((tmp_path / "out" / "1-ce" / "embed.json").read_text())
    assert saved["teacher"] is None and "no teacher" in saved["teacher_note"]
    assert (tmp_path / "out" / "1-ce" / "tsne.png").is_file()
