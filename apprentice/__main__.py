"""``python -m apprentice``: the same command line as the ``apprentice`` script."""

import sys

from apprentice.cli import main

sys.exit(main())
