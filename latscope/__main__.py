"""``python -m latscope``: the command line."""

import sys

from latscope.cli import main

sys.exit(main())
