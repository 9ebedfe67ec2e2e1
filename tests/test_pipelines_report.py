"""`featurehead report`: the HTML page of a head on a store, checked by parsing it (and by a screenshot).

One small real run is shared by the module: tiny PNG files (class names and file names with HTML special
characters, one unreadable image), a random-init VGG16 store, a logistic-regression head, `evaluate` and `report`.
"""

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.report.data import (
    headline_metrics,
    most_confident_mistakes,
    reliability,
    validation_statement,
    weights_statement,
)
from pipelines.report.html import Figure, Mistake, Page, render_page

FAST = ["--weights", "none", "--input-size", "32", "--pooling", "avg", "--batch-size", "16"]
CLASSES = ["cat", "dog", '<b>&"x', "$a$", "élan", "owl"]  # 6 > 5 classes: the page shows top-5 accuracy


class PageParser(HTMLParser):
    """The page as tags, attributes and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    parser = PageParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    return parser


def cli(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip()


def write_images(root: Path) -> Path:
    """6 classes x 8 noisy 32x40 PNGs (train 4, val 1, test 3 each) and a broken test image; returns the CSV."""
    rng = np.random.default_rng(0)
    lines = ["filename,label,split"]
    for c, label in enumerate(CLASSES):
        for i in range(8):
            base = np.zeros((32, 40, 3))
            base[..., c % 3] = 8 * c
            arr = np.clip(rng.normal(base + 90, 70), 0, 255).astype(np.uint8)
            name = f"c{c}/img {i}&<x>.png"
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / name)
            split = "train" if i < 4 else "val" if i < 5 else "test"
            quoted = label.replace('"', '""')
            lines.append(f'"{name}","{quoted}",{split}')
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    lines.append("c0/broken.png,cat,test")
    (root / "index.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "index.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Extract (from the base folder, with relative paths: the store records the images root `imgs`), train,
    evaluate and report; returns the base folder."""
    base = tmp_path_factory.mktemp("report")
    write_images(base / "imgs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert main(["-q", "extract", "imgs/index.csv", *FAST, "--out", "feats"]) == 1  # the broken image
        assert main(["-q", "train", "feats", "--head", "logreg", "--out", "head"]) == 0
        assert main(["-q", "evaluate", "head", "feats", "--split", "test", "--out", "eval"]) == 0
        assert main(["-q", "report", "head", "feats", "--split", "test", "--out", "rep"]) == 0
    metrics = json.loads((base / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] < 1.0, "the fixture needs mistakes to show"
    return base


def cards(page):
    return {a["data-metric"]: float(a["data-value"]) for t, a in page.tags if t == "div" and "data-metric" in a}


def test_numbers_are_evaluate_metrics_json(run):
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert json.loads((run / "rep" / "metrics.json").read_text()) == metrics  # the same file, the same code
    shown = cards(parse(run / "rep" / "index.html"))
    assert shown["accuracy"] == metrics["accuracy"] and shown["macro_f1"] == metrics["macro_f1"]
    recalls = [row["recall"] for row in metrics["per_class"].values() if row["support"] > 0]
    assert shown["balanced_accuracy"] == metrics["balanced_accuracy"]  # every headline number is metrics.json's
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert shown["top_5_accuracy"] == metrics["top_5_accuracy"]
    assert metrics["accuracy"] <= metrics["top_5_accuracy"] <= 1.0


def test_per_class_table_is_metrics_json_and_sortable(run):
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    page = parse(run / "rep" / "index.html")
    rows = [a["data-class"] for t, a in page.tags if t == "tr" and "data-class" in a]
    assert rows == list(metrics["per_class"])
    tables = [a for t, a in page.tags if t == "table" and a.get("id") == "per-class"]
    assert tables and "sortable" in tables[0]["class"]
    values = [a["data-value"] for t, a in page.tags if t == "td" and "data-value" in a]
    expected = []
    for name, row in metrics["per_class"].items():
        expected += [name, repr(row["precision"]), repr(row["recall"]), repr(row["f1"]), str(row["support"])]
    assert values == expected
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{}]  # one inline script (the sorting), nothing loaded


def test_every_referenced_file_exists_and_nothing_comes_from_the_network(run):
    page = parse(run / "rep" / "index.html")
    refs = [(t, a.get("src") or a.get("href")) for t, a in page.tags if "src" in a or "href" in a]
    images = [ref for t, ref in refs if t == "img"]
    assert len(images) >= 3 + 1  # confusion matrix, reliability diagram, thumbnails
    for tag, ref in refs:
        assert not ref.lower().startswith(("http:", "https:", "//", "data:", "file:")), (tag, ref)
        assert (run / "rep" / ref).is_file(), ref
    assert not [t for t, a in page.tags if t == "link"]
    raw = (run / "rep" / "index.html").read_text(encoding="utf-8")
    assert "http://" not in raw and "https://" not in raw and "url(" not in raw


def test_labels_and_file_names_are_escaped(run):
    raw = (run / "rep" / "index.html").read_text(encoding="utf-8")
    assert '<b>&"x' not in raw and "&lt;b&gt;&amp;&quot;x" in raw
    assert "&<x>" not in raw and "&amp;&lt;x&gt;.png" in raw  # file names `img N&<x>.png` in the gallery
    page = parse(run / "rep" / "index.html")
    assert "b" not in {t for t, _ in page.tags}  # the class name made no element
    assert '<b>&"x' in page.text and "$a$" in page.text  # and reads as itself


def test_gallery_shows_the_most_confident_mistakes_with_thumbnails(run):
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    n_wrong = metrics["n_samples"] - sum(np.diag(metrics["confusion_matrix"]))
    page = parse(run / "rep" / "index.html")
    thumbs = [a["src"] for t, a in page.tags if t == "img" and a["src"].startswith("thumbs/")]
    assert len(thumbs) == min(24, n_wrong) > 0
    assert sorted(p.name for p in (run / "rep" / "thumbs").iterdir()) == sorted(Path(s).name for s in thumbs)
    for src in thumbs:
        with Image.open(run / "rep" / src) as im:
            assert max(im.size) <= 160
    probabilities = [float(t.split("p=")[1]) for t in page.text if t.startswith(" p=")]
    assert len(probabilities) == len(thumbs) and probabilities == sorted(probabilities, reverse=True)


def test_failed_rows_the_run_and_the_random_init_notice(run):
    page = parse(run / "rep" / "index.html")
    text = " ".join(page.text)
    assert "Failed rows (1)" in text and "c0/broken.png" in page.text
    assert any("not an image file" in t for t in page.text)
    assert [a for t, a in page.tags if a.get("id") == "random-init"] and "NOT pretrained" in text
    manifest = json.loads((run / "head" / "manifest.json").read_text())
    assert validation_statement(manifest) in page.text  # "not recorded" until bundles record it
    assert manifest["fingerprint"] in page.text
    assert "the logreg head records no per-epoch history" in text


def test_cli_prints_the_page_last_and_says_not_pretrained(run, capsys, tmp_path):
    code, lines, err = cli(capsys, "report", run / "head", run / "feats", "--split", "test", "--out", tmp_path / "r",
                           "--images-root", run / "imgs", "--mistakes", "2")
    assert code == 0 and lines[-1] == str(tmp_path / "r" / "index.html")
    assert lines[0].startswith("evaluated on split 'test'") and "top-5-accuracy" in lines[0]
    assert any("NOT pretrained" in line for line in lines)
    assert "1 row of split 'test' failed at extraction; the page lists each with its reason" in lines
    thumbs = [a for t, a in parse(lines[-1]).tags if t == "img" and a["src"].startswith("thumbs/")]
    assert len(thumbs) == 2


def test_recorded_relative_root_missing_here_is_a_note_and_images_root_overrides_it(run, capsys, tmp_path):
    # a store of before roots were recorded whole records `imgs`, relative to where extract ran; from the test's
    # folder it is not there
    old = tmp_path / "feats"
    shutil.copytree(run / "feats", old)
    with h5py.File(old / "features.h5", "r+") as f:
        f.attrs["images_root"] = "imgs"
    code, lines, _ = cli(capsys, "report", run / "head", old, "--split", "test", "--out", tmp_path / "a")
    assert code == 0 and any("pass --images-root" in line for line in lines)
    page = parse(tmp_path / "a" / "index.html")
    assert not [a for t, a in page.tags if t == "img" and a["src"].startswith("thumbs/")]
    assert any("images root not found" in t for t in page.text)
    moved = tmp_path / "moved"
    shutil.copytree(run / "imgs", moved)
    code, lines, _ = cli(capsys, "report", run / "head", old, "--split", "test", "--out", tmp_path / "a",
                         "--images-root", moved)
    assert code == 0 and not any("pass --images-root" in line for line in lines)
    assert [a for t, a in parse(tmp_path / "a" / "index.html").tags if t == "img" and a["src"].startswith("thumbs/")]


def test_default_split_matches_evaluate_on_the_training_store(run, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(run)  # the bundle and the store named as a user in that folder would name them
    assert cli(capsys, "evaluate", "head", "feats", "--out", tmp_path / "e")[0] == 0
    code, lines, _ = cli(capsys, "report", "head", "feats", "--out", tmp_path / "r")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert code == 0 and metrics["evaluated_on"] == "held-out validation rows"
    assert cards(parse(tmp_path / "r" / "index.html"))["accuracy"] == metrics["accuracy"]


def test_a_second_report_replaces_its_thumbnails_only(run, capsys, tmp_path):
    out = tmp_path / "r"
    (out / "thumbs").mkdir(parents=True)
    (out / "thumbs" / "0123456789abcdef.png").write_bytes(b"old")
    (out / "thumbs" / "mine.txt").write_text("kept")
    code, _, _ = cli(capsys, "report", run / "head", run / "feats", "--split", "test", "--out", out,
                     "--images-root", run / "imgs", "--mistakes", "1")
    assert code == 0 and sorted(p.name for p in (out / "thumbs").iterdir())[-1] == "mine.txt"
    assert len(list((out / "thumbs").glob("*.png"))) == 1


def test_evaluate_into_a_report_folder_removes_the_report_it_makes_stale(run, capsys, tmp_path):
    """evaluate wrote a new metrics.json beside the old report's page, figures and thumbnails: the page showed the
    old numbers. It removes them (only the report's own files: another file in figures/ stays)."""
    out = tmp_path / "r"
    shutil.copytree(run / "rep", out)
    assert (out / "index.html").exists() and list((out / "figures").iterdir()) and list((out / "thumbs").iterdir())
    (out / "thumbs" / "mine.txt").write_text("kept")
    code, lines, _ = cli(capsys, "evaluate", run / "head", run / "feats", "--out", out)  # held-out rows, not test
    assert code == 0 and lines[-1] == str(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.name.startswith(".")) == [
        "confusion_matrix.png", "metrics.json", "thumbs", "thumbs/mine.txt"]
    assert json.loads((out / "metrics.json").read_text())["evaluated_on"] == "held-out validation rows"


def test_a_report_that_fails_leaves_no_page_of_the_old_one_beside_the_new_files(run, capsys, small_disk):
    """A full disk left the old index.html beside the new metrics.json and figures, nothing saying it was stale."""
    out = small_disk.path / "r"
    out.mkdir()
    (out / "index.html").write_text("<title>featurehead report: another head</title><p>its page</p>")
    small_disk.fill(leave=4096)  # room for metrics.json, not for the figures
    code, _, err = cli(capsys, "report", run / "head", run / "feats", "--split", "test", "--out", out)
    assert code == 2 and len(err.splitlines()) == 1 and "No space left" in err
    assert not (out / "index.html").exists()


def test_a_second_command_writing_the_same_folder_is_one_line(run, capsys, tmp_path):
    """Two at once mixed their files: one's metrics.json beside the other's confusion matrix, both exit 0."""
    import filelock

    out = tmp_path / "r"
    out.mkdir()
    with filelock.FileLock(out / ".featurehead.lock"):  # another evaluate or report, writing
        for command in ("evaluate", "report"):
            code, _, err = cli(capsys, command, run / "head", run / "feats", "--split", "test", "--out", out)
            assert code == 2 and err.endswith("is being written by another featurehead command (an evaluate or a "
                                              "report with the same --out?); re-run when it has finished"), err
    assert [p.name for p in out.iterdir()] == [".featurehead.lock"]
    assert cli(capsys, "report", run / "head", run / "feats", "--split", "test", "--out", out)[0] == 0


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(run, capsys, tmp_path, command):
    """`report --out site/` replaced the site's index.html; `report --out IMAGES/` added thumbs/ and figures/,
    which the next extract of that folder took for two new classes; both exit 0."""
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<h1>my site</h1>")
    (out / "about.html").write_text("<p>me</p>")
    (out / ".DS_Store").write_bytes(b"")
    code, _, err = cli(capsys, command, run / "head", run / "feats", "--split", "test", "--out", out)
    assert code == 2 and err == (f"featurehead {command}: error: {out} holds files that evaluate and report do not "
                                 "write (about.html, index.html); refusing to write among them: give --out a new or empty folder "
                                 "(or one they wrote)")
    assert sorted(p.name for p in out.iterdir()) == [".DS_Store", "about.html", "index.html"]
    assert (out / "index.html").read_text() == "<h1>my site</h1>"
    (out / "about.html").unlink()  # the name is report's, the page is not: still refused
    code, _, err = cli(capsys, command, run / "head", run / "feats", "--split", "test", "--out", out)
    assert code == 2 and "do not write (index.html)" in err and (out / "index.html").read_text() == "<h1>my site</h1>"
    (out / "index.html").unlink()  # only what they write (and hidden files): written over
    assert cli(capsys, command, run / "head", run / "feats", "--split", "test", "--out", out)[0] == 0
    assert cli(capsys, "report" if command == "evaluate" else "evaluate", run / "head", run / "feats", "--split",
               "test", "--out", out)[0] == 0  # each writes into the other's folder


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param(["nohead", "feats"], "no head bundle", id="bundle"),
        pytest.param(["head", "nostore"], "nostore", id="store"),
        pytest.param(["head", "feats", "--split", "holdout"], "`--split` values must be one of", id="split"),
        pytest.param(["head", "feats", "--images-root", "nowhere"], "`--images-root` must be a folder", id="root"),
        pytest.param(["head", "feats", "--mistakes", "-1"], "`--mistakes` must be a non-negative", id="mistakes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, capsys, monkeypatch, tmp_path, argv, match):
    monkeypatch.chdir(run)
    code, _, err = cli(capsys, "report", *argv, "--out", tmp_path / "r")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and match in err


def test_mlp_head_on_a_store_without_val_shows_learning_curves_and_evaluate_s_rows(run, capsys, monkeypatch,
                                                                                   tmp_path):
    # a copy of the store whose index has no "val" rows (a view rewrite: no model is built); the MLP then holds
    # rows of "train" out for early stopping, and the report without --split scores the rows evaluate scores
    shutil.copytree(run / "feats", tmp_path / "feats")
    index = (run / "imgs" / "index.csv").read_text(encoding="utf-8").replace(",val\n", ",train\n")
    (tmp_path / "index.csv").write_text(index, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "extract", "index.csv", "--images-root", run / "imgs", *FAST, "--out", "feats")[0] == 1
    assert cli(capsys, "train", "feats", "--head", "mlp", "--hidden", "8", "--epochs", "3", "--out", "mlp")[0] == 0
    assert cli(capsys, "evaluate", "mlp", "feats", "--out", "e")[0] == 0
    code, lines, _ = cli(capsys, "report", "mlp", "feats", "--out", "r")
    assert code == 0, lines
    page = parse(lines[-1])
    assert "figures/learning_curves.png" in [a["src"] for t, a in page.tags if t == "img"]
    assert (tmp_path / "r" / "figures" / "learning_curves.png").is_file()
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert cards(page)["accuracy"] == metrics["accuracy"] and metrics["n_samples"] > 0
    assert f"{metrics['evaluated_on']}: {metrics['n_samples']} images" in page.text
    # a logreg head's report into the same folder: the MLP's curves do not stay beside it
    assert cli(capsys, "report", run / "head", "feats", "--split", "test", "--out", "r")[0] == 0
    assert not (tmp_path / "r" / "figures" / "learning_curves.png").exists()


@pytest.mark.parametrize("head, no_val, listed, failed_of", [
    pytest.param(["logreg"], False, [], "split 'val' (the head's validation rows)", id="val"),
    pytest.param(["mlp", "--hidden", "8", "--epochs", "2"], True, ["c0/gone.png"],
                 "split 'train' (the held-out validation rows were drawn from its readable rows)", id="train-holdout"),
])
def test_failed_rows_on_the_training_store_are_those_of_the_evaluated_selection(run, capsys, monkeypatch, tmp_path,
                                                                               head, no_val, listed, failed_of):
    """Without --split, on the training store, the report scores the held-out validation rows, but its failed-rows
    list was every failed row of the store: here the broken test image too, and a missing train image that the
    'val' rows never came from."""
    shutil.copytree(run / "feats", tmp_path / "feats")
    index = (run / "imgs" / "index.csv").read_text(encoding="utf-8") + "c0/gone.png,cat,train\n"  # no such file
    if no_val:  # the mlp holds rows of "train" out instead
        index = index.replace(",val\n", ",train\n")
    (tmp_path / "index.csv").write_text(index, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "extract", "index.csv", "--images-root", run / "imgs", *FAST, "--out", "feats")[0] == 1
    assert cli(capsys, "train", "feats", "--head", *head, "--out", "h")[0] == 0
    code, lines, _ = cli(capsys, "report", "h", "feats", "--out", "r", "--mistakes", "0")
    assert code == 0, lines
    page = parse(lines[-1])
    rows = [a for t, a in page.tags if t == "table" and a.get("id") == "failed"]
    shown = [t for t in page.text if t in ("c0/gone.png", "c0/broken.png")]
    assert shown == listed and bool(rows) == bool(listed) and f"Failed rows ({len(listed)})" in page.text
    said = ("None: every image of " + failed_of + " was read and extracted." if not listed else
            "These rows of " + failed_of + " failed when the store was extracted, so they are not in the metrics.")
    assert said in page.text
    assert (f"1 row of {failed_of} failed at extraction; the page lists each with its reason" in lines) == bool(listed)


def test_failed_rows_without_a_label_are_listed_too(run, capsys, tmp_path):
    """A row whose image could not be read and that has no label was left out of the failed rows. (A CSV refuses a
    blank label: such rows come from the Python API's index.)"""
    import pandas as pd

    from extract import ImageIndex, get_extractor, read_index
    from pipelines.runs.extraction import run_extract

    shutil.copytree(run / "feats", tmp_path / "feats")
    index = read_index(run / "imgs" / "index.csv")
    gone = pd.DataFrame({"id": ["c0/gone.png"], "label": [""], "split": ["test"]})  # no such file, no label
    index = ImageIndex(index.root, pd.concat([index.frame, gone], ignore_index=True), index.source)
    extractor = get_extractor("vgg16", weights="none", input_size=32, pooling="avg", batch_size=16)
    assert run_extract(index, extractor, tmp_path / "feats").n_failed == 2
    code, lines, _ = cli(capsys, "report", run / "head", tmp_path / "feats", "--split", "test", "--out", tmp_path / "r",
                         "--mistakes", "0")
    assert code == 0, lines
    page = parse(lines[-1])
    assert [t for t in page.text if t in ("c0/gone.png", "c0/broken.png")] == ["c0/broken.png", "c0/gone.png"]
    assert "Failed rows (2)" in page.text
    assert "2 rows of split 'test' failed at extraction; the page lists each with its reason" in lines


def test_labels_the_head_never_learned_are_named_on_the_page(run, capsys, monkeypatch, tmp_path):
    """metrics.json named them (unknown_labels) and scored them as misses; the page did not say so."""
    shutil.copytree(run / "feats", tmp_path / "feats")
    index = (run / "imgs" / "index.csv").read_text(encoding="utf-8").replace('"cat"', '"zebra"')
    (tmp_path / "index.csv").write_text(index, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "extract", "index.csv", "--images-root", run / "imgs", *FAST, "--out", "feats")[0] == 1
    code, lines, _ = cli(capsys, "report", run / "head", "feats", "--split", "test", "--out", "r")
    assert code == 0, lines
    assert any("Labels that the head was never trained on: 'zebra' (" in text for text in parse(lines[-1]).text)


def test_report_subprocess_of_a_logreg_head_does_not_load_tensorflow(run, tmp_path):
    script = ("import sys; from pipelines.cli import main\n"
              f"code = main(['report', 'head', 'feats', '--split', 'test', '--out', {str(tmp_path / 'r')!r}])\n"
              "print('tensorflow' in sys.modules, code)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=run, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == str(tmp_path / "r" / "index.html") and lines[-1] == "False 0", proc.stderr[-2000:]


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chromium-browser/google-chrome on PATH "
                    "(Debian: apt-get install chromium)")
def test_headless_chromium_screenshot_is_not_blank(run, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
                    (run / "rep" / "index.html").as_uri()], capture_output=True, timeout=120, check=True)
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 100  # text, tables, figures: far from one colour


def test_render_page_escapes_every_text_and_attribute():
    nasty = '<script>alert("x")</script>&'
    page = Page(title=nasty, random_init=False, facts=[(nasty, nasty)], headline={"accuracy": 0.5},
                per_class={nasty: {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}},
                figures=[Figure(nasty, f"figures/{nasty}.png", nasty), Figure(nasty, None, nasty)],
                mistakes=[Mistake(nasty, nasty, nasty, 0.9, 0.1, f"thumbs/{nasty}.png"),
                          Mistake(nasty, nasty, nasty, 0.8, 0.1, None, nasty)],
                n_wrong=2, failed=[(nasty, nasty)], n_failed=1, notes=[nasty], links=[(nasty, nasty)])
    html = render_page(page)
    assert "<script>alert" not in html and '"x"' not in html
    parsed = PageParser()
    parsed.feed(html)
    assert [t for t, _ in parsed.tags].count("script") == 1
    assert nasty in parsed.text and f"figures/{nasty}.png" in [a.get("src") for _, a in parsed.tags]


def test_reliability_bins_and_expected_calibration_error():
    bins = reliability([0.05, 0.95, 0.95, 1.0, 0.55], [0, 1, 0, 1, 1], n_bins=10)
    assert bins["count"].tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 3]
    assert bins["accuracy"][9] == pytest.approx(2 / 3) and np.isnan(bins["accuracy"][1])
    assert bins["confidence"][9] == pytest.approx((0.95 + 0.95 + 1.0) / 3)
    expected = (1 * 0.05 + 1 * 0.45 + 3 * abs(2 / 3 - 2.9 / 3)) / 5
    assert bins["ece"] == pytest.approx(expected)


def test_most_confident_mistakes_order_and_ties():
    y_true = np.array(["a", "b", "a", "b", "a"])
    y_pred = np.array(["b", "b", "b", "a", "b"])
    confidence = np.array([0.6, 0.99, 0.9, 0.6, 0.7])
    assert most_confident_mistakes(y_true, y_pred, confidence, 10).tolist() == [2, 4, 0, 3]
    assert most_confident_mistakes(y_true, y_pred, confidence, 2).tolist() == [2, 4]
    assert most_confident_mistakes(y_true, y_pred, confidence, 0).tolist() == []


def test_headline_metrics_are_scikit_learn_s():
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    classes = [str(c) for c in range(7)]
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(7), size=60)
    proba[:, 6] *= 0.01  # class "6" is never true and never predicted, but counts in the top 5
    proba /= proba.sum(axis=1, keepdims=True)
    y_true = rng.choice(classes[:6], size=60)
    y_pred = np.asarray(classes)[proba.argmax(axis=1)]
    metrics = {"accuracy": float(np.mean(y_true == y_pred)), "macro_f1": 0.25}
    out = headline_metrics(metrics, y_true, y_pred, proba, classes)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert out["top_5_accuracy"] == pytest.approx(top_k_accuracy_score(y_true.astype(int), proba, k=5,
                                                                       labels=np.arange(7)))
    y_unknown = y_true.copy()
    y_unknown[:6] = "zebra"  # a label the head does not know is a miss
    hits = top_k_accuracy_score(y_true[6:].astype(int), proba[6:], k=5, labels=np.arange(7), normalize=False)
    assert headline_metrics(metrics, y_unknown, y_pred, proba, classes)["top_5_accuracy"] == pytest.approx(hits / 60)
    assert "top_5_accuracy" not in headline_metrics(metrics, y_true, y_pred, proba[:, :5], classes[:5])


def test_weights_and_validation_statements():
    assert weights_statement({"config": {"weights": "none", "seed": 3}}) == ("random init (seed 3): NOT pretrained", True)
    assert weights_statement({"config": {"weights": "imagenet"}}) == ("ImageNet-pretrained", False)
    assert validation_statement({}) == "not recorded"
    assert validation_statement({"validation": {"source": "val", "rows": 12}}) == "val (12 rows)"
