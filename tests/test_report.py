"""`crckd report`: calibration numbers, the HTML page and its PNGs, and the page in Chromium."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crckd.cli import EXIT_USER_ERROR, main
from crckd.data import HAM10000_CLASSES
from crckd.engine.metrics import SCALAR_METRICS
from crckd.tools.compare import collect, differences, plan_runs
from crckd.tools.report import (
    expected_calibration_error,
    load_run,
    reliability_bins,
    run_labels,
    write_report,
)


@pytest.fixture(scope="module")
def report(ce_run, tmp_path_factory):
    """The report of that run, written once."""
    return write_report([ce_run], tmp_path_factory.mktemp("report"), progress=False)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])


def page_references(index: Path) -> _Images:
    parser = _Images()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def test_ece_and_bins_match_a_hand_computation():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    # top-1 confidences 0.9, 0.8, 0.6, 0.7; correct: yes, no, yes, yes. With 3 bins:
    # (1/3, 2/3] holds 0.6 (accuracy 1, confidence 0.6);
    # (2/3, 1] holds 0.9, 0.8, 0.7 (accuracy 2/3, confidence 0.8).
    # ECE = 1/4 * |1 - 0.6| + 3/4 * |2/3 - 0.8| = 0.1 + 0.1 = 0.2
    assert expected_calibration_error(probs, labels, n_bins=3) == pytest.approx(0.2)
    bins = reliability_bins(probs, labels, n_bins=3)
    assert bins["count"].tolist() == [0, 1, 3]
    assert bins["accuracy"].iloc[2] == pytest.approx(2 / 3)
    assert bins["confidence"].iloc[1] == pytest.approx(0.6)


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    bins = reliability_bins(probs, np.array([1, 0]), n_bins=2)
    assert bins["count"].tolist() == [1, 1]  # 0.5 in (0, 0.5], 1.0 in (0.5, 1]
    # the first is wrong (argmax 0, label 1) at confidence 0.5; the second right at 1.0
    assert expected_calibration_error(probs, np.array([1, 0]), n_bins=2) == pytest.approx(0.25)


def test_perfectly_calibrated_one_hot_predictions_have_zero_ece():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0


def test_one_run_report_shows_every_png_it_wrote(ce_run, report):
    result, out = report, report.index.parent
    assert result.index.name == "index.html" and result.notes == []
    page = page_references(result.index)
    written = {p.name for p in out.glob("*.png")}
    assert set(page.sources) == written
    assert {
        "run0-losses.png",
        "run0-validation.png",
        "run0-confusion.png",
        "run0-roc.png",
        "run0-reliability.png",
    } <= written
    for link in page.links:  # only local files that exist: nothing from the network
        assert not re.match(r"^[a-z]+:", link), link
        assert (out / link).is_file(), link
    for name in written:
        with Image.open(out / name) as image:
            assert image.width > 100 and image.height > 100
    text = result.index.read_text(encoding="utf-8")
    for name in HAM10000_CLASSES:
        assert f"<td>{name}</td>" in text
    metrics = json.loads((ce_run / "metrics.json").read_text())
    assert f"{metrics['balanced_accuracy']:.4f}" in text
    run = load_run(ce_run, "ce", progress=False)
    ece = expected_calibration_error(run.probs, run.labels)
    shown = re.search(r"ECE \(top-1, 15 bins\)</th>\s*<td>([\d.]+)</td>", text)
    assert float(shown.group(1)) == pytest.approx(ece, abs=5e-5)
    assert len(run.labels) == metrics["num_samples"]
    assert np.array_equal(
        np.bincount(run.labels, minlength=len(HAM10000_CLASSES)),
        np.sum(metrics["confusion_matrix"], axis=1),
    )


def test_several_runs_are_compared_side_by_side(ce_run, tmp_path):
    other = shutil.copytree(ce_run, tmp_path / "ce_copy")
    out = tmp_path / "compare"
    assert main(["report", str(ce_run), str(other), "--out", str(out)]) == 0
    page = page_references(out / "index.html")
    assert "compare-validation.png" in page.sources
    assert {"run0-roc.png", "run1-roc.png"} <= set(page.sources)
    assert set(page.sources) == {p.name for p in out.glob("*.png")}
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "<th>ce</th>" in text and "<th>ce_copy</th>" in text


def test_a_comparison_report_shows_the_differences_to_the_reference(ce_run, tmp_path):
    runs = [shutil.copytree(ce_run, tmp_path / "cmp" / m / "seed0") for m in ("ce", "mt")]
    frame = collect(tmp_path / "cmp", plan_runs(["ce", "mt"], [0]))
    diff = differences(frame, tmp_path / "cmp", "ce", resamples=100)
    out = tmp_path / "report"
    write_report(runs, out, progress=False, differences=diff)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "<h2>differences to ce (95 % intervals)</h2>" in text
    # The same predictions: no difference on any resample of the test images.
    assert text.count("<td>+0.000 [+0.000, +0.000]</td>") == len(SCALAR_METRICS)
    assert "mt: 1 run paired with ce, so no interval over runs" in text
    assert "every run is within noise of its ce run on every metric" in text


def test_several_runs_without_out_exit_2(ce_run, capsys):
    assert main(["report", str(ce_run), str(ce_run)]) == EXIT_USER_ERROR
    assert "--out" in capsys.readouterr().err


def test_the_saved_test_predictions_are_the_probabilities_of_the_selected_student(ce_run, tmp_path):
    """The report reads test_predictions.csv, so it needs neither best.pt nor the images;
    a run without that file (made before crckd wrote it) runs best.pt instead, to the same
    probabilities."""
    saved = load_run(ce_run, "ce", progress=False)
    older = shutil.copytree(
        ce_run, tmp_path / "older", ignore=shutil.ignore_patterns("test_predictions.csv")
    )
    rerun = load_run(older, "ce", progress=False)
    assert saved.note is None and rerun.note is None
    np.testing.assert_array_equal(saved.labels, rerun.labels)
    np.testing.assert_allclose(saved.probs, rerun.probs, atol=1e-6)
    moved = shutil.copytree(ce_run, tmp_path / "moved", ignore=shutil.ignore_patterns("*.pt"))
    out = tmp_path / "report"
    result = write_report([moved], out, data_root="/nowhere", progress=False)
    assert result.notes == []
    assert {"run0-roc.png", "run0-reliability.png"} <= set(page_references(result.index).sources)


def test_missing_test_images_leave_roc_and_calibration_out(ce_run, tmp_path, capsys):
    """A run without test_predictions.csv, whose images have moved."""
    run = shutil.copytree(
        ce_run,
        tmp_path / "run",
        ignore=shutil.ignore_patterns("last.pt", "test_predictions.csv"),
    )
    out = run / "report"  # the default output folder, with figures of an earlier report
    out.mkdir()
    (out / "run7-roc.png").write_bytes(b"stale")
    (out / "mine.png").write_bytes(b"not the report's")
    assert main(["report", str(run), "--data-root", "/nowhere"]) == 0
    assert "nowhere" in capsys.readouterr().out
    page = page_references(out / "index.html")
    assert "run0-confusion.png" in page.sources
    assert "run0-roc.png" not in page.sources
    assert not (out / "run7-roc.png").exists()
    assert set(page.sources) == {p.name for p in out.glob("*.png")} - {"mine.png"}


def test_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == EXIT_USER_ERROR
    assert "epochs.csv" in capsys.readouterr().err


# --- in a browser --------------------------------------------------------------------------

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({total: images.length, broken: broken.map((i) => i.src)});
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def images_in_browser(index: Path, tmp_path: Path) -> dict:
    """Open a copy of the page with a script that reports each <img>'s naturalWidth on load."""
    probe = index.with_name("_image_check.html")
    probe.write_text(index.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    probe.unlink()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_every_image_loads_in_headless_chromium(report, tmp_path):
    out = shutil.copytree(report.index.parent, tmp_path / "report")
    check = images_in_browser(out / "index.html", tmp_path)
    assert check["total"] == len(list(out.glob("*.png"))) >= 5
    assert check["broken"] == []
    screenshot = tmp_path / "report.png"  # kept with pytest's tmp folders, to look at
    chromium(
        tmp_path,
        "--hide-scrollbars",
        "--window-size=1280,3000",
        f"--screenshot={screenshot}",
        (out / "index.html").as_uri(),
    )
    with Image.open(screenshot) as image:
        assert image.size == (1280, 3000)
        assert np.unique(np.asarray(image.convert("L"))).size > 50  # not a blank page
    # the probe notices a broken image, so a pass above means something
    (out / "run0-roc.png").unlink()
    assert images_in_browser(out / "index.html", tmp_path)["broken"] != []


def test_run_labels_use_as_much_of_the_path_as_tells_runs_apart(tmp_path):
    a, b = tmp_path / "cmp" / "ce" / "seed0", tmp_path / "cmp" / "crckd" / "seed0"
    assert run_labels([a, b]) == ["ce/seed0", "crckd/seed0"]
    assert run_labels([a, tmp_path / "other"]) == ["seed0", "other"]
    assert run_labels([a, a]) == ["0:seed0", "1:seed0"]
