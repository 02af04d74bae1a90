"""``python -m genladder`` (and ``torchrun -m genladder``) runs the command line."""

import sys

from genladder.cli import main

sys.exit(main())
