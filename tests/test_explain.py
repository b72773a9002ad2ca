"""`crckd explain`: Grad-CAM overlays, default layers per backbone family, bad layer names."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import write_image
from crckd.cli import EXIT_USER_ERROR, main
from crckd.data import HAM10000_CLASSES
from crckd.models import build_model
from crckd.tools.explain import default_layer, explain_images, resolve_layer


@pytest.fixture(scope="module")
def checkpoint(ce_run) -> Path:
    """best.pt of the shared `ce` run (32 px: resnet18's layer4 map is 1 x 1, layer3's 2 x 2)."""
    return ce_run / "checkpoints" / "best.pt"


@pytest.fixture
def images(tmp_path) -> Path:
    """Three images of different sizes and formats; two share a stem."""
    write_image(tmp_path / "images" / "a.jpg", size=(40, 30), seed=1)
    write_image(tmp_path / "images" / "b.png", size=(23, 57), seed=2)
    write_image(tmp_path / "images" / "more" / "a.png", size=(64, 64), seed=3)
    return tmp_path / "images"


def test_overlays_have_each_images_size(checkpoint, images, tmp_path):
    out = tmp_path / "cam"
    table = explain_images(checkpoint, [images], out, batch_size=2, progress=False)
    assert len(table) == 3
    assert table["overlay"].is_unique
    assert set(table["layer"]) == {"backbone.layer4"}
    for row in table.itertuples():
        with Image.open(row.path) as source, Image.open(out / row.overlay) as overlay:
            assert overlay.size == source.size
            assert overlay.mode == "RGB"
        assert row.predicted in HAM10000_CLASSES and row.explained == row.predicted
    assert pd.read_csv(out / "explain.csv")["overlay"].tolist() == table["overlay"].tolist()


def test_a_chosen_class_and_a_short_layer_name(checkpoint, images, tmp_path):
    out = tmp_path / "cam"
    args = ["explain", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*args, "--layer", "layer3", "--class", "nv", str(images / "b.png")]) == 0
    table = pd.read_csv(out / "explain.csv")
    assert table["explained"].tolist() == ["nv"] and table["layer"].tolist() == ["backbone.layer3"]
    with Image.open(out / "b_gradcam.png") as overlay:
        assert overlay.size == (23, 57)


def test_an_unknown_layer_exits_2_listing_valid_ones(checkpoint, images, tmp_path, capsys):
    args = ["explain", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "cam")]
    assert main([*args, "--layer", "layer9", str(images)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "layer9" in err
    assert "backbone.layer4" in err and "backbone.layer1.0" in err
    assert not (tmp_path / "cam").exists()


def test_an_unknown_class_exits_2(checkpoint, images, tmp_path, capsys):
    args = ["explain", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "cam")]
    assert main([*args, "--class", "melanoma", str(images)]) == EXIT_USER_ERROR
    assert "melanoma" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backbone", "layer"),
    [
        ("resnet18", "backbone.layer4"),
        ("densenet121", "backbone.features.norm5"),
        ("efficientnet_b0", "backbone.bn2"),
        ("mobilenetv3_small_050", "backbone.blocks.5"),
        ("convnext_atto", "backbone.stages.3"),
        ("regnetx_002", "backbone.s4.b7.conv3.conv"),  # no family entry: the last Conv2d
    ],
)
def test_default_layer_is_the_last_spatial_map(backbone, layer):
    model = build_model(backbone, 3).eval()
    assert default_layer(model) == layer
    _, module = resolve_layer(model, None)
    shapes = []
    module.register_forward_hook(lambda _m, _i, output: shapes.append(output.shape))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert len(shapes[0]) == 4 and shapes[0][-1] == 2  # [B, C, H, W] at stride 32
