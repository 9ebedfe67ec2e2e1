import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import make_image
from PIL import Image

import features_store
from pipelines.cli import main

FAST = ["--weights", "none", "--input-size", "32", "--batch-size", "4"]


def run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip()


@pytest.fixture
def store(csv_index, tmp_path, capsys):
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", tmp_path / "feats")
    assert code == 0
    return tmp_path / "feats"


def test_every_command_explains_itself_in_its_help():
    """`pretrain-cnn --help` and `finetune --help` went from the usage straight to the flags."""
    import argparse

    from pipelines.cli.parser import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = sorted(name for name, p in sub.choices.items() if len(p.description or "") < 40)
    assert not missing


def _option_helps(command):
    import argparse

    from pipelines.cli.parser import build_parser

    parser = build_parser().commands[command]
    required = {id(a) for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
    return {a.option_strings[-1]: a for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and id(a) not in required
            and not a.required and not isinstance(a, (argparse._HelpAction, argparse._StoreTrueAction))}


def test_every_option_states_its_default():
    """demo's --weights, the --images-root of pretrain-cae, pretrain-cnn, finetune and advise, extract's --dask,
    predict's --weights and pretrain-cnn's --base did not say what they are when left out."""
    from pipelines.cli.parser import build_parser

    silent = sorted(f"{command} {flag}" for command in build_parser().commands
                    for flag, action in _option_helps(command).items() if "default" not in action.help)
    assert not silent


def test_sweep_help_offers_only_the_models_it_takes():
    """sweep refuses --model cae and keras (one forward pass of a keras.applications backbone: test_pipelines_sweep);
    its help offered them, as extract's does."""
    sweep, extract = _option_helps("sweep"), _option_helps("extract")
    assert "cae" not in sweep["--model"].help and "keras (any saved model" not in sweep["--model"].help
    assert "saved model" not in sweep["--pooling"].help + sweep["--input-size"].help + sweep["--weights"].help
    assert "cae (with --weights cae.keras)" in extract["--model"].help and "bottleneck for cae" in extract["--layer"].help


def test_help_lists_commands_without_importing_keras():
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from pipelines.cli import main\n"
                           "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                           "print('keras' in sys.modules, 'tensorflow' in sys.modules)"],
                          capture_output=True, text=True)
    assert "extract" in proc.stdout and "predict" in proc.stdout and "demo" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_extract_prints_the_store_last_then_is_up_to_date(csv_index, tmp_path, capsys):
    out = tmp_path / "feats"
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 0 and lines[-1] == str(out) and "random-init" in lines[0]
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 0 and lines[0].startswith("up to date") and lines[-1] == str(out)


def test_a_store_of_unreadable_images_is_not_said_to_be_all_extracted(tmp_path, capsys):
    (tmp_path / "gone.csv").write_text("filename,label\nnope1.jpg,a\nnope2.jpg,b\n")
    code, lines, _ = run(capsys, "extract", tmp_path / "gone.csv", *FAST, "--out", tmp_path / "s")
    assert code == 1 and lines[0] == "none of the 2 images could be read; check --images-root and the index's paths"


def test_extract_default_out_is_next_to_the_index(csv_index, capsys):
    code, lines, _ = run(capsys, "extract", csv_index, *FAST)
    assert code == 0 and lines[-1].startswith(str(csv_index.parent / "index.vgg16-"))


@pytest.mark.parametrize(
    "text, match",
    [
        pytest.param("name\nx.png\n", "must have a `filename` column", id="column"),
        pytest.param("filename,label\n", "no rows", id="empty"),
        pytest.param("filename,label\na/0.png,a\na/0.png,a\n", "line 3: duplicate filename", id="duplicate"),
        pytest.param("filename,label\n../x.png,a\n", "escapes the images root", id="escape"),
        pytest.param("filename,label\na/0.png,a,extra\n", "Expected 2 fields in line 2, saw 3", id="one-field-more"),
    ],
)
def test_malformed_csv_is_exit_2_with_one_line(image_folder, tmp_path, capsys, text, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    code, lines, err = run(capsys, "extract", csv, "--images-root", image_folder, *FAST)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err)


@pytest.mark.parametrize("text, note", [
    ("filename,class\na/0.png,a\nb/0.png,b\n", "note: the index has no labels (its other columns: class): "
     "`featurehead train` needs a `label` column, or class folders"),
    ("filename,label,split\na/0.png,a,train\nb/0.png,b,\na/2.png,a,test\n", "note: 1 row with a label but no "
     "split value is in no split: `train` and `evaluate --split` leave it out"),
    ("filename,label,split\na/0.png,a,train\nb/0.png,b,\na/2.png,a,\n", "note: 2 rows with a label but no split "
     "value are in no split: `train` and `evaluate --split` leave them out"),
    ("filename,label\na/0.png,a\nb/0.png,nan\na/2.png,NaN\n", "note: 2 rows are labelled 'NaN' or 'nan', a class of "
     "its own for `train`; if that marks a missing label, write the label, or leave the row out (a blank label is "
     "refused; an index without a `label` column is unlabelled)"),
    ("filename,label\na/0.png,a\nb/0.png,b\n", None),
])
def test_extract_says_what_train_will_not_use(image_folder, tmp_path, capsys, text, note):
    """A label column under another name, or a labelled row whose split was left blank, was taken silently:
    `train` later found 0 labelled rows, or left the row out of every split; a label "nan" (pandas' text for a
    missing value) became a class without a word."""
    csv = tmp_path / "i.csv"
    csv.write_text(text)
    code, lines, _ = run(capsys, "extract", csv, "--images-root", image_folder, *FAST, "--out", tmp_path / "s")
    assert code == 0 and [line for line in lines if line.startswith("note:")] == ([note] if note else [])
    if "no labels" in (note or ""):
        code, _, err = run(capsys, "train", tmp_path / "s", "--out", tmp_path / "h")
        assert code == 2 and err.endswith("the store has 0 usable labelled rows (its index had no labels: a CSV needs "
                                          "a `label` column, a folder class folders); training needs at least 2")


def test_failed_rows_exit_1_and_say_where_the_list_is(csv_index, tmp_path, capsys):
    (csv_index.parent / "a" / "bad.png").write_bytes(b"nope")
    csv_index.write_text(csv_index.read_text() + "a/bad.png,a\n")
    out = tmp_path / "f"
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 1 and lines[-1] == str(out)
    # it said "extracted 9 new rows", the failed one counted as extracted
    assert lines[0] == ("extracted 8 new rows, 1 failed (random-init weights (seed 0): NOT pretrained, for testing "
                        "only); the view has 9 rows")
    assert any(line.startswith("1 of the view's 9 rows failed") and "f.failed.csv" in line for line in lines)
    failed = pd.read_csv(str(out) + ".failed.csv")
    assert failed["id"].tolist() == ["a/bad.png"]
    (csv_index.parent / "a" / "bad.png").unlink()  # fixed: removed from the folder and the index
    csv_index.write_text(csv_index.read_text().replace("a/bad.png,a\n", ""))
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 0 and not (tmp_path / "f.failed.csv").exists()  # no stale list of rows that no longer fail


