"""Property-based tests: the config parser and the dataset readers either succeed or raise the
documented CrckdError subclass, whatever they are given; never another exception."""

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_ham_layout, write_image
from crckd.config import Config, parse_override
from crckd.data import ImageTable, check_dataset, load_split, load_table, open_rgb
from crckd.errors import ConfigError, DataError
from crckd.methods import build_config, load_config

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# --- config ------------------------------------------------------------------------------------

KEYS = ["data", "model", "method", "train", "output_dir", "root", "epochs", "name", "preset",
        "ccd", "weight", "image_size", "classes", "lr", "seed", "x", ""]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["ce", "crckd", "mt", "paper_faithful", "default", "auto", "1e-3", "2"]),
)
RAW = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
DOTTED = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4).map(".".join)
OVERRIDE = st.one_of(
    st.text(max_size=30),
    st.tuples(DOTTED, st.text(max_size=15)).map("=".join),
    st.tuples(DOTTED, st.sampled_from(["[", "{a: 1}", "!!python/object:os.system x", "- 1"])).map(
        "=".join
    ),
)


@SETTINGS
@given(RAW)
def test_build_config_validates_or_raises_config_error(raw):
    try:
        config = build_config(raw if isinstance(raw, dict) else {"data": raw})
    except ConfigError:
        return
    assert isinstance(config, Config)


@SETTINGS
@given(st.lists(OVERRIDE, max_size=4))
def test_overrides_parse_or_raise_config_error(overrides):
    try:
        for text in overrides:
            assert isinstance(parse_override(text), dict)
        config = load_config(overrides=overrides)
    except ConfigError:
        return
    assert isinstance(config, Config)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_config_files_load_or_raise_config_error(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with contextlib.suppress(ConfigError):
        load_config(path)


# --- dataset readers ---------------------------------------------------------------------------

IDS = [f"ISIC_{i:07d}" for i in range(8)] + ["0", "1", "2", "3"]
CELLS_BY_COLUMN = {  # mostly valid values, so that many tables load
    "path": ["0.png", "1.png", "2.png", "missing.png", "../0.png", "/abs.png"],
    "label": ["a", "b", "0", "1", "7", "-1", "A"],
    "age": ["50.0", ""],
    "group": ["g1", "g2", ""],
    "image_id": IDS,
    "lesion_id": ["HAM_1", "HAM_2", "HAM_3"],
    "dx": ["mel", "nv", "NV", "bcc", "akiec", "bkl", "df", "vasc", "melanoma"],
    "id_code": IDS,
    "diagnosis": ["0", "1", "4", "5", "-1", "+2", "1.0"],
    "split": ["train", "val", "test", "TEST", "holdout"],
}
ODD_CELLS = st.one_of(
    st.sampled_from(["", " ", "nan", "NA", '"', "a,b", "x\ny"]), st.text(max_size=8)
)
LAYOUT_COLUMNS = {
    "csv": ["path", "label", "group", "image_id"],
    "ham10000": ["lesion_id", "image_id", "dx", "age"],
    "aptos": ["id_code", "diagnosis"],
    "split": ["image_id", "split"],
}
ANY_COLUMN = st.one_of(st.sampled_from([*CELLS_BY_COLUMN, " path", "dx "]), st.text(max_size=6))


def rarely(draw, usual: st.SearchStrategy, odd: st.SearchStrategy, one_in: int = 8):
    """Draw from `odd` about one time in `one_in`, else from `usual`."""
    return draw(odd) if draw(st.integers(0, one_in - 1)) == 1 else draw(usual)


@st.composite
def csv_bytes(draw, layout: str) -> bytes:
    """A CSV that is often almost right: the layout's columns, odd cells, BOMs, ragged rows."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=120))
    sep = rarely(draw, st.just(","), st.sampled_from([";", "\t"]))
    known = LAYOUT_COLUMNS[layout]
    columns = rarely(draw, st.permutations(known), st.lists(ANY_COLUMN, min_size=1, max_size=5))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        row = [
            rarely(draw, st.sampled_from(CELLS_BY_COLUMN.get(column, ["x"])), ODD_CELLS, 40)
            for column in columns
        ]
        rows.append(rarely(draw, st.just(row), st.sampled_from([row[:-1], [*row, "x"]]), 30))
    lines = [sep.join(columns)] + [sep.join(row) for row in rows]
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    prefix = rarely(
        draw, st.sampled_from([b"", b"\xef\xbb\xbf"]), st.sampled_from([b"\xff\xfe", b"\x00"])
    )
    return prefix + text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One folder per layout, with a few images (one of them broken)."""
    base = tmp_path_factory.mktemp("layouts")
    csv_root = base / "csv"
    for i in range(3):
        write_image(csv_root / f"{i}.png", seed=i)
    (csv_root / "2.png").write_bytes(b"broken")
    ham = make_ham_layout(base / "ham", n_per_class=1)
    aptos = base / "aptos"
    for i in range(3):
        write_image(aptos / "train_images" / f"{i}.png", seed=i)
    return {"csv": csv_root, "ham10000": ham, "aptos": aptos}


LABEL_FILES = {"csv": "labels.csv", "ham10000": "HAM10000_metadata.csv", "aptos": "train.csv"}


@SETTINGS
@given(st.sampled_from(sorted(LABEL_FILES)), st.data(), st.booleans())
def test_dataset_readers_load_or_raise_data_error(folders, dataset, data, with_classes):
    content = data.draw(csv_bytes(dataset))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(shutil.copytree(folders[dataset], Path(scratch) / "root"))
        (root / LABEL_FILES[dataset]).write_bytes(content)
        classes = ["a", "b"] if with_classes and dataset == "csv" else None
        try:
            table = load_table(dataset, root, classes=classes)
        except DataError:
            table = None
        else:
            assert isinstance(table, ImageTable)
            assert table.frame["label"].between(0, len(table.classes) - 1).all()
            assert table.frame["image_id"].is_unique
        try:
            report = check_dataset(dataset, root, classes=classes, progress=False, workers=1)
        except DataError:
            assert table is None  # only what load_table also refuses stops the check
            return
        assert report.ok == (table is not None and not report.errors)
        if table is not None and not report.errors:
            assert report.rows == len(table.frame)


@SETTINGS
@given(csv_bytes("split"))
def test_split_files_load_or_raise_data_error(folders, tmp_path, content):
    table = load_table("ham10000", folders["ham10000"])
    path = tmp_path / "split.csv"
    path.write_bytes(content)
    try:
        split = load_split(path, table)
    except DataError:
        return
    assert list(split.index) == table.frame["image_id"].tolist()


def _image_bytes(suffix: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (9, 7), (200, 10, 40)).save(buffer, format=suffix)
    return buffer.getvalue()


VALID_IMAGES = [_image_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF", "GIF")]


@st.composite
def damaged_images(draw) -> bytes:
    """Valid images cut short or with bytes overwritten, or plain junk."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@SETTINGS
@given(damaged_images())
def test_damaged_images_open_as_rgb_or_raise_data_error(tmp_path, data):
    path = tmp_path / "image.png"
    path.write_bytes(data)
    try:
        opened = open_rgb(path).mode == "RGB"
    except DataError as err:
        assert str(path) in str(err)
        opened = False
    report = check_dataset("csv", _csv_root(tmp_path, path), progress=False, workers=1)
    assert opened or not report.ok  # the check is at least as strict as loading
    assert report.ok or report.errors[0].items[0].startswith("image.png")


def _csv_root(tmp_path: Path, image: Path) -> Path:
    (tmp_path / "labels.csv").write_text(f"path,label\n{image.name},a\n")
    return tmp_path
