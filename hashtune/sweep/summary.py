"""What a sweep spent, why it ended, and its summary: read from the parent run, written on it at the end.

The parent run holds the trials' running `cost/*` totals (kept by `hashtune.sweep.mlflow_logger`) and, once the
sweep finished, its summary (`summary.json`), which a `--resume` of the finished sweep reads back instead of
starting Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hashtune.metric_names import SELECTION_METRIC, TEST_MAP
from hashtune.sweep.space import SearchSpace
from hashtune.sweep.stores import TrialTracking
from hashtune.tracking import COST_METRICS, TAG, find_runs, sweep_cost

__all__ = [
    "ELAPSED_METRIC",
    "SUMMARY_ARTIFACT",
    "summarize",
    "spent",
    "limit_reached",
    "ended_by",
    "priced",
    "close_parent",
    "recorded_summary",
    "replicates_record",
    "disk_bytes",
]

ELAPSED_METRIC = "sweep/elapsed_s"
"""The sweep's wall-clock seconds on its parent run, summed over every `--resume` (the stopper adds to it)."""

SUMMARY_ARTIFACT = "summary.json"


def replicates_record(client, parent_run_id: str) -> dict | None:
    """The adaptive schedule's last record on the parent run (`replicates.json`), or None before its first round."""
    return _parent_json(client, parent_run_id, "replicates.json")


def recorded_summary(client, parent_run_id: str) -> dict | None:
    """The summary a finished sweep's driver left on its parent run, or None (a sweep finished before it was kept)."""
    return _parent_json(client, parent_run_id, SUMMARY_ARTIFACT)


def _parent_json(client, parent_run_id: str, name: str) -> dict | None:
    import tempfile

    if name not in {artifact.path for artifact in client.list_artifacts(parent_run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return json.loads(Path(client.download_artifacts(parent_run_id, name, folder)).read_text())


def disk_bytes(experiment_path: str) -> int | None:
    """Bytes the sweep's Tune folder holds (checkpoints included); None for remote storage."""
    folder = Path(experiment_path)
    if "://" in experiment_path or not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def limit_reached(space: SearchSpace, tracking: TrialTracking) -> str | None:
    """Which of the sweep's limits its runs have reached, as MLflow holds them (over every --resume), or None."""
    client = tracking.client()
    elapsed = client.get_run(tracking.parent_run_id).data.metrics.get(ELAPSED_METRIC, 0.0)
    if space.time_budget_s is not None and elapsed >= space.time_budget_s:
        return f"time budget spent: {elapsed:.0f} of {space.time_budget_s:g} s (summed over every --resume)"
    if space.budget is not None and space.budget_reached(spent(client, tracking)):
        return "budget"
    return None


def spent(client, tracking: TrialTracking) -> dict[str, float]:
    """What the sweep's trials spent: the running totals the logger keeps on the parent run (one read), or, for
    a sweep whose parent never held them (started before they were kept), the sum over its child runs."""
    recorded = client.get_run(tracking.parent_run_id).data.metrics
    if all(key in recorded for key in COST_METRICS):
        return {key: float(recorded[key]) for key in COST_METRICS}
    return sweep_cost(client, tracking.experiment_id, tracking.parent_run_id)


def summarize(results, space: SearchSpace, client, experiment_id: str) -> dict[str, Any]:
    """Counts by outcome and the best finished trial by the space's (validation) metric."""
    finished, stopped, failed, skipped = [], [], [], []
    for result in results:
        if result.error is not None:
            failed.append(result)
        elif (result.metrics or {}).get("final") == 1.0:
            finished.append(result)
        elif (result.metrics or {}).get("budget/skipped"):
            skipped.append(result)
        else:
            stopped.append(result)
    summary: dict[str, Any] = {
        "trials": len(results),
        "finished": len(finished),
        "stopped_early": len(stopped),
        "failed": len(failed),
        "skipped_budget": len(skipped),
    }
    if space.objectives:  # the front is the study's (pareto.md); early stopping looked at one objective
        summary["objectives"] = [f"{name} ({mode})" for name, mode in space.objectives]
        if space.scheduler.asha:
            summary["early_stopping_on"] = space.scheduler.metric
    if not finished:
        return summary
    sign = 1 if space.mode == "max" else -1
    best = max(finished, key=lambda result: sign * result.metrics[space.metric])
    trial_id = best.metrics.get("trial_id")
    runs = find_runs(client, experiment_id, f"tags.`{TAG}trial_id` = '{trial_id}'")
    summary["best"] = {
        "trial_id": trial_id,
        "mlflow_run_id": runs[0].info.run_id if runs else None,
        "selected_by": space.metric,
        space.metric: best.metrics[space.metric],
        TEST_MAP: best.metrics.get(TEST_MAP),
        "checkpoint": best.checkpoint.path if best.checkpoint else None,
    }
    return summary


def priced(cost: dict[str, float], space: SearchSpace) -> dict[str, float]:
    price = space.budget.usd_per_gpu_hour if space.budget else None
    return cost | ({"cost/usd": cost["cost/gpu_seconds"] / 3600.0 * price} if price is not None else {})


def ended_by(summary: dict[str, Any], space: SearchSpace, tracking: TrialTracking) -> str:
    """One line: why the sweep ended (every trial done, its wall-clock budget or its cost budget spent)."""
    limit = limit_reached(space, tracking)
    if limit is not None and limit != "budget":
        return limit
    if space.budget is None or (not summary["skipped_budget"] and not space.budget_reached(summary["cost"])):
        record = summary.get("replicates")
        if record is not None:
            unsettled = [arm for arm, entry in record["arms"].items() if "settled" in entry and not entry["settled"]]
            return f"replicates schedule done after {record['rounds']} round(s): " + (
                f"{len(unsettled)} arm(s) at max seeds, unsettled ({', '.join(unsettled)}); the rest settled"
                if unsettled
                else "every arm settled"
            )
        return "every trial ran"
    metric, seconds = space.budget.limit
    spent, limit = summary["cost"][metric] / 3600.0, seconds / 3600.0
    unit = f"{space.budget.resource.upper()}-hours"
    return f"budget spent: {spent:.4f} of {limit:g} {unit}; {summary['skipped_budget']} trial(s) not trained" + (
        "; running trials were stopped (hard budget)" if space.budget.hard else "; running trials finished"
    )


def close_parent(client, parent_run_id: str, summary: dict[str, Any]) -> None:
    for key in ("trials", "finished", "stopped_early", "failed", "skipped_budget"):
        client.log_metric(parent_run_id, f"sweep/{key}", summary[key])
    for key, value in summary["cost"].items():
        client.log_metric(parent_run_id, key, value)
    if summary.get("best"):
        best = summary["best"]
        client.set_tag(parent_run_id, f"{TAG}best_run_id", str(best["mlflow_run_id"]))
        for key in (SELECTION_METRIC, TEST_MAP):
            if best.get(key) is not None:
                client.log_metric(parent_run_id, f"best/{key}", best[key])
    client.log_text(
        parent_run_id, json.dumps(summary, indent=2, default=str), SUMMARY_ARTIFACT
    )  # what a --resume of it says
    client.set_terminated(parent_run_id, "FINISHED")