def test_extract_counts_a_file_it_could_not_read_as_failed_in_both_lines(csv_index, tmp_path, capsys):
    """A row whose file could not be read when hashed (here: missing) was in "N of M failed" but not in the "K
    failed" of the rows extracted, and the list's note said it was kept with its content (nothing is stored for
    it: every run tries it again). The first line counts this run's failures, the second the view's."""
    (csv_index.parent / "a" / "bad.png").write_bytes(b"nope")  # read, but not an image: kept as failed
    csv_index.write_text(csv_index.read_text() + "a/bad.png,a\na/gone.png,a\n")
    out = tmp_path / "f"
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 1
    assert lines[0] == ("extracted 8 new rows, 2 failed (random-init weights (seed 0): NOT pretrained, for testing "
                        "only); the view has 10 rows")
    assert lines[1] == (f"2 of the view's 10 rows failed; the list is in {out}.failed.csv and `featurehead inspect "
                        f"{out}` (the next run tries again the row whose file could not be read; any other failure is "
                        f"kept with the image's content; after `featurehead compact {out} --failed` a re-run tries "
                        "those again)")
    make_image(csv_index.parent / "b" / "new.png", seed=5)  # the next run: one new image, the missing file again
    csv_index.write_text(csv_index.read_text() + "b/new.png,b\n")
    code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--out", out)
    assert code == 1 and lines[0].startswith("extracted 1 new row, 1 failed (") and lines[0].endswith("view has 11 rows")
    assert lines[1].startswith("2 of the view's 11 rows failed; ")


def test_no_image_found_is_said_not_up_to_date(csv_index, tmp_path, capsys):
    """A wrong --images-root (every file missing) said "up to date: 0 of 8 rows hold features"."""
    for _ in range(2):  # the first run, and a re-run
        code, lines, _ = run(capsys, "extract", csv_index, *FAST, "--images-root", tmp_path, "--out", tmp_path / "s")
        assert code == 1 and lines[0] == "none of the 8 images could be read; check --images-root and the index's paths"
    (tmp_path / "one" / "a").mkdir(parents=True)
    (tmp_path / "one" / "a" / "x.png").write_bytes(b"junk")  # a folder index: no --images-root to check
    code, lines, _ = run(capsys, "extract", tmp_path / "one", *FAST, "--out", tmp_path / "s1")
    assert code == 1 and lines[0] == "the one image could not be read; why: below"


def test_strict_is_exit_2(csv_index, tmp_path, capsys):
    csv_index.write_text(csv_index.read_text() + "a/missing.png,a\n")
    code, _, err = run(capsys, "extract", csv_index, *FAST, "--strict", "--out", tmp_path / "s")
    assert code == 2 and "a/missing.png: file not found" in err


