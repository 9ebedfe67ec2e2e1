"""The `featurehead` command line (console script `featurehead = pipelines.cli:main`).

`app`: the process (exit codes, errors, quiet Keras start-up); `parser`: the argument parser; `commands`: the
core subcommands; `options`: the shared options; `augment`, `workflows`, `compose`, `report`: the subcommands
of the seed workflows, the layer sweep and the HTML report, each with its own `add_parsers`.

Importing it loads no Keras, h5py or scikit-learn: each command imports what it needs when it runs.
"""

from .app import EXIT_INTERNAL_ERROR, main
from .commands import COMMANDS
from .parser import build_parser

__all__ = ["COMMANDS", "EXIT_INTERNAL_ERROR", "build_parser", "main"]
