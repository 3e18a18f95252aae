"""``python -m bench``: the comparison suite (``bench/suite``); see ``--help``."""

import sys

from bench.suite.cli import main

sys.exit(main())