def test_offline_imagenet_is_one_line_naming_alternatives(csv_index, tmp_path, capsys, monkeypatch, keras_home):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    for weights in ([], ["--weights", "ImageNet"]):  # the default; any case of the keyword (was: "does not exist")
        code, _, err = run(capsys, "extract", csv_index, "--input-size", "32", *weights, "--out", tmp_path / "s")
        assert code == 2 and len(err.splitlines()) == 1
        assert "VGG16 no-top weights file" in err and "--weights none" in err
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "argv, option, what",
    [
        pytest.param("augment-preview i.csv --out g.png --size 0", "--size", "positive integer", id="preview-size"),
        pytest.param("augment-preview i.csv --out g.png --n-images 0", "--n-images", "positive integer",
                     id="preview-n-images"),
        pytest.param("augment-preview i.csv --out g.png --views -1", "--views", "positive integer", id="preview-views"),
        pytest.param("pretrain-cae i.csv --out m.keras --epochs 0", "--epochs", "positive integer", id="cae-epochs"),
        pytest.param("pretrain-cae i.csv --out m.keras --batch-size 0", "--batch-size", "positive integer",
                     id="cae-batch"),
        pytest.param("pretrain-cnn i.csv --out m.keras --learning-rate 0", "--learning-rate", "positive number",
                     id="cnn-learning-rate"),
        pytest.param("finetune h --unfreeze 1 --out o --batch-size 0", "--batch-size", "positive integer",
                     id="finetune-batch"),
        pytest.param("compact s --shard-rows -5", "--shard-rows", "positive integer", id="compact-shard-rows"),
        pytest.param("advise --n-images 3 --similarity high --small-threshold -1", "--small-threshold",
                     "positive integer", id="advise-threshold"),
        pytest.param("extract i.csv --seed -1", "--seed", "non-negative integer", id="extract-seed"),
    ],
)
def test_a_value_out_of_range_is_one_line_before_anything_runs(argv, option, what, capsys):
    """Each of these hung (--size 0), failed as an internal error (0 epochs, batch size 0, 0 images) or ran with
    a value that means nothing (a negative learning rate, shard size or threshold)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv.split())
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and f"argument {option}: must be a {what}" in err


def test_an_interruption_says_resume_only_where_the_work_is_kept(monkeypatch, tmp_path, capsys):
    from pipelines.cli import app

    def interrupted(args):
        raise KeyboardInterrupt

    for command, argv, said in (("compact", ["compact", "s"], "re-run the same command to resume"),
                                ("train", ["train", "s", "--out", "h"], "re-run the same command (it starts over")):
        monkeypatch.setitem(app.COMMANDS, command, interrupted)
        assert main(["-q", *argv]) == 130
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and said in err, err


def test_bad_option_value_is_exit_2(csv_index, capsys):
    code, _, err = run(capsys, "extract", csv_index, "--weights", "none", "--input-size", "16")
    assert code == 2 and "`--input-size` must be an integer >= 32" in err
    with pytest.raises(SystemExit) as exit_:
        main(["extract", str(csv_index), "--workers", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--workers: must be a positive integer. Received: 0" in err
    assert err.splitlines() == ["featurehead extract: error: argument --workers: must be a positive integer. "
                                "Received: 0 (see `featurehead extract --help`)"]  # no usage block before it
    with pytest.raises(SystemExit) as exit_:
        main(["extract", str(csv_index), "--bogus", "1"])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
        "featurehead extract: error: unrecognized arguments: --bogus 1 (see `featurehead extract --help`)"]


def test_inspect(store, capsys):
    code, lines, _ = run(capsys, "inspect", store)
    text = "\n".join(lines)
    assert code == 0 and "complete" in text and "rows:        8 in the view (0 failed)" in text and "8 rows in 1 shard, 0 garbage" in text
    assert '"name": "vgg16"' in text and "features" in text and "(8, 512)" in text


def test_inspect_json_holds_what_the_text_says(csv_index, tmp_path, capsys):
    """`--json` ("the same as one JSON object") left out the failures and the datasets of features.h5."""
    bad = [f"a/bad{i:02}.png" for i in range(21)]
    for name in bad:
        (csv_index.parent / name).write_bytes(b"nope")
    csv_index.write_text(csv_index.read_text() + "".join(f"{name},a\n" for name in bad))
    assert run(capsys, "extract", csv_index, *FAST, "--out", tmp_path / "s")[0] == 1
    code, lines, _ = run(capsys, "inspect", tmp_path / "s")
    assert code == 0 and "failures (21):" in lines and lines[-1] == "  ... and 1 more (read the `errors` dataset)"
    code, lines, _ = run(capsys, "inspect", tmp_path / "s", "--json")
    summary = json.loads("\n".join(lines))
    assert code == 0 and summary["failed"] == 21 and len(summary["failures"]) == 20  # capped as the text is
    assert summary["failures"][0]["filename"] == "a/bad00.png" and summary["failures"][0]["error"]
    assert set(summary["failures"][0]) == {"filename", "error"}
    assert summary["datasets"]["features"] == {"shape": [29, 512], "dtype": "float32"}
    assert summary["datasets"]["ids"]["shape"] == [29]
    assert (summary["pending_rows"], summary["resumable_rows"], summary["unlisted_shards"]) == (0, 0, [])


def test_inspect_of_a_non_store_is_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.write_bytes(b"garbage")
    code, _, err = run(capsys, "inspect", junk)
    assert code == 2 and str(junk) in err


@pytest.mark.parametrize("head, extra", [("logreg", []), ("mlp", ["--epochs", "2", "--hidden", "16,8"])])
def test_train_evaluate_predict(store, csv_index, tmp_path, capsys, head, extra):
    bundle = tmp_path / f"head-{head}"
    code, lines, _ = run(capsys, "train", store, "--head", head, "--out", bundle, *extra)
    assert code == 0 and lines[-1] == str(bundle) and (bundle / "manifest.json").exists()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["fingerprint"] == features_store.read_info(store).fingerprint
    assert manifest["classes"] == ["a", "b"] and manifest["n_features"] == 512

    report = tmp_path / "report"
    code, lines, _ = run(capsys, "evaluate", bundle, store, "--out", report)
    assert code == 0 and lines[-1] == str(report)
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "confusion_matrix", "per_class"} <= set(metrics)
    # the store the head was trained on: only its held-out rows (2 of 8), never the rows it was fitted on
    assert lines[0] == "evaluated on held-out validation rows (2 images)" and metrics["n_samples"] == 2
    assert (report / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # random-init features: said where the numbers are (the plot says it too), not only by `report`
    assert lines[-2] == "NOTE: random-init weights: these are NOT pretrained results"

    (csv_index.parent / "b" / "bad.png").write_bytes(b"")
    csv_index.write_text(csv_index.read_text() + "b/bad.png,b\n")
    preds = tmp_path / "p.csv"
    code, lines, _ = run(capsys, "predict", bundle, csv_index, "--out", preds)
    assert code == 1 and lines[-1] == str(preds)
    frame = pd.read_csv(preds, keep_default_na=False)
    assert frame["filename"].tolist()[-1] == "b/bad.png" and len(frame) == 9
    assert frame["ok"].tolist() == [True] * 8 + [False]
    assert {"predicted", "probability", "p_a", "p_b", "error"} <= set(frame.columns)
    np.testing.assert_allclose(frame.loc[:7, ["p_a", "p_b"]].astype(float).sum(axis=1), 1.0, rtol=1e-5)


def test_a_head_or_an_evaluation_is_never_written_into_a_store(store, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    code, _, err = run(capsys, "train", store, "--out", store)
    assert code == 2 and len(err.splitlines()) == 1 and "not a head bundle's (a feature store?)" in err
    assert run(capsys, "train", store, "--out", tmp_path / "h")[0] == 0
    for command in ("evaluate", "report"):
        code, _, err = run(capsys, command, tmp_path / "h", store, "--split", "", "--out", store)
        assert code == 2 and len(err.splitlines()) == 1 and "is a feature store" in err
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before
    assert run(capsys, "inspect", store)[0] == 0


def test_an_mlp_head_the_disk_cannot_hold_is_refused_before_its_fit(small_disk, store, capsys):
    """The MLP's network (1000-500-150: 2.9 MiB of weights here) is checked against the free space before its
    epochs, as pretrain and finetune check theirs: a full disk was found at the save, after the whole fit."""
    out = small_disk.path / "h"
    code, lines, err = run(capsys, "train", store, "--head", "mlp", "--epochs", "1", "--out", out)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"not enough free space for the MLP head: its weights alone take [\d.]+ MiB, \d+ KiB is free\. "
                     r"Free some space and re-run the same command \(nothing was trained yet\)\.$", err), err
    assert "epoch" not in err and not (out / "manifest.json").exists()


def test_predictions_onto_a_full_disk_are_one_line_and_keep_the_previous_file(
        small_disk, store, csv_index, tmp_path, capsys
):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    mnt = small_disk.path
    previous = "filename,ok,predicted,probability,p_a,p_b,error\na/0.png,True,a,0.9,0.9,0.1,\n"
    (mnt / "p.csv").write_text(previous)
    small_disk.fill()  # the disk is full
    code, lines, err = run(capsys, "predict", bundle, csv_index, "--store", store, "--out", mnt / "p.csv")
    assert code == 2 and len(err.splitlines()) == 1 and str(mnt / "p.csv") in err and "free some space" in err
    assert (mnt / "p.csv").read_text() == previous
    assert sorted(p.name for p in mnt.iterdir()) == ["filler", "p.csv"]


def test_predict_removes_the_temporary_csv_of_a_killed_predict(store, csv_index, tmp_path, capsys, dead_pid):
    """A predict killed between writing and renaming its CSV left `.p.csv.tmp-PID` for good (a review)."""
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    left = tmp_path / f".p.csv.tmp-{dead_pid}"
    left.write_text("filename,ok\n" * 1000)
    assert run(capsys, "predict", bundle, csv_index, "--store", store, "--out", tmp_path / "p.csv")[0] == 0
    assert (tmp_path / "p.csv").is_file() and not left.exists()


def test_every_output_writer_removes_the_temporary_files_of_a_killed_run(store, csv_index, tmp_path, capsys,
                                                                          dead_pid):
    """A run killed between writing a file and renaming it left `.NAME.tmp-PID` for good (evaluate, report,
    every plot, augment-preview; a review), where predict, export and the models removed theirs."""
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    rep = tmp_path / "rep"
    left = [rep / f".metrics.json.tmp-{dead_pid}", rep / f".confusion_matrix.png.tmp-{dead_pid}",
            rep / f".index.html.tmp-{dead_pid}", rep / "figures" / f".reliability.png.tmp-{dead_pid}",
            rep / "thumbs" / f".0123456789abcdef.png.tmp-{dead_pid}", tmp_path / f".g.png.tmp-{dead_pid}"]
    alive = rep / f".index.html.tmp-{os.getppid()}"  # a live writer's (our parent's pid): kept
    for path in [*left, alive]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a killed run's")
    code, _, err = run(capsys, "report", bundle, store, "--out", rep)
    assert code == 0, err
    assert run(capsys, "augment-preview", csv_index, "--out", tmp_path / "g.png")[0] == 0
    assert [p for p in left if p.exists()] == [] and alive.exists()


def test_a_head_bundle_given_as_a_store_is_named_as_one(store, csv_index, tmp_path, capsys):
    """It was "manifest.json is not a readable store manifest ('schema_version'); re-extract into a new directory"."""
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    for argv in (["inspect", bundle], ["train", bundle, "--out", tmp_path / "h2"], ["compact", bundle]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err == (f"featurehead {argv[0]}: error: {bundle} is a head bundle (what `featurehead "
                                     "train` writes), not a feature store (what `featurehead extract` writes); give a "
                                     "store, or extract into a new folder")
    assert not (tmp_path / "h2").exists()
    code, _, err = run(capsys, "extract", csv_index, *FAST, "--out", bundle)  # nothing written into the bundle
    assert code == 2 and f"{bundle} is a head bundle" in err and len(list(bundle.iterdir())) == 3


def test_training_an_mlp_shows_its_epochs_unless_quiet(store, tmp_path, capsys):
    """A minutes-long MLP fit was silent until its last line."""
    assert main(["train", str(store), "--head", "mlp", "--epochs", "3", "--out", str(tmp_path / "h")]) == 0
    err = capsys.readouterr().err
    assert "train mlp: 100%" in err and "3/3" in err and "epoch" in err and "val_loss=" in err
    assert run(capsys, "train", store, "--head", "mlp", "--epochs", "3", "--out", tmp_path / "h2")[2] == ""


def test_predict_finds_a_moved_weights_file_through_weights(csv_index, tmp_path, capsys):
    """A head records its extractor's weights file by path: moved (a project copied elsewhere), predict said only
    that the file does not exist, and had no way to name its new place."""
    import shutil

    import keras

    old = tmp_path / "w" / "vgg.weights.h5"
    old.parent.mkdir()
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(old)
    fast = [a if a != "none" else str(old) for a in FAST]
    assert run(capsys, "extract", csv_index, *fast, "--out", tmp_path / "feats")[0] == 0
    assert run(capsys, "train", tmp_path / "feats", "--out", tmp_path / "h")[0] == 0
    assert run(capsys, "predict", tmp_path / "h", csv_index, "--store", tmp_path / "p1", "--out", tmp_path / "a.csv")[0] == 0
    new = tmp_path / "moved" / "vgg.weights.h5"
    shutil.move(old.parent, new.parent)
    code, _, err = run(capsys, "predict", tmp_path / "h", csv_index, "--store", tmp_path / "p2", "--out", tmp_path / "b.csv")
    assert code == 2 and err.endswith("if it moved, give its new place with --weights FILE")
    assert run(capsys, "predict", tmp_path / "h", csv_index, "--store", tmp_path / "p2", "--weights", new,
               "--out", tmp_path / "b.csv")[0] == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a["predicted"].tolist() == b["predicted"].tolist()
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5)
    other = tmp_path / "other.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    code, _, err = run(capsys, "predict", tmp_path / "h", csv_index, "--weights", other, "--out", tmp_path / "c.csv")
    assert code == 2 and "is not the weights file this head's features were made with" in err
    assert not (tmp_path / "c.csv").exists()


def test_predict_takes_a_flat_folder_of_new_images(store, image_folder, tmp_path, capsys, monkeypatch):
    """Images to predict rarely sit in class folders; a flat folder was refused ("in no class folder")."""
    import shutil

    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    new = tmp_path / "new"
    new.mkdir()
    for name in ("a/0.png", "b/1.jpg"):
        shutil.copy(image_folder / name, new / name.replace("/", "_"))
    code, lines, _ = run(capsys, "predict", bundle, new, "--out", tmp_path / "p.csv")
    assert code == 0 and lines[-2:] == ["predicted 2 of 2 rows", str(tmp_path / "p.csv")]
    frame = pd.read_csv(tmp_path / "p.csv")
    assert frame["filename"].tolist() == ["a_0.png", "b_1.jpg"] and frame["ok"].all()
    monkeypatch.chdir(new)  # `predict HEAD .`: its store went inside the folder, as `.vgg16-...` ('.' has no name)
    assert run(capsys, "predict", bundle, ".", "--out", tmp_path / "p.csv")[0] == 0
    assert sorted(p.name for p in new.iterdir()) == ["a_0.png", "b_1.jpg"]


def test_a_validation_fraction_that_leaves_too_few_to_train_says_so(store, tmp_path, capsys):
    """It was scikit-learn's "The train_size = 0 should be greater or equal to the number of classes = 2"."""
    code, _, err = run(capsys, "train", store, "--validation-fraction", "0.95", "--out", tmp_path / "h")
    assert code == 2 and err.endswith("holding out 0.95 of 8 images (8) leaves 0 to train on, fewer than the 2 "
                                      "classes; hold out a smaller fraction")


