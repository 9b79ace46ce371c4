"""``python -m geoplantnet``: the same as the ``geoplantnet`` command."""

import sys

from geoplantnet.cli import main

sys.exit(main())
