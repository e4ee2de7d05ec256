"""The Ray Tune callback that writes one MLflow child run per trial under the sweep's parent run.

It runs in the sweep driver (the main process) for both trial paths (plain trainer in the trial, or a
Ray Train worker group), so it sees failures that a worker could not log. A child run holds the full
resolved config as params (the trainer's dotted names), per-epoch curves (step = epoch), the final
metrics, tags (space, variant, seed, trial id, status, and the trial process's environment, which the
trial reports with its first result) and artifacts (config.yaml, history.csv, metrics.json,
pr_curve.png, pr_curve.csv, splits.npz) with the checkpoint's URI as a tag.

What a trial costs the store does not grow with the sweep: the parent's child runs are read once per
driver (`_RunIndex`), so a resumed sweep finds a trial's run again by its `hashtune.trial_id` (or a grid
point's `hashtune.point`) in memory and never duplicates it; a new trial is one `create_run`, one batch
of params, one batch per result (its final result carries the `finished` and `completed` tags in the same
batch) and one `set_terminated`. The parent run carries the running `cost/*` totals (each run's latest,
cumulative value, summed), which trials, the stopper and the summary read in one `get_run` instead of
summing every child run.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from hashtune.sweep.stores import StorageUnavailable, TrialTracking, storage_outage
from hashtune.tracking import ARTIFACTS, COMPLETED_TAG, COST_METRICS, TAG, find_runs, flat_params

__all__ = ["MlflowTrialLogger"]

STATUS_TAG = f"{TAG}status"


class _RunIndex:
    """The parent's child runs by trial id and by grid point (infeasible points excluded), read once."""

    def __init__(self, client, tracking: TrialTracking) -> None:
        runs = find_runs(client, tracking.experiment_id, f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'")
        self.trials = [run for run in runs if run.data.tags.get(STATUS_TAG) != "infeasible"]
        self.by_trial = {
            run.data.tags[f"{TAG}trial_id"]: run for run in self.trials if f"{TAG}trial_id" in run.data.tags
        }
        self.by_point = {run.data.tags[f"{TAG}point"]: run for run in self.trials if f"{TAG}point" in run.data.tags}

    def find(self, trial_id: str, point: str | None):
        return self.by_trial.get(trial_id) or (self.by_point.get(point) if point else None)


class MlflowTrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per trial under the sweep's parent run.

    Each (metric, step) is logged once per run: a run found again after a driver restart first reads
    back the steps it already holds, so a trial that resumes (or replays) logs only what is new.

    Args:
        tracking: the sweep's MLflow store, experiment and parent run.
        space_name: logged as a tag.
        resolve: maps a trial's config to `(variant, flat resolved config)`; `resolve.label(config)` names the run.
    """

    def __init__(self, *, tracking: TrialTracking, space_name: str, resolve) -> None:
        self.tracking, self.space_name, self.resolve = tracking, space_name, resolve
        self._fresh_state()

    def _fresh_state(self) -> None:
        self._client = None
        self._index: _RunIndex | None = None
        self._run_ids: dict[str, str] = {}
        self._created: set[str] = set()
        self._last: dict[str, dict] = {}
        self._logged: dict[str, set] = {}
        self._costs: dict[str, dict[str, float]] = {}  # run id -> its latest cost/* values
        self._cost_totals: dict[str, float] = {}

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into its experiment state, which may be older than MLflow: keep no cache
        return {"tracking": self.tracking, "space_name": self.space_name, "resolve": self.resolve}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh_state()

    @property
    def client(self):
        if self._client is None:
            self._client = self.tracking.client()
        return self._client

    @property
    def index(self) -> _RunIndex:
        """The runs earlier drivers left, read at this driver's first trial; the parent's cost totals made theirs."""
        if self._index is None:
            self._index = _RunIndex(self.client, self.tracking)
            self._costs = {
                run.info.run_id: {key: run.data.metrics.get(key, 0.0) for key in COST_METRICS}
                for run in self._index.trials
            }
            self._cost_totals = {key: sum(costs[key] for costs in self._costs.values()) for key in COST_METRICS}
            recorded = self.client.get_run(self.tracking.parent_run_id).data.metrics
            if any(
                recorded.get(key) != value for key, value in self._cost_totals.items()
            ):  # a driver killed between two writes
                self._log_cost_totals()
        return self._index

    def run_id(self, trial) -> str:
        """The trial's child run: cached, found again (resumed sweeps), or created with its params."""
        if trial.trial_id in self._run_ids:
            return self._run_ids[trial.trial_id]
        point = self.resolve.point_id(trial.config)
        found = self.index.find(trial.trial_id, point)
        if found is not None:
            run_id = found.info.run_id
            if found.data.tags.get(f"{TAG}trial_id") != trial.trial_id:  # a point launched again: its run, adopted
                self.client.set_tag(run_id, f"{TAG}trial_id", trial.trial_id)
            self._logged[trial.trial_id] = {
                (key, metric.step)
                for key in found.data.metrics
                for metric in self.client.get_metric_history(run_id, key)
            }
        else:
            run_id = self._create_run(trial, point)
        self._run_ids[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial, point: str | None) -> str:
        variant, flat = self.resolve(trial.config)
        run_id = self.client.create_run(
            self.tracking.experiment_id,
            run_name=f"{self.resolve.label(trial.config)} [{trial.trial_id}]",
            tags={
                "mlflow.parentRunId": self.tracking.parent_run_id,
                f"{TAG}space": self.space_name,
                f"{TAG}variant": variant,
                f"{TAG}seed": str(flat["train.seed"]),
                f"{TAG}trial_id": trial.trial_id,
                STATUS_TAG: "running",
            }
            | ({f"{TAG}point": point} if point else {}),
        ).info.run_id
        self.client.log_batch(run_id, params=flat_params(flat))
        self._created.add(trial.trial_id)
        return run_id

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """The trial's latest checkpoint, so a trial restarted before Tune saved its state can resume from it."""
        self.client.set_tag(self.run_id(trial), f"{TAG}checkpoint", _uri(checkpoint))

    def on_trial_start(self, iteration, trials, trial, **info):
        """Before the trial's function runs (Tune calls this first): its run exists and is RUNNING."""
        run_id = self.run_id(trial)
        if trial.trial_id not in self._created:  # a run found again (created RUNNING otherwise)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS_TAG, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric, RunTag

        step = int(result.get("epoch", 0))
        timestamp = int(result.get("timestamp", 0) * 1000)
        logged = self._logged.setdefault(trial.trial_id, set())
        # the final report repeats the last evaluation's values: log each (name, epoch) once
        metrics = [
            Metric(key, float(value), timestamp, step)
            for key, value in result.items()
            if "/" in key
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (key, step) not in logged
        ]
        logged.update((metric.key, step) for metric in metrics)
        tags = [
            RunTag(key, value) for key, value in result.items() if key.startswith(TAG) and isinstance(value, str)
        ]  # the environment
        if result.get("final") == 1.0:  # in the batch of the final metrics: a run never reads completed without them
            tags += [RunTag(STATUS_TAG, "finished"), RunTag(COMPLETED_TAG, "1")]
        if metrics or tags:
            self.client.log_batch(self.run_id(trial), metrics=metrics, tags=tags)
        self._last[trial.trial_id] = result
        self._add_cost(self.run_id(trial), result)

    def _add_cost(self, run_id: str, result: dict) -> None:
        """The parent run's `cost/*`: each run's latest (cumulative) value, summed; written when it moves."""
        latest = {key: float(result[key]) for key in COST_METRICS if key in result}
        previous = self._costs.setdefault(run_id, dict.fromkeys(COST_METRICS, 0.0))
        if all(previous[key] == value for key, value in latest.items()):
            return
        for key, value in latest.items():
            self._cost_totals[key] += value - previous[key]
        previous.update(latest)
        self._log_cost_totals()

    def _log_cost_totals(self) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.tracking.parent_run_id,
            metrics=[Metric(key, value, now, 0) for key, value in self._cost_totals.items()],
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        self._log_artifacts(run_id, trial)
        if last.get("final") != 1.0:  # a finished run got its status with its final result
            self.client.set_tag(run_id, STATUS_TAG, "skipped_budget" if last.get("budget/skipped") else "stopped_early")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        from mlflow.entities import RunTag

        run_id = self.run_id(trial)
        # Tune writes the error text locally and syncs it to storage later: read the local file
        error_file = Path(trial.error_file) if trial.error_file else None
        message = (
            error_file.read_text()
            if error_file is not None and error_file.is_file()
            else "trial failed (no error text)"
        )
        outage = storage_outage(message)
        if outage is not None:  # not the trial's fault: its run stays open for the --resume that finds storage back
            storage = trial.storage
            raise StorageUnavailable(f"{storage.storage_filesystem.type_name}://{storage.experiment_fs_path}", outage)
        self.client.log_batch(
            run_id, tags=[RunTag(STATUS_TAG, "failed"), RunTag(f"{TAG}error", _root_cause(message)[:4000])]
        )
        self._log_artifacts(run_id, trial)
        self.client.set_terminated(run_id, "FAILED")

    def _log_artifacts(self, run_id: str, trial) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        self.client.set_tag(run_id, f"{TAG}checkpoint", _uri(checkpoint))
        with checkpoint.as_directory() as folder:
            files = [Path(folder) / name for name in ARTIFACTS if (Path(folder) / name).is_file()]
            for path in files:
                self.client.log_artifact(run_id, str(path))


def _root_cause(message: str) -> str:
    """The last exception line of a (possibly wrapped) Ray error: the reason a user can act on."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if ("Error:" in line or "Exception:" in line) and not line.startswith("ray.")]
    return causes[-1] if causes else (lines[-1] if lines else message)


def _uri(checkpoint) -> str:
    """Where a Tune checkpoint is, as a URI a later process can open (`s3://bucket/...`; a local path as it is):
    Ray's `Checkpoint.path` is relative to its filesystem, which a tag does not carry."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"
