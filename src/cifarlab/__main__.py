"""`python -m cifarlab` (and `torchrun -m cifarlab`) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
