"""``python -m loadtest.soak``: see :mod:`loadtest.soak`."""

from __future__ import annotations

import sys

from loadtest.soak.run import main

sys.exit(main())
