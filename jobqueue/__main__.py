"""``python -m jobqueue``: the same as the ``jobqueue`` command."""

import sys

from jobqueue.cli import main

sys.exit(main())
