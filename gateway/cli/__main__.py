"""``python -m gateway.cli``: the same as the ``flgate`` command."""

import sys

from . import main

sys.exit(main())
