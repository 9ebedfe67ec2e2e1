"""The CLI's output flags (-q, -v, --debug anywhere), its quiet start-up and its exit code for internal errors."""

import os
import re
import subprocess
import sys

import pytest

from pipelines import cli
from pipelines.cli import build_parser, main

FAST = ["--weights", "none", "--input-size", "32", "--batch-size", "4", "--workers", "1"]
NOISE = re.compile(r"oneDNN custom operations|Could not find cuda drivers|This TensorFlow binary is optimized"
                   r"|absl::InitializeLog|Downloading data from|^[IWE]\d{4} ", re.MULTILINE)


@pytest.mark.parametrize(
    "argv, quiet, verbose, debug",
    [
        pytest.param(["-q", "inspect", "s"], True, False, False, id="before"),
        pytest.param(["inspect", "s", "-q"], True, False, False, id="after"),
        pytest.param(["-v", "inspect", "s", "--quiet"], True, True, False, id="both-sides"),
        pytest.param(["inspect", "s", "--debug", "-v"], False, True, True, id="debug-after"),
        pytest.param(["inspect", "s"], False, False, False, id="none"),
    ],
)
def test_output_flags_work_before_or_after_the_command(argv, quiet, verbose, debug):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose, args.debug) == (quiet, verbose, debug)


def test_quiet_after_the_command_hides_the_progress_bar(csv_index, tmp_path, capsys):
    assert main(["extract", str(csv_index), *FAST, "--out", str(tmp_path / "a")]) == 0
    assert "extract vgg16" in capsys.readouterr().err  # tqdm's bar, with its description
    assert main(["extract", str(csv_index), *FAST, "--out", str(tmp_path / "b"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip().splitlines()[-1] == str(tmp_path / "b")


def _bug(args):
    raise RuntimeError("boom: a bug")


def test_an_internal_error_is_exit_3_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "inspect", _bug)
    monkeypatch.delenv("FEATUREHEAD_DEBUG", raising=False)
    assert main(["inspect", str(tmp_path)]) == cli.EXIT_INTERNAL_ERROR == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.fullmatch(r"featurehead inspect: internal error \(a bug in featurehead, please report it\): "
                        r"RuntimeError: boom: a bug; re-run with --debug for the traceback\n", err), err


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("what", ["bug", "bad-input"])
def test_debug_prints_the_traceback_and_keeps_the_exit_code(tmp_path, monkeypatch, capsys, how, what):
    """With --debug an error was re-raised: Python's exit 1 for bad input (2) and for a bug (3) alike."""
    if what == "bug":
        monkeypatch.setitem(cli.COMMANDS, "inspect", _bug)
    argv = ["inspect", str(tmp_path / "missing")] + (["--debug"] if how == "flag" else [])
    monkeypatch.delenv("FEATUREHEAD_DEBUG", raising=False)
    if how == "env":
        monkeypatch.setenv("FEATUREHEAD_DEBUG", "1")
    assert main(argv) == (3 if what == "bug" else 2)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    last = err.strip().splitlines()[-1]
    assert last.startswith("featurehead inspect: internal error" if what == "bug" else "featurehead inspect: error:")
    assert "re-run with --debug" not in last


def test_bad_input_stays_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "internal error" not in capsys.readouterr().err


def _extract_in_a_subprocess(csv_index, out, *flags):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEATUREHEAD_DEBUG")}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "extract", str(csv_index), *FAST, "--out",
                           str(out), *flags], capture_output=True, text=True, env=env, timeout=300)


def test_tensorflow_start_up_lines_reach_the_user_only_with_verbose(csv_index, tmp_path):
    proc = _extract_in_a_subprocess(csv_index, tmp_path / "s", "-q")
    assert proc.returncode == 0, proc.stderr
    assert not NOISE.search(proc.stderr), proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "s")
    loud = _extract_in_a_subprocess(csv_index, tmp_path / "t", "-v", "-q")
    assert loud.returncode == 0 and loud.stdout.strip().splitlines()[-1] == str(tmp_path / "t")
    if not NOISE.search(loud.stderr):
        pytest.skip("this TensorFlow build prints no start-up notes here, so -v has nothing to show")


_SETTINGS = """
import logging, os, sys
from absl import logging as absl_logging
def settings():  # once Keras is loaded
    import keras
    return (keras.config.is_interactive_logging_enabled(), absl_logging.get_verbosity(),
            logging.getLogger("absl").level, logging.getLogger().level)
"""


def test_main_in_process_gives_back_the_logging_settings_it_quietened(csv_index, tmp_path):
    """A caller of `main()` in its own process kept TF_CPP_MIN_LOG_LEVEL=3, Keras's interactive logging off (its
    `fit(verbose=1)` progress went through absl, then at ERROR) and absl at ERROR after main returned: now each is
    as a plain `import keras` leaves it, and the environment as it was before main."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEATUREHEAD_DEBUG")}
    base = subprocess.run([sys.executable, "-c", _SETTINGS + "print(settings())"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert base.returncode == 0, base.stderr
    plain = base.stdout.strip().splitlines()[-1]
    script = _SETTINGS + f"""
from pipelines.cli import main
code = main(["extract", {str(csv_index)!r}, *{FAST!r}, "--out", {str(tmp_path / "s")!r}, "-q"])
print(code, os.environ.get("TF_CPP_MIN_LOG_LEVEL"), settings())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"0 None {plain}"


def test_a_reader_that_stops_early_is_exit_141_without_a_line(tmp_path):
    """`featurehead models | head -1`: the reader going away is not an error of featurehead's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "advise", "--n-images", "10", "--similarity",
                             "low"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # gone before anything is written
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
