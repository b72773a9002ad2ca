"""`crckd export` and `crckd predict` with an exported model: parity on real images, the card."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from crckd.cli import EXIT_USER_ERROR, main
from crckd.data import eval_transform, list_images, open_rgb, sample_root
from crckd.engine import load_student
from crckd.engine.metrics import SCALAR_METRICS
from crckd.tools import export as export_module
from crckd.tools.export import ParityError, card_path, export_student, training_data

SAMPLE_IMAGES = sorted(list_images([sample_root()]))[:24]
CARD_KEYS = {
    "format",
    "model_file",
    "model_format",
    "input",
    "output",
    "classes",
    "image_size",
    "normalization",
    "training_data",
    "test_metrics",
    "parity",
    "crckd_version",
}


@pytest.fixture(scope="module")
def onnx_model(ce_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "student.onnx"
    args = ["--checkpoint", str(ce_run / "checkpoints" / "best.pt"), "--out", str(out)]
    assert main(["export", *args, "--format", "onnx", "--max-images", "24"]) == 0
    return out


def torch_probs(ce_run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of best.pt on the sample images, computed here, and the input batch."""
    student = load_student(ce_run / "checkpoints" / "best.pt")
    transform = eval_transform(student.image_size, student.normalization)
    batch = torch.stack([transform(open_rgb(p)) for p in SAMPLE_IMAGES])
    with torch.no_grad():
        return torch.softmax(student.model(batch).logits, dim=1).numpy(), batch.numpy()


def test_onnx_matches_pytorch_on_the_sample_images(ce_run, onnx_model):
    expected, batch = torch_probs(ce_run)
    session = onnxruntime.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": batch})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)  # probabilities, not logits
    single = session.run(None, {"image": batch[:1]})[0]  # the batch axis is dynamic
    assert np.abs(single - expected[:1]).max() <= 1e-4


def test_the_model_card_has_what_a_user_needs(ce_run, onnx_model):
    card = json.loads(card_path(onnx_model).read_text())
    assert set(card) >= CARD_KEYS
    assert card["model_file"] == "student.onnx" and card["model_format"] == "onnx"
    assert card["output"]["kind"] == "probabilities"
    student = load_student(ce_run / "checkpoints" / "best.pt")
    assert card["classes"] == list(student.classes)
    assert card["image_size"] == student.image_size
    assert card["normalization"] == {
        "mean": list(student.normalization[0]),
        "std": list(student.normalization[1]),
    }
    assert card["training_data"]["licence"].startswith("CC BY-NC-SA 4.0")
    assert "Tschandl" in card["training_data"]["citation"]
    metrics = json.loads((ce_run / "metrics.json").read_text())
    for key in SCALAR_METRICS:
        assert card["test_metrics"][key] == metrics[key]
    assert card["parity"]["num_images"] == 24 and card["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_pytorch_and_names_no_metrics_for_last_pt(ce_run, tmp_path):
    result = export_student(
        ce_run / "checkpoints" / "last.pt",
        tmp_path / "student.pt",
        fmt="torchscript",
        images=SAMPLE_IMAGES,
        progress=False,
    )
    assert result.max_abs_diff <= 1e-4 and result.num_images == len(SAMPLE_IMAGES)
    expected, batch = torch_probs(ce_run)  # best.pt == last.pt after one epoch
    module = torch.jit.load(str(result.model))
    with torch.no_grad():
        got = module(torch.from_numpy(batch)).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    card = json.loads(result.card.read_text())
    assert card["model_format"] == "torchscript"
    assert card["test_metrics"] is None  # metrics.json describes best.pt, not last.pt


def test_predict_with_the_onnx_model_matches_the_checkpoint(ce_run, onnx_model, tmp_path):
    images = [str(p) for p in SAMPLE_IMAGES]
    checkpoint = str(ce_run / "checkpoints" / "best.pt")
    a_csv, b_csv = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    assert main(["predict", "--checkpoint", checkpoint, "--out", a_csv, *images]) == 0
    assert (
        main(["predict", "--model", str(onnx_model), "--batch-size", "5", "--out", b_csv, *images])
        == 0
    )
    a, b = pd.read_csv(a_csv), pd.read_csv(b_csv)
    assert a["path"].tolist() == b["path"].tolist() == images
    assert a["predicted"].tolist() == b["predicted"].tolist()
    columns = [c for c in a.columns if c.startswith("prob_")]
    assert np.abs(a[columns].to_numpy() - b[columns].to_numpy()).max() <= 1e-4


def test_an_onnx_model_without_its_card_exits_2(onnx_model, tmp_path, capsys):
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx_model.read_bytes())
    code = main(["predict", "--model", str(lonely), "--out", str(tmp_path / "p.csv"), "x.jpg"])
    assert code == EXIT_USER_ERROR
    assert "lonely.onnx.card.json" in capsys.readouterr().err


def test_a_parity_failure_writes_no_model(ce_run, tmp_path, monkeypatch):
    real_runner = export_module._runner

    def off_by_a_little(path, fmt):
        run = real_runner(path, fmt)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export_module, "_runner", off_by_a_little)
    with pytest.raises(ParityError, match=r"1\.00e-03"):
        export_student(
            ce_run / "checkpoints" / "best.pt",
            tmp_path / "student.pt",
            fmt="torchscript",
            images=SAMPLE_IMAGES[:4],
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_licences_of_the_other_datasets():
    assert "non-commercial" in training_data("aptos")["licence"]
    assert training_data("csv")["licence"].startswith("unknown")
