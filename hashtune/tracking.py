"""MLflow for sweeps: one experiment per sweep, a parent run, one child run per trial.

`MlflowTrialLogger` is a Ray Tune callback, so it runs in the sweep driver (the main process) for
both trial paths (plain trainer in the trial, or a Ray Train worker group), and it sees failures
that a worker could not log. A child run holds the full resolved config as params (the trainer's
dotted names), per-epoch curves (step = epoch), the final metrics, tags (space, variant, seed,
trial id, status) and artifacts (config.yaml, history.csv, metrics.json, pr_curve.png) with the
checkpoint's URI as a tag. Runs are found again by their `hashtune.trial_id` tag, so a resumed sweep
never duplicates them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = [
    "TAG",
    "default_tracking_uri",
    "resolve_tracking",
    "get_or_create_experiment",
    "find_runs",
    "MlflowTrialLogger",
    "log_infeasible_points",
    "mark_orphans_killed",
]

TAG = "hashtune."
ARTIFACTS = ("config.yaml", "history.csv", "metrics.json", "pr_curve.png", "pr_curve.csv", "splits.npz")


def default_tracking_uri(results_dir: Path) -> str:
    """A SQLite store under `results_dir` (no server needed)."""
    return f"sqlite:///{(results_dir / 'mlflow.db').absolute()}"


def resolve_tracking(uri: str | None, results_dir: Path, *, create: bool = True) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments); checks that the store answers.

    With `create=False` (readers such as the report) a SQLite store that does not exist yet is an error
    instead of a new empty database.
    """
    from mlflow import MlflowClient

    if not create:
        database = Path((uri or default_tracking_uri(results_dir)).removeprefix("sqlite:///"))
        if (uri is None or uri.startswith("sqlite:///")) and not database.is_file():
            raise ConnectionError(f"no MLflow store at {database}; run a sweep first or pass --mlflow-uri")
    if uri is None:
        results_dir.mkdir(parents=True, exist_ok=True)
        uri, artifacts = default_tracking_uri(results_dir), (results_dir / "mlartifacts").absolute().as_uri()
    else:
        artifacts = None  # a server decides where artifacts go
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure to reach the store is the same user error
        raise ConnectionError(f"MLflow tracking URI {uri!r} is unreachable: {str(error).splitlines()[0][:200]}") from None
    return uri, artifacts


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_location}/{name}" if artifact_location else None)


def find_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment that matches `filter_string` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def point_id(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _params(flat_config: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in sorted(flat_config.items())]


def log_infeasible_points(client, experiment_id: str, parent_run_id: str, space_name: str, points: list[dict], base_flat: dict) -> None:
    """Grid points whose bit allocation fails: FINISHED child runs tagged infeasible, with params, no metrics."""
    existing = {run.data.tags.get(f"{TAG}point") for run in find_runs(client, experiment_id, f"tags.`{TAG}status` = 'infeasible'")}
    for point in points:
        pid = point_id(point["overrides"])
        if pid in existing:
            continue
        run = client.create_run(experiment_id, run_name=f"infeasible-{pid}", tags={
            "mlflow.parentRunId": parent_run_id, f"{TAG}space": space_name, f"{TAG}variant": point["variant"],
            f"{TAG}status": "infeasible", f"{TAG}point": pid, f"{TAG}seed": str(point["overrides"].get("train.seed", "")),
        })
        client.log_batch(run.info.run_id, params=_params(base_flat | point["overrides"]))
        client.set_terminated(run.info.run_id, "FINISHED")


def mark_orphans_killed(client, experiment_id: str, parent_run_id: str) -> int:
    """Child runs left RUNNING by a driver that died: KILLED (a restarted trial sets its run RUNNING again)."""
    orphans = find_runs(client, experiment_id, f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for run in orphans:
        client.set_tag(run.info.run_id, f"{TAG}status", "killed")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(orphans)


class MlflowTrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per trial under the sweep's parent run.

    Args:
        tracking_uri: the MLflow store.
        experiment_id: the sweep's experiment.
        parent_run_id: the sweep's parent run.
        space_name: logged as a tag.
        resolve: maps a trial's config to `(variant, flat resolved config)`; `resolve.label(config)` names the run.
        epochs: `train.epochs`, to tell finished trials from early-stopped ones.
    """

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, space_name: str, resolve, epochs: int) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.space_name, self.resolve, self.epochs = space_name, resolve, epochs
        self._client = None
        self._run_ids: dict[str, str] = {}
        self._last: dict[str, dict] = {}
        self._logged: dict[str, set] = {}

    def __getstate__(self) -> dict:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        """The trial's child run: cached, found by tag (resumed sweeps), or created with its params."""
        if trial.trial_id in self._run_ids:
            return self._run_ids[trial.trial_id]
        found = find_runs(self.client, self.experiment_id, f"tags.`{TAG}trial_id` = '{trial.trial_id}'")
        if found:
            run_id = found[0].info.run_id
        else:
            variant, flat = self.resolve(trial.config)
            run_name = f"{self.resolve.label(trial.config)} [{trial.trial_id}]"
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags={
                "mlflow.parentRunId": self.parent_run_id, f"{TAG}space": self.space_name, f"{TAG}variant": variant,
                f"{TAG}seed": str(flat["train.seed"]), f"{TAG}trial_id": trial.trial_id, f"{TAG}status": "running",
            }).info.run_id
            self.client.log_batch(run_id, params=_params(flat))
        self._run_ids[trial.trial_id] = run_id
        return run_id

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
        self.client.set_tag(run_id, f"{TAG}status", "finished" if finished else "stopped_early")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        # Tune writes the error text locally and syncs it to storage later: read the local file
        error_file = Path(trial.error_file) if trial.error_file else None
        message = error_file.read_text() if error_file is not None and error_file.is_file() else "trial failed (no error text)"
        self.client.set_tag(run_id, f"{TAG}status", "failed")
        self.client.set_tag(run_id, f"{TAG}error", _root_cause(message)[:4000])
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


def _root_cause(message: str) -> str:
    """The last exception line of a (possibly wrapped) Ray error: the reason a user can act on."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if ("Error:" in line or "Exception:" in line) and not line.startswith("ray.")]
    return causes[-1] if causes else (lines[-1] if lines else message)
