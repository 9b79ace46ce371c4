"""``python -m geoplantnet.cli``: the command, as ``python -m geoplantnet``."""

import sys

from geoplantnet.cli import main

sys.exit(main())
