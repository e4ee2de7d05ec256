"""A sweep's trials read back from MLflow (the client API only): one `TrialRun` per child run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hashtune.config import Config, ConfigError, config_from_params
from hashtune.errors import HashtuneError
from hashtune.metric_names import TEST_MAP
from hashtune.tracking import TAG, find_runs

__all__ = ["ReportError", "TrialRun", "Study", "load_study"]

REQUIRED_METRIC = TEST_MAP


class ReportError(HashtuneError, RuntimeError):
    """An experiment the report cannot be built from; the message says which and why, in one line."""


@dataclass(frozen=True)
class TrialRun:
    """One child run of a sweep: its identity, resolved config, outcome and latest metric values."""

    run_id: str
    name: str
    variant: str
    seed: int
    status: str  # finished | stopped_early | failed | killed | running | infeasible
    config: Config
    metrics: dict[str, float]
    start_time: int
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return self.config.model.bits

    @property
    def k_groups(self) -> int:
        return self.config.model.k_groups


@dataclass(frozen=True)
class Study:
    """Every child run of an experiment, in start order, and the sweep parent run(s)."""

    experiment_name: str
    experiment_id: str
    tracking_uri: str
    runs: list[TrialRun]
    parent_run_ids: list[str]  # newest first
    parent_params: dict[str, str] = field(default_factory=dict)  # the newest parent's (space, base, replicates.*)
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> list[TrialRun]:
        return [run for run in self.runs if run.status == "finished"]

    @property
    def infeasible(self) -> list[TrialRun]:
        return [run for run in self.runs if run.status == "infeasible"]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts


def _trial_run(run) -> TrialRun:
    tags = run.data.tags
    try:
        config = config_from_params(run.data.params)
    except ConfigError as error:
        raise ReportError(
            f"run {run.info.run_id} ({run.info.run_name}) has params that are not a hashtune config: {error}"
        ) from None
    return TrialRun(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        variant=tags.get(f"{TAG}variant", ""),
        seed=config.train.seed,
        status=tags.get(f"{TAG}status", run.info.status.lower()),
        config=config,
        metrics=dict(run.data.metrics),
        start_time=run.info.start_time or 0,
        tags={key: value for key, value in tags.items() if key.startswith(TAG)},
    )


def load_study(client: Any, experiment_name: str) -> Study:
    """Read every child run of `experiment_name`; raises `ReportError` for what no report can be built from."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(
            f"no MLflow experiment named {experiment_name!r} at {client.tracking_uri}; experiments there: "
            f"{', '.join(names) or 'none'}"
        )
    every = find_runs(client, experiment.experiment_id)
    parents = sorted(
        (run for run in every if run.data.tags.get(f"{TAG}role") == "sweep"),
        key=lambda run: -(run.info.start_time or 0),
    )
    children = sorted(
        (run for run in every if "mlflow.parentRunId" in run.data.tags), key=lambda run: run.info.start_time or 0
    )
    runs = [_trial_run(run) for run in children]
    finished = [run for run in runs if run.status == "finished"]
    if not finished:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(Study("", "", "", runs, []).counts().items())
        )
        raise ReportError(
            f"experiment {experiment_name!r} has no finished trial runs ({statuses or 'no child runs at all'}); run or "
            "resume its sweep first"
        )
    missing = [run for run in finished if REQUIRED_METRIC not in run.metrics]
    if missing:
        raise ReportError(
            f"{len(missing)} finished run(s) of {experiment_name!r} have no {REQUIRED_METRIC} metric (first: "
            f"{missing[0].run_id}, "
            f"{missing[0].name!r}); they were not logged by a hashtune sweep"
        )
    return Study(
        experiment_name,
        experiment.experiment_id,
        client.tracking_uri,
        runs,
        [run.info.run_id for run in parents],
        dict(parents[0].data.params) if parents else {},
        dict(parents[0].data.tags) if parents else {},
    )
