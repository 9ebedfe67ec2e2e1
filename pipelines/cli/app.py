"""The `featurehead` process: parse, run the command, map errors to exit codes, keep TensorFlow's start-up quiet.

Exit codes: 0 success; 1 the run finished but some rows failed (models --check: the table differs); 2 bad usage or
input (one line on stderr); 3 an internal error, i.e. a bug in featurehead (one line on stderr; the traceback with
--debug or FEATUREHEAD_DEBUG=1, before that line: the exit code stays the same); 130 interrupted; 141 the reader of
standard output stopped early.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import traceback

from .commands import COMMANDS
from .parser import build_parser

EXIT_INTERNAL_ERROR = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away

# Commands that never load TensorFlow (HDF5 only, or plain data).
_LIGHT_COMMANDS = frozenset({"inspect", "compact", "export", "advise"})
# commands whose work survives an interruption (stored shards): run again, they go on where they stopped
_RESUMABLE_COMMANDS = frozenset({"extract", "compact", "predict", "sweep", "demo"})

# TensorFlow's C++ start-up notes: TF_CPP_MIN_LOG_LEVEL does not silence them since TensorFlow logs through absl
# before absl::InitializeLog() is called, so the CLI captures file descriptor 2 while TensorFlow loads.
_STARTUP_NOISE = re.compile(
    r"^(?:[IWE]\d{4} [\d:. ]+\d+ \S+\.(?:cc|h):\d+\]|WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions:|WARNING:absl:|Downloading data from)"
)


def _expected_errors() -> tuple:
    import classify
    import extract
    import features_store

    from .. import scale

    # OSError: unwritable --out, an existing file where a folder is wanted, a full disk...
    return (extract.ExtractError, features_store.FeatureStoreError, classify.ClassifyError, OSError, ValueError,
            scale.DaskWorkersDiedError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("FEATUREHEAD_DEBUG", "") not in ("", "0")
    quiet = None
    try:
        if not args.verbose and args.command not in _LIGHT_COMMANDS:
            quiet = _start_keras_quietly()  # only when Keras is imported: a relabel or a logreg report never loads it
        func = getattr(args, "func", None) or COMMANDS[args.command]
        with _logs_above_progress_bars():
            code = func(args)
        sys.stdout.flush()  # a block-buffered pipe fails here, inside the try, not at exit
        return code
    except _expected_errors() as err:
        if isinstance(err, BrokenPipeError) and _stdout_reader_gone():
            # the reader of our standard output stopped early (`| head`): not a failure to report. Python would
            # complain again when it flushes stdout at exit, so what is left of it goes nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE
        if debug:  # the traceback, for bug reports; the exit code stays the one without --debug
            traceback.print_exc(file=sys.stderr)
        message = _as_flags(" ".join(_plain(err).split()), parser.commands.get(args.command))
        print(f"featurehead {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = ("to resume" if args.command in _RESUMABLE_COMMANDS
                 else "(it starts over; an earlier result is left as it was)")
        print(f"featurehead {args.command}: interrupted; re-run the same command {again}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (anything else is a bug: say so in one line)
        if debug:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"featurehead {args.command}: internal error (a bug in featurehead, please report it): {message}"
              + ("" if debug else "; re-run with --debug for the traceback"), file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:  # an in-process caller of main() gets its import system and its logging settings back as they were
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietKerasImport)]
        if quiet is not None:
            quiet.restore()


def _logs_above_progress_bars():
    """Our warnings during a progress bar get a line of their own (through `tqdm.write`), not the end of the bar's.

    Where the root logger prints to the console (a caller of `main()` configured logging), that handler is the one
    redirected, as tqdm's own example does; otherwise our packages' loggers get the redirecting handler, and only
    for the command: the root logger is left without one, so that a library which installs a console handler of its
    own only when the root has none (tensorflow) does so as it would without us."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    console = any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
                  for h in logging.root.handlers)
    return logging_redirect_tqdm(loggers=[logging.root] if console else
                                 [logging.getLogger(name) for name in ("extract", "features_store", "classify",
                                                                       "pipelines")])


def _plain(err: BaseException) -> str:
    """An error's line: an OS error about a file as "PATH: why" (not "[Errno 30] Read-only file system: 'PATH'");
    featurehead's own errors say more, and are kept as they are."""
    if isinstance(err, OSError) and err.errno and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}" + (f" (to {err.filename2})" if err.filename2 is not None else "")
    return str(err)


