import pytest

from pipelines.cli import main
from pipelines.workflows.advice import SMALL_PER_CLASS, advise, choose_strategy, images_per_class, run_advise


@pytest.mark.parametrize(
    "n, similarity, key, strategy, command",
    [
        pytest.param(50, "high", ("small", "high"), "frozen base + linear head", "--head logreg", id="small-similar"),
        pytest.param(50, "low", ("small", "low"), "freeze the early layers, train the rest, with augmentation",
                     "--unfreeze-from block4_conv1 --augment", id="small-different"),
        pytest.param(5000, "low", ("large", "low"), "train the full architecture", "--unfreeze all",
                     id="large-different"),
        pytest.param(5000, "high", ("large", "high"), "fine-tune the top blocks", "--unfreeze-from block5_conv1",
                     id="large-similar"),
        pytest.param(SMALL_PER_CLASS - 1, "high", ("small", "high"), "frozen base + linear head", "logreg",
                     id="just-below"),
        pytest.param(SMALL_PER_CLASS, "high", ("large", "high"), "fine-tune the top blocks", "finetune",
                     id="at-threshold"),
    ],
)
def test_the_four_scenarios(n, similarity, key, strategy, command):
    assert choose_strategy(n, similarity) == key
    advice = advise(n, similarity, index="data.csv")
    assert advice.strategy == strategy
    assert any(command in c for c in advice.commands)
    assert advice.commands[0].startswith("featurehead ") and "data.csv" in advice.commands[0]


def test_other_models_unfreeze_by_count():
    assert any("--unfreeze 2" in c for c in advise(5000, "high", model="cae").commands)


@pytest.mark.parametrize(
    "n, similarity, match",
    [
        pytest.param(-1, "high", r"`n_images` must be a non-negative integer. Received: n_images=-1", id="neg"),
        pytest.param(10, "medium", r"`similarity` must be one of 'high', 'low'. Received: similarity='medium'",
                     id="sim"),
    ],
)
def test_bad_input(n, similarity, match):
    with pytest.raises(ValueError, match=match):
        choose_strategy(n, similarity)


def test_images_per_class_counts_the_smallest_training_class():
    assert images_per_class(["a", "a", "b", "b", "b"], ["", "", "", "", ""]) == 2
    assert images_per_class(["a", "a", "b", "b", "b"], ["train", "val", "train", "train", "test"]) == 1
    with pytest.raises(ValueError, match=r"at least 2 labelled classes to advise on. Received: classes \[\]"):
        images_per_class(["", ""], ["", ""])
    with pytest.raises(ValueError, match=r"Received: classes \['a'\]"):  # one class: there is nothing to classify
        images_per_class(["a", "a"], ["", ""])
    # with a split column, val and test rows are not training data (they were all counted); a class without train
    # rows is refused: advice "for 0 images" led to commands that train without it, or refuse
    with pytest.raises(ValueError, match=r"no 'train' rows of 2 of its 2 classes \('a', 'b'\): the heads train on"):
        images_per_class(["a", "a", "b", "b"], ["val", "test", "val", "test"])
    with pytest.raises(ValueError, match=r"no 'train' rows of 1 of its 2 classes \('b'\)"):
        images_per_class(["a", "a", "b", "b"], ["train", "train", "val", "test"])


def test_run_advise_needs_exactly_one_source():
    with pytest.raises(ValueError, match="give exactly one of `--n-images` and `--index`"):
        run_advise(similarity="high")


def test_cli_advise_counts_an_index(csv_index, capsys):
    assert main(["advise", "--index", str(csv_index), "--similarity", "low"]) == 0
    out = capsys.readouterr().out
    assert "4 images in the smallest class" in out and "with augmentation" in out
    assert f"featurehead extract {csv_index} --model vgg16 --augment 4" in out
    # an index whose files are under another root: the commands keep --images-root (else every file is missing)
    moved = csv_index.parent.parent / "index copy.csv"
    moved.write_text(csv_index.read_text())
    assert main(["advise", "--index", str(moved), "--images-root", str(csv_index.parent), "--similarity", "low"]) == 0
    out = capsys.readouterr().out
    assert f"featurehead extract '{moved}' --images-root {csv_index.parent} --model vgg16 --augment 4" in out
    assert f"featurehead augment-preview '{moved}' --images-root {csv_index.parent} " in out


def test_cli_advise_threshold_and_errors(capsys):
    assert main(["advise", "--n-images", "300", "--similarity", "high", "--small-threshold", "100"]) == 0
    assert "strategy: fine-tune the top blocks" in capsys.readouterr().out
    assert main(["advise", "--n-images", "-5", "--similarity", "high"]) == 2
    assert "`--n-images` must be a non-negative integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["advise", "--n-images", "5", "--index", "x.csv", "--similarity", "high"])
    assert exit_info.value.code == 2
    for model in ("foo", "cae", "keras"):  # printed as commands that could not run (keras and cae need weights)
        assert main(["advise", "--n-images", "5", "--similarity", "high", "--model", model]) == 2
        assert "`--model` must be a keras.applications backbone" in capsys.readouterr().err
    assert main(["advise", "--n-images", "5", "--similarity", "high", "--model", "resnet50"]) == 0
    capsys.readouterr()
    assert main(["advise", "--n-images", "1", "--similarity", "high"]) == 0
    assert "(1 image in the smallest class;" in capsys.readouterr().out  # was "1 images"


def test_cli_advise_refuses_an_index_with_a_class_it_cannot_train(tmp_path, capsys):
    index = tmp_path / "index.csv"
    index.write_text("filename,label,split\na.png,x,train\nb.png,y,val\nc.png,y,test\n")
    assert main(["advise", "--index", str(index), "--similarity", "high"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'train' rows of 1 of its 2 classes ('y')" in err, err


def test_cli_advise_evaluates_on_the_test_split_when_the_index_has_one(csv_index, capsys):
    """The small/high strategy's `evaluate` had no `--split test`: it scored the head's validation rows, or was
    refused when the index had train and test but no val (logreg then validates on nothing)."""
    assert main(["advise", "--index", str(csv_index), "--similarity", "high"]) == 0
    assert "featurehead evaluate head/ feats/ --out report/" in capsys.readouterr().out  # no split: its hold-out
    with_test = csv_index.with_name("split.csv")
    lines = csv_index.read_text().splitlines()
    with_test.write_text("\n".join([lines[0] + ",split"] + [f"{line},{'test' if i % 4 == 3 else 'train'}"
                                                             for i, line in enumerate(lines[1:])]) + "\n")
    assert main(["advise", "--index", str(with_test), "--similarity", "high"]) == 0
    assert "featurehead evaluate head/ feats/ --split test --out report/" in capsys.readouterr().out
