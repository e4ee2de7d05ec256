"""The sweep's driver: stores, the MLflow parent run, start or resume the Tuner, and the summary."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashtune.config import Config, to_flat_dict
from hashtune.sweep.mlflow_logger import MlflowTrialLogger
from hashtune.sweep.space import SearchSpace
from hashtune.sweep.trial import TrialResolver
from hashtune.sweep.tuner import build_tuner, trial_trainable
from hashtune.tracking import TAG, find_runs, get_or_create_experiment, log_infeasible_points, mark_orphans_killed, resolve_tracking

__all__ = ["SweepError", "SweepInterrupted", "SweepStores", "resolve_stores", "run_sweep", "summarize"]


class SweepError(RuntimeError):
    """A sweep that cannot start or resume as asked; the message says what to do instead."""


class SweepInterrupted(SweepError):
    """Ctrl-C (or SIGUSR1) stopped the sweep; its Tune state and MLflow runs are kept for `--resume`."""


def _experiment_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def _parent_run(client, experiment_id: str, experiment_path: str, name: str, space: SearchSpace, base: Config, resume: bool) -> str:
    existing = find_runs(client, experiment_id, f"tags.`{TAG}role` = 'sweep' and tags.`{TAG}storage` = '{experiment_path}'")
    if resume and existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=name, tags={
        f"{TAG}role": "sweep", f"{TAG}space": space.name, f"{TAG}storage": experiment_path, f"{TAG}search": space.search,
    })
    from mlflow.entities import Param

    params = {"space": space.name, "search": space.search, "metric": space.metric, "seeds": list(space.seeds),
              "workers": space.workers, "num_samples": space.num_samples}
    changed = {k: v for k, v in to_flat_dict(base).items() if to_flat_dict(Config())[k] != v}
    params |= {f"base.{key}": value for key, value in changed.items()}
    client.log_batch(run.info.run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()])
    return run.info.run_id


@dataclass(frozen=True)
class SweepStores:
    """Where a sweep keeps its state: the Tune experiment folder, the MLflow store, the Optuna study."""

    name: str
    results_dir: Path
    storage: str
    experiment_path: str
    tracking_uri: str
    artifact_location: str | None

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.results_dir / 'optuna.db'}"


def resolve_stores(args: argparse.Namespace, space: SearchSpace) -> SweepStores:
    """The sweep's stores from the CLI arguments (defaults under `--results-dir`)."""
    name = args.name or space.name
    results_dir = Path(args.results_dir).absolute()
    storage = args.storage or str(results_dir / "ray")
    uri, artifacts = resolve_tracking(args.mlflow_uri, results_dir)
    return SweepStores(name, results_dir, storage, _experiment_path(storage, name), uri, artifacts)


def _check_resume(mode: str, stores: SweepStores) -> bool:
    """Whether the sweep continues an existing one, after checking `--resume` (never | always | auto) allows it."""
    from ray.tune import Tuner

    exists = Tuner.can_restore(stores.experiment_path)
    if mode == "always" and not exists:
        raise SweepError(f"--resume: no sweep named {stores.name!r} at {stores.experiment_path}; start it without --resume")
    if mode == "never" and exists:
        raise SweepError(f"a sweep named {stores.name!r} already exists at {stores.experiment_path}; continue it with --resume or pick another --name")
    return exists


def run_sweep(args: argparse.Namespace, base: Config, space: SearchSpace) -> dict[str, Any]:
    """Start the sweep, or continue it (`args.resume`: never | always | auto); returns its summary."""
    from mlflow import MlflowClient

    stores = resolve_stores(args, space)
    resume = _check_resume(args.resume, stores)
    client = MlflowClient(stores.tracking_uri)
    experiment_id = get_or_create_experiment(client, stores.name, stores.artifact_location)
    parent_run_id = _parent_run(client, experiment_id, stores.experiment_path, stores.name, space, base, resume)
    if resume:
        mark_orphans_killed(client, experiment_id, parent_run_id)
    if space.search == "grid":
        _, infeasible = space.grid_points(base)
        log_infeasible_points(client, experiment_id, parent_run_id, space.name, infeasible, to_flat_dict(base))
    resolver = TrialResolver(base, space)
    logger = MlflowTrialLogger(
        tracking_uri=stores.tracking_uri, experiment_id=experiment_id, parent_run_id=parent_run_id, space_name=space.name,
        resolve=resolver, epochs=base.replace(space.fixed).train.epochs,
    )
    results, interrupted = _fit(args, base, space, stores, resolver, logger, resume)
    if interrupted:
        mark_orphans_killed(client, experiment_id, parent_run_id)
        client.set_tag(parent_run_id, f"{TAG}status", "interrupted")
        client.set_terminated(parent_run_id, "KILLED")
        raise SweepInterrupted(
            f"sweep {stores.name!r} interrupted; its state is saved (finished trials are kept). Continue it with: "
            f"python -m hashtune.sweep --space {args.space} --name {stores.name} --resume"
        )
    summary = summarize(results, space, client, experiment_id)
    summary |= {"experiment": stores.name, "mlflow_uri": stores.tracking_uri, "storage": stores.experiment_path, "parent_run_id": parent_run_id}
    _close_parent(client, parent_run_id, summary)
    return summary


