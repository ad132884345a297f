"""`python -m services.tracker.native`: builds the tracker's C kernels (see the package docstring)."""

import sys

from services.tracker.native import main

sys.exit(main())
