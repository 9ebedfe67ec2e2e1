"""The `featurehead` command line (console script `featurehead = pipelines.cli:main`).

Importing it loads no Keras, h5py or scikit-learn: each command imports what it needs when it runs.
"""

from .app import COMMANDS, EXIT_INTERNAL_ERROR, build_parser, main

__all__ = ["COMMANDS", "EXIT_INTERNAL_ERROR", "build_parser", "main"]