def test_evaluate_a_split_of_a_store_without_a_split_column_says_so(store, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    code, _, err = run(capsys, "evaluate", bundle, store, "--split", "test", "--out", tmp_path / "e")
    assert code == 2 and err.endswith("has no split column (its index named no train, val or test rows), so no row is "
                                      "in split 'test': evaluate without --split, or give the index a split column")


def test_evaluate_a_split_that_the_index_does_not_name_says_so(image_folder, tmp_path, capsys):
    """It said "has no labelled ok rows in split 'test'", as if its test images had failed or lost their labels."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*"))
    index = image_folder / "index.csv"
    index.write_text("filename,label,split\n" + "".join(
        f"{r},{r.split('/')[0]},{'train' if r[2] in '01' else 'val'}\n" for r in rows))
    store, bundle = tmp_path / "feats", tmp_path / "h"
    assert run(capsys, "extract", index, *FAST, "--out", store)[0] == 0
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    for command in ("evaluate", "report"):
        code, _, err = run(capsys, command, bundle, store, "--split", "test", "--out", tmp_path / "e")
        assert code == 2 and err.endswith(f"{store} has no rows in split 'test' (its index names only 'train' and "
                                          "'val' rows): evaluate another --split, or on a store whose index has "
                                          "such rows"), err
    # --split '' is the rows without a split value: it said "has no labelled ok rows", of a store of 8 such rows
    code, _, err = run(capsys, "evaluate", bundle, store, "--split", "", "--out", tmp_path / "e")
    assert code == 2 and err.endswith(f"{store} has no rows without a split value (--split '') (its index names only "
                                      "'train' and 'val' rows): evaluate another --split, or on a store whose index "
                                      "has such rows"), err
    # and where some rows have no split value, those are what it evaluates (it said "all rows")
    index.write_text(index.read_text().replace(",val\n", ",\n", 1))
    assert run(capsys, "extract", index, *FAST, "--out", store)[0] == 0  # the view only: nothing extracted
    code, lines, _ = run(capsys, "evaluate", bundle, store, "--split", "", "--out", tmp_path / "e")
    assert code == 0 and lines[0] == "evaluated on the rows without a split value (1 images)", lines


def test_evaluate_of_a_head_fitted_on_every_row_of_a_store_without_a_split_column_says_to_use_another_store(
        store, tmp_path, capsys):
    """Its hints went in a circle: without --split "evaluate with --split test", with --split test "evaluate without
    --split"."""
    bundle = tmp_path / "h0"
    assert run(capsys, "train", store, "--validation-fraction", "0", "--out", bundle)[0] == 0
    hint = (f"h0 was fitted on every labelled row of {store} (the store has no split column, and the head held none "
            "of its rows out), so none of its rows is unseen: evaluate h0 on another store")
    for split in ([], ["--split", "test"]):
        code, _, err = run(capsys, "evaluate", bundle, store, *split, "--out", tmp_path / "e")
        assert code == 2 and len(err.splitlines()) == 1 and err.endswith(hint), err
    assert not (tmp_path / "e").exists()


def test_a_folder_of_images_given_as_a_store_is_named_as_one(image_folder, capsys):
    """It said "holds no features yet; run `featurehead extract ... --out IMAGES`": a store among the images."""
    code, _, err = run(capsys, "inspect", image_folder / "a")
    assert code == 2 and err == (f"featurehead inspect: error: {image_folder / 'a'} is not a feature store (it holds "
                                 "0.png, 1.jpg, 2.png and 1 more); give the --out of `featurehead extract`")


def test_predict_never_overwrites_a_file_it_did_not_write(store, csv_index, tmp_path, capsys):
    """`predict ... --out index.csv` replaced the index with the predictions (or a training image with a CSV),
    exit 0; a predictions CSV of an earlier run is still replaced."""
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    index = csv_index.read_bytes()
    image = (csv_index.parent / "a" / "0.png").read_bytes()
    for target in (csv_index, csv_index.parent / "a" / "0.png"):
        code, _, err = run(capsys, "predict", bundle, csv_index, "--store", store, "--out", target)
        assert code == 2 and err == (f"featurehead predict: error: {target} exists and is not a predictions CSV of "
                                     "featurehead (the index? an image?); refusing to overwrite it: choose another --out")
    assert csv_index.read_bytes() == index and (csv_index.parent / "a" / "0.png").read_bytes() == image
    out = tmp_path / "p.csv"
    out.touch()  # empty (mktemp): nothing to lose
    for _ in range(2):  # the second replaces the first's
        assert run(capsys, "predict", bundle, csv_index, "--store", store, "--out", out)[0] == 0
    out.write_text("\ufeff" + out.read_text())  # saved again by a spreadsheet, with a BOM: still ours
    assert run(capsys, "predict", bundle, csv_index, "--store", store, "--out", out)[0] == 0
    frame = pd.read_csv(out, keep_default_na=False)  # the index's labels last, beside the predictions
    assert list(frame.columns) == ["filename", "ok", "predicted", "probability", "p_a", "p_b", "error", "label"]
    assert frame["label"].tolist() == [name.split("/")[0] for name in frame["filename"]]


def test_a_plot_onto_a_full_disk_is_one_line_and_leaves_no_plot_of_an_older_result(small_disk, store, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    mnt = small_disk.path
    (mnt / "r").mkdir()
    (mnt / "r" / "confusion_matrix.png").write_bytes(b"the previous plot")
    # the disk is full but for one 4 KiB page: room for metrics.json, not for the plot (~7 KB), even where the
    # previous one is truncated
    small_disk.fill(leave=4096)
    code, _, err = run(capsys, "evaluate", bundle, store, "--split", "", "--out", mnt / "r")
    assert code == 2 and len(err.splitlines()) == 1 and "No space left" in err
    assert str(mnt / "r" / "confusion_matrix.png") in err
    # the new metrics.json is whole; the previous plot, of another result, is gone rather than left beside it
    assert json.loads((mnt / "r" / "metrics.json").read_text())["n_samples"] == 8
    assert sorted(p.name for p in (mnt / "r").iterdir()) == [".featurehead.lock", "metrics.json"]


def test_a_head_onto_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_bundle(
        small_disk, store, tmp_path, capsys
):
    mnt = small_disk.path
    assert run(capsys, "train", store, "--out", mnt / "h")[0] == 0
    before = {p.name: p.read_bytes() for p in (mnt / "h").iterdir()}
    small_disk.fill()  # the disk is full
    code, _, err = run(capsys, "train", store, "--head", "sgd", "--out", mnt / "h")
    assert code == 2 and len(err.splitlines()) == 1 and "No space left" in err and str(mnt / "h") in err
    assert {p.name: p.read_bytes() for p in (mnt / "h").iterdir()} == before
    assert run(capsys, "evaluate", mnt / "h", store, "--split", "", "--out", tmp_path / "r")[0] == 0


def test_a_head_retrained_into_its_bundle_leaves_no_curves_of_the_old_one(store, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--head", "mlp", "--hidden", "8", "--epochs", "2", "--out", bundle)[0] == 0
    assert (bundle / "history.png").exists()
    assert run(capsys, "train", store, "--head", "logreg", "--out", bundle)[0] == 0
    assert not (bundle / "history.png").exists() and not list(bundle.glob("mlp*.keras"))


def test_evaluate_on_a_store_of_other_classes_is_one_line(store, csv_index, tmp_path, capsys):
    assert run(capsys, "train", store, "--out", tmp_path / "h")[0] == 0
    other = csv_index.parent / "other.csv"
    other.write_text(csv_index.read_text().replace(",a\n", ",cat\n").replace(",b\n", ",dog\n"))
    assert run(capsys, "extract", other, *FAST, "--out", tmp_path / "o")[0] == 0
    code, _, err = run(capsys, "evaluate", tmp_path / "h", tmp_path / "o", "--out", tmp_path / "r")
    assert code == 2 and len(err.splitlines()) == 1 and "none of the labels" in err and "(cat, dog)" in err


def test_evaluate_refuses_a_training_store_whose_view_changed(store, csv_index, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    # the training store now lists another index (relabelled): the same images, nothing extracted again
    relabelled = csv_index.parent / "relabelled.csv"
    relabelled.write_text(csv_index.read_text().replace(",a\n", ",b\n", 2))
    code, lines, _ = run(capsys, "extract", relabelled, *FAST, "--out", store)
    assert code == 0 and lines[0].startswith("up to date")
    code, _, err = run(capsys, "evaluate", bundle, store, "--out", tmp_path / "r")
    assert code == 2 and len(err.splitlines()) == 1 and "held-out rows are unknown" in err
    code, lines, _ = run(capsys, "evaluate", bundle, store, "--split", "", "--out", tmp_path / "r")
    assert code == 0 and lines[0] == "evaluated on all rows (8 images)"  # an explicit choice is the user's
    assert run(capsys, "extract", csv_index, *FAST, "--out", store)[0] == 0  # the training index again
    code, lines, _ = run(capsys, "evaluate", bundle, store, "--out", tmp_path / "r")
    assert code == 0 and lines[0] == "evaluated on held-out validation rows (2 images)"


def test_predict_reuses_a_float16_store(csv_index, tmp_path):
    from extract import get_extractor, read_index
    from pipelines.runs.extraction import run_extract
    from pipelines.runs.prediction import run_predict
    from pipelines.runs.training import run_train

    extractor = get_extractor("vgg16", weights="none", input_size=32, batch_size=4)
    half = run_extract(read_index(csv_index), extractor, tmp_path / "half", dtype="float16").store
    run_train(half, tmp_path / "h")
    result = run_predict(tmp_path / "h", csv_index, tmp_path / "p.csv", store=half)
    assert (result.n_rows, result.n_failed) == (8, 0) and features_store.read_info(half).dtype == "float16"


def _dark_and_bright(tmp_path, folders=(("dark", (10, 20)), ("bright", (200, 210)))) -> list[str]:
    """Class folders of 8x8 images under `tmp_path`, and the extract options of a saved model whose features are
    the mean pixel value x 1000: dark images fit float16, bright ones do not."""
    import keras

    model = tmp_path / "scale.keras"
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1000.0)(inputs))).save(model)
    for folder, values in folders:
        for i, v in enumerate(values):
            (tmp_path / folder / f"c{i}").mkdir(parents=True)
            for j in range(2):
                Image.fromarray(np.full((8, 8, 3), v + j, np.uint8)).save(tmp_path / folder / f"c{i}" / f"{j}.png")
    return ["--model", "keras", "--weights", str(model), "--input-size", "8"]


def test_a_store_stopped_by_float16s_range_says_a_re_run_stops_again(tmp_path, capsys):
    """An extract stopped by features beyond float16's range left a store that `inspect` and `train` said to
    resume by re-running extract, which stopped the same way again."""
    args = _dark_and_bright(tmp_path, (("mixed", (10, 200)),))  # c0 fits float16, c1 does not
    half = tmp_path / "half"
    code, _, err = run(capsys, "extract", tmp_path / "mixed", "--out", half, "--dtype", "float16", "--batch-size", "2",
                       *args)
    assert code == 2 and err.count("\n") == 0 and "beyond float16's range" in err
    way_out = "extract with --dtype float32 into another --out"
    code, lines, _ = run(capsys, "inspect", half)
    (status,) = [line for line in lines if line.startswith("status:")]
    assert code == 0 and "a re-run stops again" in status and status.endswith(way_out), status
    assert "resume" not in status
    code, lines, _ = run(capsys, "inspect", half, "--json")
    assert json.loads("\n".join(lines))["stopped"].endswith(way_out)
    code, _, err = run(capsys, "train", half, "--out", tmp_path / "head")
    assert code == 2 and err.count("\n") == 0 and "a re-run stops again" in err and err.endswith(way_out), err
    assert "resume" not in err
    assert run(capsys, "extract", tmp_path / "mixed", "--out", tmp_path / "full", *args)[0] == 0  # the way out works
    # a run that does not stop so clears the note: here an index of the images that fit float16
    dark = tmp_path / "dark.csv"
    dark.write_text("filename,label\nc0/0.png,c0\nc0/1.png,c0\n")
    assert run(capsys, "extract", dark, "--images-root", tmp_path / "mixed", "--out", half, *args)[0] == 0
    code, lines, _ = run(capsys, "inspect", half, "--json")
    summary = json.loads("\n".join(lines))
    assert (summary["complete"], summary["stopped"]) == (True, "")


def test_predict_into_a_float16_store_that_cannot_hold_the_features_names_its_own_option(tmp_path, capsys):
    """Features beyond float16's range stop predict too; its store option is --store, and it has no --dtype."""
    args = _dark_and_bright(tmp_path)
    half = tmp_path / "half"
    assert main(["-q", "extract", str(tmp_path / "dark"), "--out", str(half), "--dtype", "float16", *args]) == 0
    assert main(["-q", "train", str(half), "--out", str(tmp_path / "head"), "--validation-fraction", "0"]) == 0
    unlabelled = tmp_path / "dark.csv"  # a float16 store of unlabelled images: predict may make its view its own
    unlabelled.write_text("filename\n" + "".join(f"c{i}/{j}.png\n" for i in range(2) for j in range(2)))
    half = tmp_path / "half-unlabelled"
    assert main(["-q", "extract", str(unlabelled), "--images-root", str(tmp_path / "dark"), "--out", str(half),
                 "--dtype", "float16", *args]) == 0
    capsys.readouterr()
    assert main(["-q", "predict", str(tmp_path / "head"), str(tmp_path / "bright"), "--store", str(half),
                 "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beyond float16's range" in err
    assert err.rstrip().endswith("the dtype of this store; use another --store (a new one is float32)"), err
    assert main(["-q", "predict", str(tmp_path / "head"), str(tmp_path / "bright"), "--store",
                 str(tmp_path / "full"), "--out", str(tmp_path / "p.csv")]) == 0


def test_predict_keeps_the_labelled_view_of_a_training_store(store, csv_index, tmp_path, capsys):
    """`predict --store` of the training store with another index is refused: it would have replaced the view's
    labels and splits with the new images (train then found no labelled rows, and compact deleted the rest)."""
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    new = tmp_path / "new.csv"
    new.write_text("filename\n" + "".join(f"{p}\n" for p in pd.read_csv(csv_index)["filename"][:3]))
    before = features_store.read_info(store).index_sha256
    code, _, err = run(capsys, "predict", bundle, new, "--images-root", csv_index.parent, "--store", store,
                       "--out", tmp_path / "p.csv")
    assert code == 2 and len(err.splitlines()) == 1 and "labelled images of another index" in err
    assert features_store.read_info(store).index_sha256 == before
    assert run(capsys, "predict", bundle, csv_index, "--store", store, "--out", tmp_path / "p.csv")[0] == 0
    assert run(capsys, "predict", bundle, new, "--images-root", csv_index.parent, "--out", tmp_path / "q.csv")[0] == 0
    labelled = tmp_path / "labelled.csv"  # predict's own store of a labelled CSV follows that CSV's edits
    rows = csv_index.read_text().splitlines()
    for n in (4, 6):
        labelled.write_text("\n".join(rows[:n]) + "\n")
        code, _, err = run(capsys, "predict", bundle, labelled, "--images-root", csv_index.parent,
                           "--out", tmp_path / "l.csv")
        assert code == 0, err


def test_outputs_of_the_wrong_kind_and_swapped_arguments_are_named(store, csv_index, tmp_path, capsys):
    """A file where a folder goes (a raw "[Errno 17] File exists"), a folder where the CSV goes ("Is a directory
    ... re-run to resume"), and a store where the head goes (a format_version message) each say what is wrong."""
    bundle, a_file, a_folder = tmp_path / "h", tmp_path / "f.txt", tmp_path / "d"
    a_file.write_text("x")
    a_folder.mkdir()
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    for argv, said in ((["train", store, "--out", a_file], "is a file; a head bundle is a folder"),
                       (["evaluate", bundle, store, "--out", a_file], "is a file; --out is the folder"),
                       (["evaluate", store, store, "--out", tmp_path / "r"], "is a feature store, not a head bundle"),
                       (["predict", bundle, csv_index, "--out", a_folder], "is a folder; --out is the CSV file"),
                       (["train", store, "--out", a_file / "h"], f"{a_file / 'h'}: Not a directory")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and said in err, err
    assert a_file.read_text() == "x" and list(a_folder.iterdir()) == []


def test_predict_refuses_a_tampered_bundle(store, csv_index, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    model = bundle / json.loads((bundle / "manifest.json").read_text())["model_file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    code, _, err = run(capsys, "predict", bundle, csv_index, "--out", tmp_path / "p.csv")
    assert code == 2 and "sha256" in err


def test_predict_refuses_an_edited_extractor_spec_before_extracting(store, csv_index, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["extractor"]["config"]["pooling"] = "max"  # not the extractor its head was trained on
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "predict", bundle, csv_index, "--store", tmp_path / "new", "--out", tmp_path / "p.csv")
    assert code == 2 and "re-extract with the bundle's extractor" in err
    assert not (tmp_path / "new").exists()  # nothing was extracted first


def test_predict_refuses_features_of_another_extractor(store, csv_index, tmp_path, capsys):
    bundle = tmp_path / "h"
    assert run(capsys, "train", store, "--out", bundle)[0] == 0
    other = tmp_path / "other"
    assert run(capsys, "extract", csv_index, *FAST, "--pooling", "avg", "--out", other)[0] == 0
    code, _, err = run(capsys, "evaluate", bundle, other, "--out", tmp_path / "r")
    assert code == 2 and "re-extract" in err
    code, _, err = run(capsys, "predict", bundle, csv_index, "--store", other, "--out", tmp_path / "p.csv")
    assert code == 2 and "another extractor" in err and "use another --store" in err  # predict's option


def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    code, lines, _ = run(capsys, "demo", "--workdir", tmp_path / "d", "--weights", "none", "--input-size", "32",
                         "--epochs", "2")
    text = "\n".join(lines)
    assert code == 0 and lines[-1] == str(tmp_path / "d")
    assert "random-init" in text and "NOT pretrained" in text
    assert "logreg head: test accuracy" in text and "mlp head: test accuracy" in text
    assert len(list((tmp_path / "d" / "images").rglob("*.png"))) == 1797
    # another input size, with --out: a store of its own beside the first, not a refused mismatch; without -q the
    # extraction and the MLP's epochs each show a bar (the MLP's fit was silent). 33, not 32: another fingerprint
    # for about the first run's work (VGG16 pools 33 down to 1 as it does 32; 40 took half as long again)
    code = main(["demo", "--out", str(tmp_path / "d"), "--weights", "none", "--input-size", "33", "--epochs", "1"])
    out, err = capsys.readouterr()
    again = out.strip().splitlines()
    assert "extract digits: 100%" in err and "train mlp: 100%" in err and "1/1" in err
    stores = sorted(p.name for p in (tmp_path / "d").glob("digits.vgg16-*"))
    assert code == 0 and again[-1] == str(tmp_path / "d") and len(stores) == 2
    assert {line.split("features: ")[1] for line in lines + again if line.startswith("features: ")} == {
        str(tmp_path / "d" / name) for name in stores}


@pytest.mark.parametrize("argv, err", [
    pytest.param(["--epochs", "0"], "`--epochs` must be a positive integer. Received: --epochs 0", id="epochs"),
    pytest.param(["--input-size", "8"], "`--input-size` must be an integer >= 32 for vgg16. Received: --input-size 8",
                 id="input-size"),
    pytest.param(["--weights", "nowhere.weights.h5"], "`--weights` must be 'imagenet', 'none' or a path to a weights "
                 "file", id="weights"),
])
def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, err):
    """`--epochs 0` was refused after 36 s of work (1797 PNGs, the store, the logreg head), `--input-size 8` after
    the images were written."""
    code, _, message = run(capsys, "demo", "--out", tmp_path / "d", "--weights", "none", *argv)
    assert code == 2 and len(message.splitlines()) == 1 and err in message, message
    assert not (tmp_path / "d").exists()


def test_a_second_demo_in_the_same_folder_stops_at_once(tmp_path, capsys):
    """A second demo into a running one's folder rewrote its digits under it: the first died ("changed after it
    was hashed") while the second finished (a review)."""
    from features_store.lock import folder_lock

    (tmp_path / "d" / "images").mkdir(parents=True)
    with folder_lock(tmp_path / "d" / "images", ".featurehead-demo.lock", timeout=0, busy=AssertionError("held")):
        code, _, err = run(capsys, "demo", "--out", tmp_path / "d", "--weights", "none", "--input-size", "32")
    assert code == 2 and len(err.splitlines()) == 1 and "is being written by another featurehead demo" in err
    assert not (tmp_path / "d" / "index.csv").exists() and not list((tmp_path / "d").rglob("*.png"))  # nothing


def test_demo_onto_a_full_disk_names_the_file_in_one_line(small_disk, capsys):
    """It said only "[Errno 28] No space left on device"."""
    code, _, err = run(capsys, "demo", "--out", small_disk.path / "d", "--weights", "none", "--input-size", "32")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "No space left on device" in err and str(small_disk.path / "d" / "images") in err
    assert not list((small_disk.path / "d").rglob(".*.tmp-*"))  # no temporary file left


def test_demo_refuses_a_folder_whose_index_or_images_it_did_not_write(tmp_path, capsys):
    """`demo --out` a user's project folder wrote its own index.csv and digits over the user's files."""
    from pipelines.runs.demo import write_digits

    index = write_digits(tmp_path / "d")
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("*")}
    assert write_digits(tmp_path / "d") == index  # its own earlier digits: kept as they are, nothing written
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "d").rglob("*")} == first

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.csv").write_text("filename,label\nphoto.jpg,cat\n")
    code, _, err = run(capsys, "demo", "--out", mine, "--weights", "none", "--input-size", "32", "--epochs", "1")
    assert code == 2 and len(err.splitlines()) == 1 and "index.csv is not the index the demo writes" in err
    assert (mine / "index.csv").read_text() == "filename,label\nphoto.jpg,cat\n"
    assert sorted(p.name for p in mine.iterdir()) == ["index.csv"]  # nothing written, not even its lock

    digit = tmp_path / "d" / "images" / "3" / "0003.png"
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(digit)  # the user's own image at a digit's name
    with pytest.raises(ValueError, match="0003.png is not the digit the demo writes there"):
        write_digits(tmp_path / "d")
    digit.write_text("version https://git-lfs.github.com/spec/v1\n")  # not an image at all: the user's too
    with pytest.raises(ValueError, match="0003.png is not the digit the demo writes there"):
        write_digits(tmp_path / "d")
    (tmp_path / "d" / "images" / "5" / "0005.png").unlink()  # a digit missing (a killed run): written again
    digit.unlink()
    # what an earlier version, writing in place, left when killed: a cut-off digit and a cut-off index
    cut = tmp_path / "d" / "images" / "1" / "1000.png"
    whole = cut.read_bytes()
    cut.write_bytes(whole[:40])
    tail = tmp_path / "d" / "images" / "2" / "0002.png"  # cut in its last chunk: it still decodes the same pixels
    tail.write_bytes(tail.read_bytes()[:-4])
    index.write_text(index.read_text()[:500])
    (tmp_path / "d" / ".draft.tmp-12345.md").write_text("a user's hidden file")  # not the demo's: kept
    write_digits(tmp_path / "d")
    assert len(list((tmp_path / "d" / "images").rglob("*.png"))) == 1797
    with Image.open(cut) as written:
        assert len(pd.read_csv(index)) == 1797 and written.size == (32, 32)
    assert cut.read_bytes() == whole and tail.read_bytes().endswith(b"IEND\xaeB`\x82")
    index.write_text(index.read_text()[:-1])  # all but its last newline
    write_digits(tmp_path / "d")
    assert index.read_text().endswith("\n")
    assert [p.name for p in (tmp_path / "d").rglob(".*")] == [".draft.tmp-12345.md"]  # no temporary file left


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param(["--head", "logreg", "--dropout", "0.2"], "`--dropout` does not apply to --head logreg", id="dropout"),
        pytest.param(["--head", "mlp", "--C", "2"], "`--C` does not apply to --head mlp", id="C"),
        pytest.param(["--head", "mlp", "--hidden", "8,x"], "`--hidden` must be comma-separated integers", id="hidden"),
        pytest.param(["--head", "mlp", "--hidden", ""], "`--hidden` must list at least one layer size", id="hidden-empty"),
    ],
)
def test_train_refuses_options_of_another_head(store, tmp_path, capsys, argv, match):
    code, _, err = run(capsys, "train", store, "--out", tmp_path / "h", *argv)
    assert code == 2 and match in err and not (tmp_path / "h").exists()