def _as_flags(message: str, command_parser) -> str:
    """An error of the Python API in the command's own words: "`input_size` must be ... Received: input_size=8"
    becomes "`--input-size` must be ... Received: --input-size 8" for every parameter that the command takes as
    that option (same name, underscores as dashes), and so does scikit-learn's "The 'C' parameter of ... must be
    ... Got -1.0 instead."; any other name is left as it is."""
    for action in getattr(command_parser, "_actions", ()):
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or flag.lstrip("-").replace("-", "_") != action.dest or action.help == argparse.SUPPRESS:
            continue  # a hidden option (sweep's --layer, refused) is not what the user set
        # scikit-learn's wording of a bad parameter ("The 'C' parameter of LogisticRegression must be a float in the
        # range (0.0, inf]. Got -1.0 instead.") in ours first
        message = re.sub(rf"^The '{re.escape(action.dest)}' parameter of \w+ must be (.*)\. Got (.*) instead\.$",
                         lambda m, dest=action.dest: f"`{dest}` must be {m[1]}. Received: {dest}={m[2]}", message)
        message = message.replace(f"`{action.dest}`", f"`{flag}`")
        head, sep, tail = message.partition("Received: ")
        message = head + sep + re.sub(rf"(?<![\w-]){action.dest}=", f"{flag} ", tail) if sep else message
    return message


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file behind sys.stdout (a captured one), no poll
        return False


def _start_keras_quietly() -> _QuietKerasImport | None:
    """Have the first `import keras` (which loads TensorFlow) keep its start-up notes from the user; return the
    hook (None when Keras is loaded already), whose `restore()` puts back what it changed.

    Only the CLI does this, and lazily: a one-shot import hook, so a command that needs no model (a relabel, an
    up-to-date extract, a logreg report) still never imports Keras. When Keras loads: TF_CPP_MIN_LOG_LEVEL for
    TensorFlow's later C++ logs (unless the user set it), fd 2 captured while it loads, lines that are not
    start-up notes written back, Keras's "interactive logging" (its download line on stdout) turned off and absl
    set to ERROR. `main` restores them when it returns (a caller of `main()` in its own process keeps its
    settings); a Dask worker of `--dask local:N` keeps them.
    """
    if "keras" in sys.modules or any(isinstance(f, _QuietKerasImport) for f in sys.meta_path):
        return None
    hook = _QuietKerasImport()
    sys.meta_path.insert(0, hook)
    return hook


def quiet_keras_plugin():
    """A Dask worker plugin that installs, in each local worker (`--dask local:N`; restarted ones too), the hook
    that keeps TensorFlow's start-up notes from the terminal the workers share with us, when Keras is first
    imported there (only if something is extracted)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietKeras(WorkerPlugin):
        name = "featurehead-quiet-keras"

        def setup(self, worker):
            _start_keras_quietly()

    return QuietKeras()


class _QuietKerasImport:
    """A one-shot meta-path finder: the real spec of `keras`, its module executed with fd 2 captured."""

    def __init__(self):
        self._undo: list = []  # what `restore` puts back, last change first

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real = spec.loader.exec_module

        def exec_module(module):
            if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
                self._undo.append(lambda: os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None))
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile() as captured:
                os.dup2(captured.fileno(), 2)
                try:
                    real(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    captured.seek(0)
                    lines = captured.read().decode(errors="replace").splitlines(keepends=True)
                    sys.stderr.write("".join(line for line in lines if not _STARTUP_NOISE.match(line)))
            if module.config.is_interactive_logging_enabled():
                module.config.disable_interactive_logging()
                self._undo.append(module.config.enable_interactive_logging)
            from absl import logging as absl_logging

            verbosity, levels = absl_logging.get_verbosity(), [(lg, lg.level) for lg in
                                                               (logging.getLogger("absl"), logging.getLogger())]
            absl_logging.set_verbosity(absl_logging.ERROR)  # may set the absl logger's level, or the root's

            def undo_absl():
                absl_logging.set_verbosity(verbosity)
                for lg, level in levels:
                    lg.setLevel(level)

            self._undo.append(undo_absl)

        spec.loader.exec_module = exec_module
        return spec
