"""`python -m hashtune.train`: see `hashtune.train.cli`."""

import sys

from hashtune.train.cli import main

sys.exit(main())
