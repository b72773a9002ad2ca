"""`check_dataset` and `crckd check-data`: every problem of a dataset reported at once."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_ham_layout, make_imagefolder_layout, png_header, write_image
from crckd.cli import EXIT_USER_ERROR, main
from crckd.data import PIXEL_LIMIT_ENV, check_dataset, load_table, make_split, open_rgb, save_split
from crckd.errors import DataError

META = "HAM10000_metadata.csv"


def image_path(root: Path, image_id: str) -> Path:
    return next(root.rglob(f"{image_id}.*"))


def replace_image(root: Path, image_id: str, suffix: str) -> Path:
    """Delete the image of `image_id` and return the path of its replacement (same folder)."""
    old = image_path(root, image_id)
    old.unlink()
    return old.with_suffix(suffix)


@pytest.fixture
def broken_ham(ham_root: Path) -> Path:
    """A HAM10000 folder with one of each problem; ISIC_00000NN names the image at fault."""
    ids = [f"ISIC_{i:07d}" for i in range(28)]
    image_path(ham_root, ids[0]).unlink()  # missing
    image_path(ham_root, ids[1]).write_bytes(b"")  # zero bytes
    jpeg = image_path(ham_root, ids[2])
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # truncated
    image_path(ham_root, ids[3]).write_bytes(b"this is not a jpeg")  # undecodable
    replace_image(ham_root, ids[4], ".png").write_bytes(png_header(100_000, 100_000))  # bomb
    Image.new("L", (16, 12), 90).save(replace_image(ham_root, ids[5], ".jpg"))  # grayscale
    Image.new("RGBA", (16, 12)).save(replace_image(ham_root, ids[6], ".png"))
    grey16 = np.full((12, 16), 40000, dtype=np.uint16)
    Image.fromarray(grey16).save(replace_image(ham_root, ids[7], ".png"))
    meta = pd.read_csv(ham_root / META)
    meta.loc[8, "image_id"] = ids[9]  # duplicate id
    meta.loc[10, "dx"] = "melanoma"  # label outside the classes
    meta["notes"] = "x"  # an unused column
    meta.to_csv(ham_root / META, index=False, encoding="utf-8-sig")  # with a BOM
    return ham_root


def codes(findings) -> dict[str, list[str]]:
    return {finding.code: list(finding.items) for finding in findings}


def test_a_clean_dataset_is_ok(ham_root):
    report = check_dataset("ham10000", ham_root, progress=False)
    assert report.ok and not report.notes
    assert report.rows == report.images == 28


def test_every_problem_is_reported_at_once_with_names_and_counts(broken_ham):
    report = check_dataset("ham10000", broken_ham, progress=False)
    errors, notes = codes(report.errors), codes(report.notes)
    assert set(errors) == {
        "missing_file",
        "empty_file",
        "truncated_image",
        "undecodable_image",
        "too_many_pixels",
        "duplicate_id",
        "unknown_label",
    }
    assert set(notes) == {"converted_to_rgb", "csv_bom", "unused_columns"}
    assert [item.split(" ")[0] for item in errors["missing_file"]] == ["ISIC_0000000.jpg"]
    for code, image_id in [
        ("empty_file", 1),
        ("truncated_image", 2),
        ("undecodable_image", 3),
        ("too_many_pixels", 4),
    ]:
        assert len(errors[code]) == 1 and f"ISIC_{image_id:07d}" in errors[code][0], code
    assert errors["duplicate_id"] == ["ISIC_0000009"]
    assert errors["unknown_label"] == ["line 12: 'melanoma'"]
    converted = sorted(notes["converted_to_rgb"], key=lambda item: item.split("/")[1])
    assert [item.rsplit(" ", 1)[1] for item in converted] == ["(L)", "(RGBA)", "(I;16)"]
    assert notes["unused_columns"] == ["notes"]
    assert not report.ok
    assert report.rows == 28 - 2  # the duplicate and the bad label are left out
    text = report.format()
    assert "7 error(s)" in text and "ISIC_0000003" in text
    assert json.loads(json.dumps(report.to_dict()))["errors"][0]["count"] >= 1


def test_a_split_file_with_a_leaking_lesion_is_an_error(tmp_path):
    ham_root = make_ham_layout(tmp_path / "ham", n_per_class=8)
    table = load_table("ham10000", ham_root)
    split = make_split(table)
    lesion = table.frame.groupby("group").filter(lambda g: len(g) > 1)["image_id"]
    split[lesion.iloc[0]] = "test" if split[lesion.iloc[1]] != "test" else "val"
    save_split(split, tmp_path / "split.csv")
    report = check_dataset("ham10000", ham_root, split_file=tmp_path / "split.csv", progress=False)
    assert codes(report.errors).keys() == {"bad_split"}
    assert "cross sets" in report.errors[0].message


def test_a_class_without_training_images_is_an_error(tmp_path):
    ham_root = make_ham_layout(tmp_path / "ham", n_per_class=8)
    table = load_table("ham10000", ham_root)
    split = make_split(table)
    split[table.frame["label"].to_numpy() == 5] = "test"  # every df image, whole lesions
    save_split(split, tmp_path / "split.csv")
    report = check_dataset("ham10000", ham_root, split_file=tmp_path / "split.csv", progress=False)
    assert codes(report.errors) == {"class_without_images": ["df"]}


def test_csv_blank_values_and_imagefolder_empty_classes(tmp_path):
    root = tmp_path / "csvdata"
    for i in range(4):
        write_image(root / f"{i}.png", seed=i)
    (root / "labels.csv").write_text("path,label\n0.png,a\n1.png,\n2.png,b\n3.png,a\n")
    report = check_dataset("csv", root, progress=False)
    assert codes(report.errors) == {"blank_value": ["line 3"]}

    folders = make_imagefolder_layout(tmp_path / "folders")
    (folders / "empty").mkdir()
    report = check_dataset("imagefolder", folders, classes=["benign", "empty"], progress=False)
    assert codes(report.errors) == {"class_without_images": ["empty"]}


def test_nothing_to_check_still_raises(ham_root):
    (ham_root / META).unlink()
    with pytest.raises(DataError, match="CSV file not found"):
        check_dataset("ham10000", ham_root, progress=False)


def test_open_rgb_refuses_images_over_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))
    with pytest.raises(DataError, match=r"bomb\.png"):
        open_rgb(bomb)
    small = write_image(tmp_path / "small.png", size=(16, 12))
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "100")
    with pytest.raises(DataError, match=r"16x12 = 192 pixels, over the limit of 100"):
        open_rgb(small)
    assert open_rgb(small, max_pixels=192).size == (16, 12)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    with pytest.raises(DataError, match=PIXEL_LIMIT_ENV):
        open_rgb(small)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_raised_pixel_limit_lets_images_past_pils_own_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "200000000")
    big = tmp_path / "big.png"
    big.write_bytes(png_header(14_000, 13_000))  # 182 Mpx: over twice PIL's default limit
    with pytest.raises(DataError) as refused:
        open_rgb(big)
    assert "cannot read image" in str(refused.value)  # it got past the limits to decoding
    assert "bomb" not in str(refused.value)
    bigger = tmp_path / "bigger.png"
    bigger.write_bytes(png_header(14_000, 15_000))
    with pytest.raises(DataError, match="over the limit of 200000000"):
        open_rgb(bigger)


def test_32_bit_grey_images_are_scaled_as_16_bit_or_refused(tmp_path, ham_root):
    sixteen_in_32 = Image.fromarray(np.full((4, 4), 0x8000, dtype=np.int32), mode="I")
    sixteen_in_32.save(tmp_path / "i.tiff")
    assert np.asarray(open_rgb(tmp_path / "i.tiff")).max() == 128
    Image.fromarray(np.full((4, 4), 70_000, dtype=np.int32), mode="I").save(tmp_path / "big.tiff")
    with pytest.raises(DataError, match=r"70000\.\.70000 are outside 0\.\.65535"):
        open_rgb(tmp_path / "big.tiff")
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match="floating-point pixels"):
        open_rgb(tmp_path / "f.tiff")
    # check-data reports such an image before training (a TIFF under a .jpg name).
    path = load_table("ham10000", ham_root).frame["path"].iloc[0]
    Image.fromarray(np.full((12, 16), 0.5, dtype=np.float32), mode="F").save(path, format="TIFF")
    report = check_dataset("ham10000", ham_root, progress=False)
    assert not report.ok
    assert "floating-point pixels" in report.format()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16)).save(path)
    assert np.asarray(open_rgb(path)).max() == 128


def test_check_data_command_exit_codes(broken_ham, tmp_path, capsys):
    clean = make_ham_layout(tmp_path / "clean")
    assert main(["check-data", "--dataset", "ham10000", "--data-root", str(clean)]) == 0
    code = main(["check-data", "--dataset", "ham10000", "--data-root", str(broken_ham), "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_USER_ERROR
    report = json.loads(captured.out[captured.out.index("{") :])
    empty = next(error for error in report["errors"] if error["code"] == "empty_file")
    assert not report["ok"] and empty["count"] == 1 and "ISIC_0000001.jpg" in empty["examples"][0]
    assert "kind(s) of error" in captured.err