def _fit(args, base: Config, space: SearchSpace, stores: SweepStores, resolver: TrialResolver, logger, resume: bool):
    """Run (or restore and continue) the Tuner on a Ray this call starts unless one is given; `(results, interrupted)`."""
    from ray.tune import Tuner

    from hashtune.train.distributed import init_ray

    started = init_ray(args.address)
    results, interrupted = None, True
    try:
        if resume:
            print(f"continuing sweep {stores.name!r} from {stores.experiment_path} (finished trials are not re-run)")
            tuner = Tuner.restore(stores.experiment_path, trainable=trial_trainable(space, resolver, stores.storage), resume_errored=False)
        else:
            tuner = build_tuner(
                space, base, name=stores.name, storage=stores.storage, callbacks=[logger],
                max_concurrent=args.max_concurrent or space.max_concurrent, optuna_storage=stores.optuna_storage,
            )
        start = time.monotonic()
        results = tuner.fit()
        interrupted = _interrupted(results, space, len(resolver.points), time.monotonic() - start)
    except KeyboardInterrupt:  # a second Ctrl-C while Tune was already stopping
        interrupted = True
    finally:
        if started:
            import ray

            ray.shutdown()
    return results, interrupted


def _interrupted(results, space: SearchSpace, grid_size: int, elapsed: float) -> bool:
    """Whether Tune returned early on Ctrl-C (SIGINT) or SIGUSR1: it then returns normally, with trials unfinished."""
    if results.num_terminated + results.num_errors < len(results):
        return True
    budget_spent = space.time_budget_s is not None and elapsed >= space.time_budget_s
    planned = grid_size if space.search == "grid" else space.num_samples
    return len(results) < planned and not budget_spent


def summarize(results, space: SearchSpace, client, experiment_id: str) -> dict[str, Any]:
    """Counts by outcome and the best finished trial by the space's (validation) metric."""
    finished, stopped, failed = [], [], []
    for result in results:
        if result.error is not None:
            failed.append(result)
        elif (result.metrics or {}).get("final") == 1.0:
            finished.append(result)
        else:
            stopped.append(result)
    summary: dict[str, Any] = {"trials": len(results), "finished": len(finished), "stopped_early": len(stopped), "failed": len(failed)}
    if not finished:
        return summary
    sign = 1 if space.mode == "max" else -1
    best = max(finished, key=lambda result: sign * result.metrics[space.metric])
    trial_id = best.metrics.get("trial_id")
    runs = find_runs(client, experiment_id, f"tags.`{TAG}trial_id` = '{trial_id}'")
    summary["best"] = {
        "trial_id": trial_id,
        "mlflow_run_id": runs[0].info.run_id if runs else None,
        space.metric: best.metrics[space.metric],
        "test/mAP": best.metrics.get("test/mAP"),
        "checkpoint": best.checkpoint.path if best.checkpoint else None,
    }
    return summary


def _close_parent(client, parent_run_id: str, summary: dict[str, Any]) -> None:
    for key in ("trials", "finished", "stopped_early", "failed"):
        client.log_metric(parent_run_id, f"sweep/{key}", summary[key])
    if summary.get("best"):
        best = summary["best"]
        client.set_tag(parent_run_id, f"{TAG}best_run_id", str(best["mlflow_run_id"]))
        for key in ("val/mAP", "test/mAP"):
            if best.get(key) is not None:
                client.log_metric(parent_run_id, f"best/{key}", best[key])
    client.set_terminated(parent_run_id, "FINISHED")
