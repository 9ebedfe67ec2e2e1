"""`python -m pipelines.cli`: the `featurehead` command line."""

import sys

from .app import main

sys.exit(main())
