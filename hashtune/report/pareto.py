"""The non-dominated trials of a study with several objectives: which code to ship.

A trial dominates another when it is at least as good in every objective and better in one; the front is the
trials no other dominates (ties on every objective are all kept). Optuna computes it (`Study.best_trials` of a
multi-objective study), so the front here is the one Optuna's samplers and plots use.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import create_trial

from hashtune.errors import InputError

__all__ = ["MODES", "pareto_front"]

MODES = {"max": "maximize", "min": "minimize"}


def pareto_front(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (ascending) of the rows of `values` that no other row dominates, each column's `mode` max or min."""
    if any(mode not in MODES for mode in modes):
        raise InputError(f"modes must each be one of {', '.join(MODES)}, got {list(modes)}")
    rows = [list(map(float, row)) for row in values]
    if any(len(row) != len(modes) for row in rows):
        raise InputError(f"every row needs {len(modes)} objective values (one per mode)")
    if len(modes) < 2:
        raise InputError(f"a front needs at least two objectives, got {len(modes)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[MODES[mode] for mode in modes])
    study.add_trials([create_trial(values=row) for row in rows])
    return sorted(trial.number for trial in study.best_trials)
