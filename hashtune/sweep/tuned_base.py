"""Ablate around a tuned optimum: the base configuration of a sweep taken from a finished tuning experiment.

`python -m hashtune.sweep --space ablations --base tune` (or `base: tune` in the space): the best finished
trial of `tune` by its validation metric (never test) becomes the configuration every arm starts from; the
space's variants apply on top of it (its `fixed` values give way to the tuned ones, seeds are the space's).
"""

from __future__ import annotations

from typing import Any

from hashtune.config import Config, config_from_params
from hashtune.errors import InputError
from hashtune.metric_names import SELECTION_METRIC
from hashtune.tracking import TAG, best_finished_run, display_uri, sweep_parents

__all__ = ["BaseError", "tuned_base"]


class BaseError(InputError):
    """A base experiment that cannot serve: missing, unfinished, or without a finished trial (one line)."""


def tuned_base(client, experiment: str, metric: str = SELECTION_METRIC) -> tuple[Config, dict[str, Any]]:
    """(the best finished trial's config, where it came from) of a finished sweep `experiment`."""
    parents = sweep_parents(client, experiment)
    if not parents:
        raise BaseError(
            f"--base {experiment!r}: no sweep of that name in the MLflow store {display_uri(client.tracking_uri)}"
        )
    status = parents[0].info.status
    if status != "FINISHED":
        raise BaseError(
            f"--base {experiment!r}: its sweep is not finished (parent run {status}); finish it with --resume first"
        )
    try:
        run = best_finished_run(client, experiment, metric)
    except LookupError as error:
        raise BaseError(f"--base {experiment!r}: {error}") from None
    provenance = {
        "experiment": experiment,
        "run_id": run.info.run_id,
        "trial_id": run.data.tags.get(f"{TAG}trial_id", ""),
        "metric": metric,
        "value": run.data.metrics[metric],
    }
    return config_from_params(run.data.params), provenance