@pytest.mark.parametrize("argv, err", [
    pytest.param(["--head", "mlp", "--hidden", "8,0"], "`--hidden` must be positive integers. Received: --hidden 8,0",
                 id="hidden"),  # it said "`hidden_layer_sizes` must be ... Received: hidden_layer_sizes=(8, 0)"
    pytest.param(["--C", "-1"], "`--C` must be a float in the range (0.0, inf]. Received: --C -1.0", id="C"),
    # scikit-learn's own: "The 'C' parameter of LogisticRegression must be ... Got -1.0 instead."
])
def test_train_names_its_flags_in_errors_of_the_head_s_parameters(store, tmp_path, capsys, argv, err):
    code, _, message = run(capsys, "train", store, *argv, "--out", tmp_path / "h")
    assert code == 2 and message == f"featurehead train: error: {err}"
    assert not (tmp_path / "h").exists()


def test_errors_name_the_commands_flags_not_the_python_parameters(csv_index, tmp_path, capsys):
    code, _, err = run(capsys, "extract", csv_index, "--weights", "none", "--input-size", "8", "--out", tmp_path / "s")
    assert code == 2 and err == ("featurehead extract: error: `--input-size` must be an integer >= 32 for vgg16. "
                                 "Received: --input-size 8")
    code, _, err = run(capsys, "extract", csv_index, *FAST, "--layer", "nope", "--out", tmp_path / "s")
    assert code == 2 and "`--layer` must be one of the model's layers [" in err and err.endswith("Received: --layer 'nope'")
    # a backbone of 175 layers: not all of them on one line (3,871 characters), the closest, and where the rest are
    code, _, err = run(capsys, "extract", csv_index, "--model", "resnet50", *FAST, "--layer", "conv4_block6_ot",
                       "--out", tmp_path / "s")
    assert code == 2 and len(err) < 400 and "(all 175, with their output shapes: `featurehead models resnet50 --layers`" in err
    assert "the closest: 'conv4_block6_out'" in err
    code, _, err = run(capsys, "extract", csv_index, "--model", "resnet50", *FAST, "--layer", "conv4", "--out",
                       tmp_path / "s")  # a prefix names its group
    assert code == 2 and "the closest: 'conv4_block1_1_conv', 'conv4_block1_1_bn', 'conv4_block1_1_relu')" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("model, layer, said", [
    # it also offered 'block4_pool' and 'block3_pool' (above the cutoff, below 'block5_pool')
    pytest.param("vgg16", "block5_pol", "Received: --layer 'block5_pol' (did you mean 'block5_pool'?)", id="typo"),
    pytest.param("vgg16", "block6_pool", "Received: --layer 'block6_pool' (did you mean 'block3_pool' or "
                 "'block4_pool' or 'block5_pool'?)", id="equally-close"),
    pytest.param("vgg16", "nolayer", "Received: --layer 'nolayer'", id="far-small"),  # the list is all there is
    # it said "the closest: 'input_layer'"
    pytest.param("resnet50", "nolayer", "(175 layers, none named like 'nolayer': `featurehead models resnet50 "
                 "--layers` lists them, with their output shapes). Received: --layer 'nolayer'", id="far-large"),
])
def test_an_unknown_layer_gets_a_suggestion_only_when_one_is_close(csv_index, tmp_path, capsys, model, layer, said):
    """A name like no layer of the model was answered with whatever was least unlike it ("nolayer": 'input_layer');
    a typo of a small model's layer got no suggestion at all."""
    code, _, err = run(capsys, "extract", csv_index, "--model", model, *FAST, "--layer", layer, "--out", tmp_path / "s")
    assert code == 2 and err.endswith(said) and "\n" not in err
    assert not (tmp_path / "s").exists()


