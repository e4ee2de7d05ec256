"""MLflow, and nothing else: the store, experiments, run look-ups and the tags hashtune writes.

A sweep is one experiment with a parent run (`hashtune.role=sweep`) and one child run per trial (tagged
`hashtune.trial_id`, `hashtune.variant`, `hashtune.seed`, `hashtune.status`). The sweep writes these
through `hashtune.sweep.mlflow_logger`; the report and the export read them through this module, which
needs no Ray.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hashtune.errors import TRY_AGAIN_EXIT, HashtuneError, InputError, NotFoundError

__all__ = [
    "TAG",
    "COMPLETED_TAG",
    "default_tracking_uri",
    "display_uri",
    "resolve_tracking",
    "get_or_create_experiment",
    "find_runs",
    "ARTIFACTS",
    "point_id",
    "find_trial_run",
    "index_tags",
    "flat_params",
    "best_finished_run",
    "sweep_parents",
    "COST_METRICS",
    "sweep_cost",
    "log_infeasible_points",
    "mark_orphans_killed",
    "StoreClient",
    "StoreError",
    "StoreUnavailable",
    "STORE_RETRY_S",
    "is_transient",
]

TAG = "hashtune."
COMPLETED_TAG = f"{TAG}completed"
"""Set to "1" once a trial's run has its full-fidelity final result; a restarted trial then replays it."""
ARTIFACTS = ("config.yaml", "history.csv", "metrics.json", "pr_curve.png", "pr_curve.csv", "splits.npz")


def default_tracking_uri(results_dir: Path) -> str:
    """A SQLite store under `results_dir` (no server needed)."""
    return f"sqlite:///{(results_dir / 'mlflow.db').absolute()}"


def display_uri(uri: str) -> str:
    """A tracking URI as results files may show it: a local SQLite store relative to the working directory
    (results never name a path of the machine that made them); other URIs unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///")).absolute()
    try:
        return f"sqlite:///{path.relative_to(Path.cwd().absolute()).as_posix()}"
    except ValueError:
        return f"sqlite:///<outside the project>/{path.name}"


def resolve_tracking(uri: str | None, results_dir: Path, *, create: bool = True) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments); checks that the store answers.

    With `create=False` (readers such as the report) a SQLite store that does not exist yet is an error
    instead of a new empty database.
    """
    from mlflow import MlflowClient

    if not create:
        database = Path((uri or default_tracking_uri(results_dir)).removeprefix("sqlite:///"))
        if (uri is None or uri.startswith("sqlite:///")) and not database.is_file():
            raise StoreError(f"no MLflow store at {database}; run a sweep first or pass --mlflow-uri")
    if uri is None:
        results_dir.mkdir(parents=True, exist_ok=True)
        uri, artifacts = default_tracking_uri(results_dir), (results_dir / "mlartifacts").absolute().as_uri()
    else:
        artifacts = None  # a server decides where artifacts go
    # MLflow's own retries (7, up to about 4 minutes) off: the start-up check answers at once, and a sweep's calls
    # ride out an outage through `StoreClient`, whose bound the sweep sets
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        raise StoreError(f"MLflow tracking URI {uri!r} is unreachable: {str(error).splitlines()[0][:200]}") from None
    if create and uri.startswith("sqlite:///"):
        index_tags(Path(uri.removeprefix("sqlite:///")))
    return uri, artifacts


TAG_INDEX = "hashtune_tags_key_value"


def index_tags(database: Path) -> None:
    """Index a SQLite store's tags by (key, value), so a run is found by a tag (a trial by its id) in O(log N).

    MLflow's own schema keys tags by (key, run_uuid): a tag filter scans every run that has the key, about
    23 ms per lookup at 10,000 runs here against 5 ms with this index (2026-12-02). Creating it is idempotent
    and done whenever hashtune opens a store for writing, so a migration that rebuilt the table gets it back.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(database, timeout=60)) as connection, connection:
        connection.execute(f"CREATE INDEX IF NOT EXISTS {TAG_INDEX} ON tags (key, value)")


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        name, artifact_location=f"{artifact_location}/{name}" if artifact_location else None
    )


def find_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment that matches `filter_string` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_trial_run(client, experiment_id: str, trial_id: str):
    """A trial's MLflow run by its `hashtune.trial_id` tag, or None (one query)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG}trial_id` = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


