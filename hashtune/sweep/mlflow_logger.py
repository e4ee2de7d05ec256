"""The Ray Tune callback that writes one MLflow child run per trial under the sweep's parent run.

It runs in the sweep driver (the main process) for both trial paths (plain trainer in the trial, or a
Ray Train worker group), so it sees failures that a worker could not log. A child run holds the full
resolved config as params (the trainer's dotted names), per-epoch curves (step = epoch), the final
metrics, tags (space, variant, seed, trial id, status) and artifacts (config.yaml, history.csv,
metrics.json, pr_curve.png, pr_curve.csv, splits.npz) with the checkpoint's URI as a tag. Runs are found
again by their `hashtune.trial_id` tag (or a grid point's `hashtune.point`), so a resumed sweep never
duplicates them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ray.tune import Callback

from hashtune.sweep.stores import TrialTracking
from hashtune.tracking import ARTIFACTS, COMPLETED_TAG, TAG, find_trial_run, flat_params, root_cause

__all__ = ["MlflowTrialLogger", "FAULT_ENV"]

FAULT_ENV = "HASHTUNE_TEST_FAULT"
"""Test-only fault injection (`kill-driver-after-run-closed`): never set it outside tests."""


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
        self._run_ids: dict[str, str] = {}
        self._last: dict[str, dict] = {}
        self._logged: dict[str, set] = {}

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into its experiment state, which may be older than MLflow: keep no cache
        return {"tracking": self.tracking, "space_name": self.space_name, "resolve": self.resolve}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh_state()

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking.uri)
        return self._client

    def run_id(self, trial) -> str:
        """The trial's child run: cached, found by tag (resumed sweeps), or created with its params."""
        if trial.trial_id in self._run_ids:
            return self._run_ids[trial.trial_id]
        point = self.resolve.point_id(trial.config)
        found = find_trial_run(self.client, self.tracking.experiment_id, trial.trial_id, point)
        if found is not None:
            run_id = found.info.run_id
            if found.data.tags.get(f"{TAG}trial_id") != trial.trial_id:  # a point launched again: its run, adopted
                self.client.set_tag(run_id, f"{TAG}trial_id", trial.trial_id)
            self._logged[trial.trial_id] = {(key, metric.step) for key in found.data.metrics
                                            for metric in self.client.get_metric_history(run_id, key)}
        else:
            variant, flat = self.resolve(trial.config)
            run_name = f"{self.resolve.label(trial.config)} [{trial.trial_id}]"
            run_id = self.client.create_run(self.tracking.experiment_id, run_name=run_name, tags={
                "mlflow.parentRunId": self.tracking.parent_run_id, f"{TAG}space": self.space_name, f"{TAG}variant": variant,
                f"{TAG}seed": str(flat["train.seed"]), f"{TAG}trial_id": trial.trial_id, f"{TAG}status": "running",
            } | ({f"{TAG}point": point} if point else {})).info.run_id
            self.client.log_batch(run_id, params=flat_params(flat))
        self._run_ids[trial.trial_id] = run_id
        return run_id

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """The trial's latest checkpoint, so a trial restarted before Tune saved its state can resume from it."""
        self.client.set_tag(self.run_id(trial), f"{TAG}checkpoint", checkpoint.path)

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, f"{TAG}status", "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step = int(result.get("epoch", 0))
        timestamp = int(result.get("timestamp", 0) * 1000)
        logged = self._logged.setdefault(trial.trial_id, set())
        # the final report repeats the last evaluation's values: log each (name, epoch) once
        metrics = [Metric(key, float(value), timestamp, step) for key, value in result.items()
                   if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and (key, step) not in logged]
        logged.update((metric.key, step) for metric in metrics)
        if metrics:
            self.client.log_batch(self.run_id(trial), metrics=metrics)
        self._last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        finished = last.get("final") == 1.0
        self._log_artifacts(run_id, trial)
        status = "finished" if finished else ("skipped_budget" if last.get("budget/skipped") else "stopped_early")
        self.client.set_tag(run_id, f"{TAG}status", status)
        if finished:  # written once, never reset (a restarted trial's status tag says running meanwhile)
            self.client.set_tag(run_id, COMPLETED_TAG, "1")
        self.client.set_terminated(run_id, "FINISHED")
        if os.environ.get(FAULT_ENV) == "kill-driver-after-run-closed":  # tests: the window before Tune saves its state
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        # Tune writes the error text locally and syncs it to storage later: read the local file
        error_file = Path(trial.error_file) if trial.error_file else None
        message = error_file.read_text() if error_file is not None and error_file.is_file() else "trial failed (no error text)"
        self.client.set_tag(run_id, f"{TAG}status", "failed")
        self.client.set_tag(run_id, f"{TAG}error", root_cause(message)[:4000])
        self._log_artifacts(run_id, trial)
        self.client.set_terminated(run_id, "FAILED")

    def _log_artifacts(self, run_id: str, trial) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        self.client.set_tag(run_id, f"{TAG}checkpoint", checkpoint.path)
        with checkpoint.as_directory() as folder:
            for name in ARTIFACTS:
                if (Path(folder) / name).is_file():
                    self.client.log_artifact(run_id, str(Path(folder) / name))