def test_an_empty_layer_is_refused_in_the_words_of_the_cli(csv_index, tmp_path, capsys):
    """`--layer ''` was answered in the API's words: "must be None, a layer name or a non-empty list"."""
    with pytest.raises(SystemExit) as exit_:  # argparse's exit, as for every refused option value
        main(["extract", str(csv_index), *FAST, "--layer", " ", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines() == [
        "featurehead extract: error: argument --layer: must name a layer; leave --layer out for the model's default. "
        "Received: ' ' (see `featurehead extract --help`)"]
    assert not (tmp_path / "s").exists()


def test_an_empty_layer_to_sweep_is_refused_as_any_layer_is(csv_index, tmp_path, capsys):
    """sweep parses --layer only to refuse it (it takes --layers): `--layer ''` was told to leave --layer out "for the
    model's default", which sweep has not, instead of sweep's own line."""
    code = main(["sweep", str(csv_index), *FAST, "--layers", "block5_pool", "--layer", "", "--out", str(tmp_path / "w")])
    assert code == 2 and "`sweep` takes `--layers`, not `--layer`" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_model_names_are_taken_in_any_case_and_a_typo_gets_a_suggestion(csv_index, tmp_path, capsys):
    """`--model ResNet50` (Keras's own spelling) was refused with the 38 names and no suggestion."""
    code, lines, _ = run(capsys, "extract", csv_index, "--model", "VGG16", *FAST, "--out", tmp_path / "s")
    assert code == 0 and features_store.read_info(tmp_path / "s").extractor["name"] == "vgg16"
    code, _, err = run(capsys, "extract", csv_index, "--model", "resnt50", *FAST, "--out", tmp_path / "t")
    assert code == 2 and err.endswith("Received: --model 'resnt50' (did you mean 'resnet50' or 'resnet50v2' or "
                                      "'resnet152'?)")
    assert run(capsys, "models", "ResNet50")[1][1].startswith("resnet50 ")
    code, _, err = run(capsys, "models", "resnt50")
    assert code == 2 and err.endswith("(did you mean 'resnet50' or 'resnet50v2' or 'resnet152'?)")


def test_extract_says_why_the_view_has_more_rows_than_it_extracted(image_folder, tmp_path, capsys):
    """Two rows naming the same content (a file copied under another name) are one stored row: the lines say so,
    on the first run and when up to date."""
    (image_folder / "a" / "copy.png").write_bytes((image_folder / "a" / "0.png").read_bytes())
    index = image_folder / "index.csv"
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*"))
    index.write_text("filename,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rows))
    for first in (True, False):
        code, lines, _ = run(capsys, "extract", index, *FAST, "--out", tmp_path / "feats")
        assert code == 0
        assert lines[0] == ("extracted 8 new rows (random-init weights (seed 0): NOT pretrained, for testing only); the "
                            "view has 9 rows" if first else
                            f"up to date: 9 rows, all already extracted with fingerprint {lines[0].split()[-1]}")
        assert lines[1] == ("1 row lists an image that another row also lists (the same content): each image is "
                            "extracted and stored once")


@pytest.mark.parametrize("labels", ["codes", "str-codes", "ints"])
def test_evaluate_and_report_score_a_bundle_by_its_class_names_as_predict_does(store, csv_index, tmp_path, capsys,
                                                                                labels):
    """A head fitted on integer codes (or their strings, or int labels) and saved with the store's class names:
    `predict` named them, but `evaluate` and `report` compared the head's own classes with the store's names (exit 2
    "Mix of label input types", or accuracy 0)."""
    import classify

    if labels == "ints":  # the store's labels are "2" and "10"; the head is fitted on the ints 2 and 10
        relabelled = csv_index.parent / "ints.csv"
        relabelled.write_text(csv_index.read_text().replace(",a\n", ",2\n").replace(",b\n", ",10\n"))
        csv_index, store = relabelled, tmp_path / "ints"
        assert run(capsys, "extract", csv_index, *FAST, "--out", store)[0] == 0
    info = features_store.read_info(store)
    X, y, _ = features_store.load(store)
    classes = np.unique(y)
    codes = np.searchsorted(classes, y)
    fitted = {"codes": codes, "str-codes": codes.astype(str)}[labels] if labels != "ints" else y.astype(int)
    head = classify.make_head("logreg").fit(X, fitted)
    names = [str(c) for c in head.classes_] if labels == "ints" else classes
    classify.save_bundle(head, tmp_path / "b", extractor=info.extractor, fingerprint=info.fingerprint,
                         classes=names, n_features=X.shape[1])
    assert run(capsys, "predict", tmp_path / "b", csv_index, "--store", store, "--out", tmp_path / "p.csv")[0] == 0
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False, dtype=str)
    accuracy = float((frame["predicted"] == frame["label"]).mean())
    assert accuracy > 0.5  # the fixture's classes differ in brightness: a head that learned nothing would not do
    for command in ("evaluate", "report"):
        code, _, err = run(capsys, command, tmp_path / "b", store, "--out", tmp_path / command)
        assert code == 0, err
        metrics = json.loads((tmp_path / command / "metrics.json").read_text())
        assert metrics["accuracy"] == accuracy and metrics["classes"] == list(map(str, names))
        assert "unknown_labels" not in metrics


def test_extract_of_split_folders_keeps_valid_and_names_the_folders_it_leaves_out(image_folder, tmp_path, capsys):
    """`root/{train,valid,test}` lost its `valid` images without a word (the store listed train and test only)."""
    import shutil

    root = tmp_path / "ds"
    for split, cls in (("Train", "a"), ("valid", "b"), ("TEST", "a"), ("extra", "b")):
        shutil.copytree(image_folder / cls, root / split / cls)
    code, lines, _ = run(capsys, "extract", root, *FAST, "--out", tmp_path / "s")
    assert code == 0 and lines[-1] == str(tmp_path / "s")
    assert (f"note: {root} has split folders (train, val, test), so the folder of images beside them is not in the "
            "index: extra") in lines
    meta = features_store.read_meta(tmp_path / "s")
    assert sorted(set(meta.split)) == ["test", "train", "val"] and list(meta.split).count("val") == 4
    assert sorted(set(meta.labels)) == ["a", "b"]
