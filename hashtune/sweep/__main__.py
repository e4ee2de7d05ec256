"""`python -m hashtune.sweep`: see `hashtune.sweep.cli`."""

import os
import sys

from hashtune.sweep.cli import SIGTERM_EXIT, main

code = main()
if code == SIGTERM_EXIT:
    # skip Ray's atexit shutdown, which would wait for the GCS that the same SIGTERM ended (see driver._fit)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
