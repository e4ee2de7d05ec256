"""`python tests/sweep_with_hooks.py ARGS` is `python -m hashtune.sweep ARGS` with the test hooks the environment names:

* `FAKE_TRIAL=module:function` runs that function (`fake_trials.py`) instead of training;
* `KILL_AFTER_RUN_CLOSED=MARKER` kills the driver's process group once, right after a trial's MLflow run closed.

hashtune itself reads neither variable: the hooks reach the sweep as `SweepHooks`, as a Python caller gives them.
"""

import importlib
import os
import sys

from fake_trials import KillDriverAfterRunClosed

from hashtune.sweep.cli import main
from hashtune.sweep.driver import SweepHooks


def hooks_from_environment() -> SweepHooks:
    function = None
    if os.environ.get("FAKE_TRIAL"):
        module, name = os.environ["FAKE_TRIAL"].split(":")
        function = getattr(importlib.import_module(module), name)
    marker = os.environ.get("KILL_AFTER_RUN_CLOSED")
    return SweepHooks(trial_function=function, callbacks=(KillDriverAfterRunClosed(marker),) if marker else ())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], hooks=hooks_from_environment()))