def point_id(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flat_params(flat_config: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in sorted(flat_config.items())]


COST_METRICS = ("cost/cpu_seconds", "cost/gpu_seconds", "cost/wall_seconds", "cost/images_seen")


def sweep_cost(client, experiment_id: str, parent_run_id: str) -> dict[str, float]:
    """The `cost/*` metrics summed over a sweep's trial runs (finished, running, stopped, failed and killed
    alike: each run holds its latest, cumulative values)."""
    runs = find_runs(client, experiment_id, f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {key: float(sum(run.data.metrics.get(key, 0.0) for run in runs)) for key in COST_METRICS}


PICK_OPERATORS = ("<=", ">=", "<", ">", "=")


def parse_pick(text: str) -> tuple[str, str, float]:
    """`code/bits<=32` -> ("code/bits", "<=", 32.0): a constraint on a run's metric (`hashtune.export --pick`)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_./-]+)\s*(<=|>=|<|>|=)\s*([-+0-9.eE]+)\s*", text)
    try:
        value = float(match.group(3)) if match else None
    except ValueError:
        value = None
    if match is None or value is None or not math.isfinite(value):
        raise InputError(
            f"--pick {text!r} is not METRIC OP NUMBER with OP one of {' '.join(PICK_OPERATORS)} (e.g. 'code/bits<=32')"
        )
    return match.group(1), match.group(2), value


def best_finished_run(client, experiment: str, metric: str, picks: tuple[tuple[str, str, float], ...] = ()):
    """The finished trial run of `experiment` with the highest `metric` (a val/* metric, never test), among those
    whose metrics meet every (metric, operator, value) of `picks`.

    Raises:
        LookupError: no such experiment, or no finished run with `metric` (one line, naming the store).
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise NotFoundError(f"no MLflow experiment named {experiment!r} at {display_uri(client.tracking_uri)}")
    # the store sorts and returns one run (reading every finished run took 20 s at 10,000 runs here)
    constraints = "".join(f" and metrics.`{name}` {operator} {value!r}" for name, operator, value in picks)
    best = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{TAG}status` = 'finished' and metrics.`{metric}` > -1e300{constraints}",
        order_by=[f"metrics.`{metric}` DESC"],
        max_results=1,
    )
    if not best:
        meeting = "".join(f" with {name} {operator} {value:g}" for name, operator, value in picks)
        raise NotFoundError(f"experiment {experiment!r} has no finished trial run with {metric}{meeting}")
    return best[0]


def sweep_parents(client, experiment: str) -> list:
    """The sweep parent runs of `experiment`, newest first (empty when there is no such experiment)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    parents = find_runs(client, found.experiment_id, f"tags.`{TAG}role` = 'sweep'")
    return sorted(parents, key=lambda run: -(run.info.start_time or 0))


def log_infeasible_points(
    client, experiment_id: str, parent_run_id: str, space_name: str, points: list, base_flat: dict
) -> None:
    """Grid points (`hashtune.sweep.space.GridPoint`) whose bit allocation fails: FINISHED child runs tagged
    infeasible, with params, no metrics."""
    existing = {
        run.data.tags.get(f"{TAG}point")
        for run in find_runs(client, experiment_id, f"tags.`{TAG}status` = 'infeasible'")
    }
    for point in points:
        pid = point_id(point.overrides)
        if pid in existing:
            continue
        run = client.create_run(
            experiment_id,
            run_name=f"infeasible-{pid}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                f"{TAG}space": space_name,
                f"{TAG}variant": point.variant,
                f"{TAG}status": "infeasible",
                f"{TAG}point": pid,
                f"{TAG}seed": str(point.overrides.get("train.seed", "")),
            },
        )
        client.log_batch(run.info.run_id, params=flat_params(base_flat | point.overrides))
        client.set_terminated(run.info.run_id, "FINISHED")


def mark_orphans_killed(client, experiment_id: str, parent_run_id: str) -> int:
    """Child runs left RUNNING by a driver that died: KILLED (a restarted trial sets its run RUNNING again)."""
    orphans = find_runs(
        client, experiment_id, f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in orphans:
        client.set_tag(run.info.run_id, f"{TAG}status", "killed")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(orphans)


_logger = logging.getLogger(__name__)

STORE_RETRY_S = 180.0
"""How long a sweep's MLflow calls wait out a store that does not answer (`hashtune.sweep --store-retry-s`)."""


class StoreError(HashtuneError, ConnectionError):
    """An MLflow store that cannot be used: not there, or not answering."""


class StoreUnavailable(StoreError):
    """The MLflow store did not answer within the retry bound; nothing it already holds is lost."""

    exit_code = TRY_AGAIN_EXIT  # run it again once the store answers

    def __init__(self, uri: str, waited_s: float, cause: Exception | str) -> None:
        first_line = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
        super().__init__(f"the MLflow store {uri} did not answer for {waited_s:.0f} s ({first_line})")
        self.uri, self.waited_s, self.cause = uri, waited_s, first_line

    def __reduce__(self):  # Ray sends a trial's exception to the driver pickled
        return type(self), (self.uri, self.waited_s, self.cause)


def is_transient(error: BaseException) -> bool:
    """Whether an MLflow call failed because the store did not answer (refused, reset, timed out, 429/5xx after
    MLflow's own retries), not because the request was wrong: what a retry can fix."""
    import requests

    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    text = str(error)
    if "database or disk is full" in text or "database is locked" in text:  # a local SQLite store: space or a writer
        return True
    return text.startswith("API request to ") and (
        "failed with exception" in text or "failed with timeout exception" in text
    )


def _never_sent(error: BaseException) -> bool:
    """A failure before the request reached the store (so a create can be sent again without making two)."""
    text = str(error)
    return any(sign in text for sign in ("Connection refused", "NewConnectionError", "Name or service not known"))


class StoreClient:
    """An `MlflowClient` whose calls ride out an outage of the store: a call that fails because the store does not
    answer is sent again with backoff (0.5 s doubling to 30 s) until it answers or `retry_s` have passed since its
    first failure, then `StoreUnavailable` says so in one line.

    Every call is safe to send again: MLflow keeps one value per param, tag and (metric, step, timestamp), and
    `set_terminated` is idempotent; `create_run` alone is sent again only when the store never received it.
    """

    def __init__(
        self,
        uri: str,
        retry_s: float = STORE_RETRY_S,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from mlflow import MlflowClient

        self._client, self.uri, self.retry_s, self._sleep, self._clock = MlflowClient(uri), uri, retry_s, sleep, clock

    @property
    def tracking_uri(self) -> str:
        return self._client.tracking_uri

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def retried(*args, **kwargs):
            return self._call(name, attribute, args, kwargs)

        return retried

    def _call(self, name: str, method, args: tuple, kwargs: dict):
        first_failure, delay = None, 0.5
        while True:
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if not is_transient(error):
                    raise
                if name == "create_run" and not _never_sent(error):  # it may have been made: a resume finds it
                    raise StoreUnavailable(self.uri, 0.0, error) from error
                now = self._clock()
                if first_failure is None:
                    first_failure = now
                    _logger.warning(
                        "the MLflow store %s did not answer %s (%s); retrying for up to %g s",
                        self.uri,
                        name,
                        str(error).splitlines()[0][:200],
                        self.retry_s,
                    )
                if now - first_failure >= self.retry_s:
                    raise StoreUnavailable(self.uri, now - first_failure, error) from error
                self._sleep(min(delay, first_failure + self.retry_s - now))
                delay = min(2 * delay, 30.0)
