"""Dataset layouts, their errors, image reading, ImageDataset and the shipped sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import HAM_PARTS, make_ham_layout, make_imagefolder_layout, write_image
from crckd.data import (
    APTOS_CLASSES,
    HAM10000_CLASSES,
    ImageDataset,
    check_no_group_leak,
    eval_transform,
    list_images,
    load_table,
    make_split,
    open_rgb,
    sample_root,
    split_indices,
)
from crckd.errors import CrckdError, DataError


def _metadata(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "HAM10000_metadata.csv")


# --- HAM10000 ----------------------------------------------------------------------------------


def test_ham_loads_labels_paths_and_lesion_groups(ham_root: Path) -> None:
    table = load_table("ham10000", ham_root)
    meta = _metadata(ham_root)
    frame = table.frame
    assert table.name == "ham10000" and table.classes == HAM10000_CLASSES and not table.ordinal
    assert frame["image_id"].tolist() == meta["image_id"].tolist()
    assert [table.classes[y] for y in frame["label"]] == meta["dx"].tolist()
    assert frame["group"].tolist() == meta["lesion_id"].tolist()
    assert frame["group"].nunique() < len(frame)  # some lesions hold several images
    for image_id, path in zip(frame["image_id"], frame["path"], strict=True):
        assert Path(path).is_absolute() and Path(path).is_file()
        assert Path(path).name == f"{image_id}.jpg"
    assert {Path(p).parent.name for p in frame["path"]} == set(HAM_PARTS)


@pytest.mark.parametrize("folders", [("HAM10000_images",), ("images",), ("download/all",)])
def test_ham_single_or_nested_image_folder(tmp_path: Path, folders: tuple[str, ...]) -> None:
    root = make_ham_layout(tmp_path / "ham", n_per_class=2, folders=folders)
    table = load_table("ham10000", root)
    assert len(table.frame) == 14
    assert all(Path(p).parent == root / folders[0] for p in table.frame["path"])


def test_ham_duplicate_download_folders_pick_one_deterministically(tmp_path: Path) -> None:
    root = make_ham_layout(tmp_path / "ham", n_per_class=1, folders=("HAM10000_images_part_1",))
    shutil.copytree(root / "HAM10000_images_part_1", root / "ham10000_images_part_1")
    table = load_table("ham10000", root)
    assert {Path(p).parent.name for p in table.frame["path"]} == {"HAM10000_images_part_1"}


def test_ham_metadata_with_bom(tmp_path: Path) -> None:
    root = make_ham_layout(tmp_path / "ham", n_per_class=1, encoding="utf-8-sig")
    assert (root / "HAM10000_metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_table("ham10000", root).frame["group"].str.startswith("HAM_").all()


def test_ham_missing_images_are_named(ham_root: Path) -> None:
    for image_id in ("ISIC_0000003", "ISIC_0000010"):
        next(ham_root.rglob(f"{image_id}.jpg")).unlink()
    with pytest.raises(DataError, match=r"2 image.*HAM10000_metadata\.csv.*ISIC_0000003.*10"):
        load_table("ham10000", ham_root)
    assert len(load_table("ham10000", ham_root, check_files=False).frame) == 28


def test_ham_unknown_dx_names_row_and_value(ham_root: Path) -> None:
    meta = _metadata(ham_root)
    meta.loc[2, "dx"] = "melanoma"
    meta.to_csv(ham_root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv, line 4: dx 'melanoma'"):
        load_table("ham10000", ham_root)


def test_ham_duplicate_image_id(ham_root: Path) -> None:
    meta = _metadata(ham_root)
    meta.loc[5, "image_id"] = meta.loc[4, "image_id"]
    meta.to_csv(ham_root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(DataError, match=r"duplicate image_id.*ISIC_0000004"):
        load_table("ham10000", ham_root)


def test_ham_missing_columns_named_with_file(ham_root: Path) -> None:
    _metadata(ham_root).drop(columns=["dx", "lesion_id"]).to_csv(
        ham_root / "HAM10000_metadata.csv", index=False
    )
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv lacks column\(s\) lesion_id, dx"):
        load_table("ham10000", ham_root)


def test_ham_missing_csv_and_missing_root(tmp_path: Path, ham_root: Path) -> None:
    (ham_root / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match=r"CSV file not found: .*HAM10000_metadata\.csv"):
        load_table("ham10000", ham_root)
    with pytest.raises(DataError, match=r"dataset folder not found: .*nowhere"):
        load_table("ham10000", tmp_path / "nowhere")


def test_fixed_classes_cannot_change(ham_root: Path) -> None:
    assert load_table("ham10000", ham_root, classes=HAM10000_CLASSES).classes == HAM10000_CLASSES
    with pytest.raises(DataError, match="fixed classes"):
        load_table("ham10000", ham_root, classes=("nv", "mel"))


def test_unknown_dataset_lists_valid_names(ham_root: Path) -> None:
    with pytest.raises(DataError, match=r"'isic'.*ham10000, aptos, csv, imagefolder"):
        load_table("isic", ham_root)


def test_data_error_is_a_crckd_error() -> None:
    assert issubclass(DataError, CrckdError)


# --- APTOS -------------------------------------------------------------------------------------


def test_aptos_loads_png_and_jpg(aptos_root: Path) -> None:
    table = load_table("aptos", aptos_root)
    meta = pd.read_csv(aptos_root / "train.csv", dtype={"id_code": str})
    assert table.name == "aptos" and table.classes == APTOS_CLASSES and table.ordinal
    assert table.frame["image_id"].tolist() == meta["id_code"].tolist()
    assert table.frame["label"].tolist() == meta["diagnosis"].tolist()
    assert table.frame["group"].tolist() == table.frame["image_id"].tolist()
    assert {Path(p).suffix for p in table.frame["path"]} == {".png", ".jpg"}
    assert all(Path(p).stem == i for p, i in zip(table.frame["path"], meta["id_code"], strict=True))
    assert all(Path(p).is_file() for p in table.frame["path"])


def test_aptos_grade_out_of_range(aptos_root: Path) -> None:
    meta = pd.read_csv(aptos_root / "train.csv", dtype=str)
    meta.loc[0, "diagnosis"] = "5"
    meta.to_csv(aptos_root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train\.csv, line 2: diagnosis '5'"):
        load_table("aptos", aptos_root)


def test_aptos_missing_image(aptos_root: Path) -> None:
    next((aptos_root / "train_images").glob("000000000004.*")).unlink()
    with pytest.raises(DataError, match=r"1 image.*train\.csv.*train_images: 000000000004"):
        load_table("aptos", aptos_root)


def test_aptos_missing_image_folder(aptos_root: Path) -> None:
    shutil.rmtree(aptos_root / "train_images")
    with pytest.raises(DataError, match="train_images"):
        load_table("aptos", aptos_root)


# --- csv and imagefolder -----------------------------------------------------------------------


def _csv_root(tmp_path: Path, labels: list[str], *, group: list[str] | None = None) -> Path:
    root = tmp_path / "csvdata"
    paths = []
    for i in range(len(labels)):
        write_image(root / "imgs" / f"{i}.png", seed=i)
        paths.append(f"imgs/{i}.png")
    paths[0] = str(root / "imgs" / "0.png")  # absolute paths are allowed too
    columns = {"path": paths, "label": labels} | ({"group": group} if group else {})
    pd.DataFrame(columns).to_csv(root / "labels.csv", index=False, encoding="utf-8-sig")
    return root


def test_csv_layout_with_string_labels_and_groups(tmp_path: Path) -> None:
    labels = ["tumour", "normal", "tumour", "stroma"]
    root = _csv_root(tmp_path, labels, group=["a", "a", "b", ""])
    table = load_table("csv", root)
    assert table.classes == ("normal", "stroma", "tumour")
    assert table.frame["label"].tolist() == [2, 0, 2, 1]
    assert table.frame["group"].tolist() == ["a", "a", "b", "imgs/3.png"]
    assert table.frame["path"].tolist() == [str(root / "imgs" / f"{i}.png") for i in range(4)]


def test_csv_layout_integer_labels_sort_numerically(tmp_path: Path) -> None:
    table = load_table("csv", _csv_root(tmp_path, ["10", "2", "2", "0"]))
    assert table.classes == ("0", "2", "10")
    assert table.frame["label"].tolist() == [2, 1, 1, 0]


def test_csv_layout_given_classes_accept_names_and_indices(tmp_path: Path) -> None:
    root = _csv_root(tmp_path, ["cat", "1", "dog", "0"])
    table = load_table("csv", root, classes=["cat", "dog"])
    assert table.frame["label"].tolist() == [0, 1, 1, 0]
    with pytest.raises(DataError, match=r"labels\.csv, line 4: label 'dog'"):
        load_table("csv", root, classes=["cat", "bird"])


def test_csv_layout_custom_csv_and_missing_column(tmp_path: Path) -> None:
    root = _csv_root(tmp_path, ["a", "b"])
    (root / "labels.csv").rename(root / "mine.csv")
    assert len(load_table("csv", root, csv="mine.csv").frame) == 2
    pd.DataFrame({"file": ["imgs/0.png"], "label": ["a"]}).to_csv(root / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv lacks column\(s\) path"):
        load_table("csv", root, csv=root / "bad.csv")


def test_csv_layout_missing_file_is_named(tmp_path: Path) -> None:
    root = _csv_root(tmp_path, ["a", "b", "a"])
    (root / "imgs" / "2.png").unlink()
    with pytest.raises(DataError, match=r"1 image.*labels\.csv.*imgs/2\.png"):
        load_table("csv", root)


def test_imagefolder_layout(tmp_path: Path) -> None:
    root = make_imagefolder_layout(tmp_path / "folder", ("b_malignant", "a_benign"), 2)
    (root / ".ipynb_checkpoints").mkdir()
    table = load_table("imagefolder", root)
    assert table.classes == ("a_benign", "b_malignant")
    assert table.frame["label"].tolist() == [0, 0, 1, 1]
    assert table.frame["image_id"].tolist()[:2] == ["a_benign/img0.png", "a_benign/img1.png"]
    reordered = load_table("imagefolder", root, classes=["b_malignant", "a_benign"])
    assert reordered.frame["label"].tolist() == [0, 0, 1, 1]
    assert reordered.frame["image_id"][0] == "b_malignant/img0.png"
    (root / "c_empty").mkdir()
    with pytest.raises(DataError, match="c_empty holds no images"):
        load_table("imagefolder", root)


# --- files and images --------------------------------------------------------------------------


def test_list_images_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b/2.png", "b/1.JPG", "a.tif", "b/sub/0.jpeg"):
        write_image(tmp_path / "in" / name)
    (tmp_path / "in" / "notes.txt").write_text("x")
    single = write_image(tmp_path / "single.bmp")
    found = list_images([tmp_path / "in", str(single)])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["in/a.tif", "in/b/1.JPG", "in/b/2.png", "in/b/sub/0.jpeg", "single.bmp"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or folder: .*ghost"):
        list_images([tmp_path / "ghost"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no image files .*empty"):
        list_images([tmp_path / "empty"])
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"not an image file .*a\.txt"):
        list_images([tmp_path / "a.txt"])


def test_open_rgb_converts_and_names_unreadable_files(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    image = open_rgb(tmp_path / "gray.png")
    assert image.mode == "RGB" and image.size == (5, 4)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        open_rgb(tmp_path / "broken.jpg")


def _noisy(image: Image.Image) -> torch.Tensor:
    """A transform with randomness, to tell two views apart."""
    return eval_transform(8)(image) + torch.randn(3, 8, 8)


def test_image_dataset_items_and_two_views(ham_root: Path) -> None:
    frame = load_table("ham10000", ham_root).frame
    dataset = ImageDataset(frame["path"].tolist(), frame["label"].tolist(), _noisy, views=2)
    item = dataset[5]
    assert len(dataset) == len(frame)
    assert item["label"] == frame["label"][5] and item["index"] == 5
    assert item["image"].shape == item["image2"].shape == (3, 8, 8)
    assert not torch.equal(item["image"], item["image2"])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["image2"].shape == (4, 3, 8, 8) and batch["index"].tolist() == [0, 1, 2, 3]


def test_image_dataset_unlabelled_single_view(ham_root: Path) -> None:
    paths = load_table("ham10000", ham_root).frame["path"].tolist()
    item = ImageDataset(paths, None, eval_transform(8))[0]
    assert item["label"] == -1 and "image2" not in item
    assert torch.equal(item["image"], eval_transform(8)(open_rgb(paths[0])))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(paths, [0], eval_transform(8))


# --- shipped sample ----------------------------------------------------------------------------


def test_shipped_sample_loads_with_all_classes_and_is_small() -> None:
    root = sample_root()
    table = load_table("ham10000", root)
    counts = table.frame["label"].value_counts()
    assert set(counts.index) == set(range(7)) and counts.min() >= 20
    assert 250 <= len(table.frame) <= 350
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 3 * 2**20
    with Image.open(table.frame["path"][0]) as image:
        assert max(image.size) <= 80
    notice = (root / "LICENSE.txt").read_text()
    assert "CC BY-NC-SA 4.0" in notice and "doi:10.7910/DVN/DBW86T" in notice
    assert "Tschandl P., Rosendahl C., Kittler H." in notice and "Non-commercial" in notice


def test_shipped_sample_splits_without_leaks() -> None:
    table = load_table("ham10000", sample_root())
    split = make_split(table)
    train = split_indices(split, table, "train")
    assert set(table.frame["label"][train]) == set(range(7))
    check_no_group_leak(table, split)
