"""What a sweep continues with on `--resume`: its parent run, the config and budget it started with, and the
refusals when the stores or the space do not match what it started with."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from hashtune.config import Config, config_from_dict
from hashtune.sweep.space import SearchSpace
from hashtune.sweep.space_record import changed_keys, saved_space_record, space_record
from hashtune.sweep.space_settings import Budget
from hashtune.sweep.stores import SweepError, SweepStores
from hashtune.tracking import TAG, find_runs

__all__ = ["ResumeState", "resume_state", "resumed_base"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeState:
    """Where a sweep starts from: its parent run (None for a new sweep), the config and space its trials run, and the
    space record saved on (or compared with) its parent run."""

    parent: Any
    base: Config
    space: SearchSpace
    record: dict[str, Any]


def resume_state(
    client,
    existing,
    stores: SweepStores,
    space: SearchSpace,
    base: Config,
    *,
    resume: bool,
    explicit: set[str] | None,
    provenance: dict | None,
    uri: str,
) -> ResumeState:
    """The parent run and the config of a resumed sweep (`base` and `space` for a new one); refuses a resume whose
    Tune state has no parent run in this MLflow store, or whose space or given keys changed since it started."""
    parent = _find_parent(client, existing.experiment_id, stores) if resume and existing else None
    if resume and parent is None:
        raise SweepError(_mismatched_stores(client, existing, stores, uri))
    saved = saved_space_record(client, parent.info.run_id) if parent is not None else None
    budgeted = _started_budget(space, saved)
    record = space_record(budgeted, base) | ({"base": provenance} if provenance else {})
    base = resumed_base(saved, record, base, explicit, stores.name)
    if budgeted is not space:  # said once nothing refused the resume
        _logger.info(
            "continuing with the budget sweep %r started with: %g %s-hours",
            stores.name,
            budgeted.budget.hours,
            budgeted.budget.resource.upper(),
        )
    return ResumeState(parent=parent, base=base, space=budgeted, record=record)


def _find_parent(client, experiment_id: str, stores: SweepStores):
    runs = find_runs(
        client, experiment_id, f"tags.`{TAG}role` = 'sweep' and tags.`{TAG}storage` = '{stores.experiment_path}'"
    )
    return runs[0] if runs else None


def _mismatched_stores(client, experiment, stores: SweepStores, uri: str) -> str:
    """Why `--resume` cannot pair Tune's state with the MLflow store (it would run every trial again, untracked)."""
    started = find_runs(client, experiment.experiment_id, f"tags.`{TAG}role` = 'sweep'") if experiment else []
    if started:
        return (
            f"--resume: the MLflow store {uri} has sweep {stores.name!r} with its Tune state at "
            f"{started[0].data.tags.get(f'{TAG}storage')}, not at {stores.experiment_path}; give the --storage (or "
            "--results-dir) it started with"
        )
    return (
        f"--resume: Tune's state of sweep {stores.name!r} is at {stores.experiment_path}, but the MLflow store {uri} "
        "holds no run of it; give the --mlflow-uri (or --results-dir) it started with"
    )


def _started_budget(space: SearchSpace, saved: dict[str, Any] | None) -> SearchSpace:
    """A resumed sweep given no budget (neither its space nor `--budget`) keeps the one it started with."""
    started = ((saved or {}).get("space") or {}).get("budget")
    if space.budget is not None or not started:
        return space
    return dataclasses.replace(space, budget=Budget(**started))


def resumed_base(
    saved: dict[str, Any] | None, record: dict[str, Any], base: Config, explicit: set[str] | None, name: str
) -> Config:
    """The config a sweep runs: `base` for a new one (`saved` None); resumed, the config it was started with.

    A space edited since, or a config key given again (on the command line; every key with `--base`,
    `explicit=None`) with another value, is refused. A default changed since does not move a resumed
    sweep's trials: they keep the value the sweep started with (said in one line).
    """
    if saved is None:
        return base
    if "config" not in saved:  # recorded before whole configs were: its overrides must match today's
        _refuse_changed(changed_keys(saved, {key: value for key, value in record.items() if key != "config"}), name)
        return base
    _refuse_changed(changed_keys(_without_config(saved), _without_config(record)), name)
    started = {
        key: value for key, value in saved["config"].items() if key in record["config"]
    }  # keys added since: their default
    moved = sorted(key for key, value in started.items() if record["config"][key] != value)
    _refuse_changed([f"config.{key}" for key in moved if explicit is None or key in explicit], name)
    if moved:
        _logger.info(
            "continuing with the config sweep %r started with; defaults changed since: %s", name, ", ".join(moved)
        )
    return config_from_dict(started)


def _without_config(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in ("config", "overrides")}


def _refuse_changed(changed: list[str], name: str) -> None:
    if changed:
        raise SweepError(
            f"--resume: the space or overrides of sweep {name!r} changed since it started ({', '.join(changed[:8])}"
            f"{', ...' if len(changed) > 8 else ''}); restore them, or start a new sweep with another --name"
        )
