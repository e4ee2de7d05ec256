"""`python -m hashtune.sweep`: see `hashtune.sweep.cli`."""

import sys

from hashtune.sweep.cli import main

sys.exit(main())
