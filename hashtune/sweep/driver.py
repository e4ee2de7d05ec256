"""The sweep's driver: stores, the MLflow parent run, start or resume the Tuner, and the summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hashtune.config import Config, to_flat_dict
from hashtune.sweep.mlflow_logger import MlflowTrialLogger
from hashtune.sweep.space import SearchSpace
from hashtune.sweep.trial import TrialResolver
from hashtune.sweep.tuner import build_tuner, trial_trainable
from hashtune.tracking import TAG, find_runs, get_or_create_experiment, log_infeasible_points, mark_orphans_killed, resolve_tracking

__all__ = ["SweepError", "SweepInterrupted", "run_sweep", "summarize"]


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


def run_sweep(args: argparse.Namespace, base: Config, space: SearchSpace) -> dict[str, Any]:
    """Start the sweep, or continue it (`args.resume`: never | always | auto); returns its summary."""
    from mlflow import MlflowClient
    from ray.tune import Tuner

    from hashtune.train.distributed import init_ray

    name = args.name or space.name
    results_dir = Path(args.results_dir).absolute()
    storage = args.storage or str(results_dir / "ray")
    experiment_path = _experiment_path(storage, name)
    exists = Tuner.can_restore(experiment_path)
    if args.resume == "always" and not exists:
        raise SweepError(f"--resume: no sweep named {name!r} at {experiment_path}; start it without --resume")
    if args.resume == "never" and exists:
        raise SweepError(f"a sweep named {name!r} already exists at {experiment_path}; continue it with --resume or pick another --name")
    uri, artifacts = resolve_tracking(args.mlflow_uri, results_dir)
    resume = exists
    client = MlflowClient(uri)
    experiment_id = get_or_create_experiment(client, name, artifacts)
    parent_run_id = _parent_run(client, experiment_id, experiment_path, name, space, base, resume)
    if resume:
        mark_orphans_killed(client, experiment_id, parent_run_id)
    if space.search == "grid":
        _, infeasible = space.grid_points(base)
        log_infeasible_points(client, experiment_id, parent_run_id, space.name, infeasible, to_flat_dict(base))
    resolver = TrialResolver(base, space)
    logger = MlflowTrialLogger(
        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_run_id, space_name=space.name, resolve=resolver,
        epochs=base.replace(space.fixed).train.epochs,
    )
    started = init_ray(args.address)
    try:
        if resume:
            print(f"continuing sweep {name!r} from {experiment_path} (finished trials are not re-run)")
            tuner = Tuner.restore(experiment_path, trainable=trial_trainable(space, resolver, storage), resume_errored=False)
        else:
            tuner = build_tuner(
                space, base, name=name, storage=storage, callbacks=[logger], max_concurrent=args.max_concurrent or space.max_concurrent,
                optuna_storage=f"sqlite:///{results_dir / 'optuna.db'}",
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
    if interrupted:
        mark_orphans_killed(client, experiment_id, parent_run_id)
        client.set_tag(parent_run_id, f"{TAG}status", "interrupted")
        client.set_terminated(parent_run_id, "KILLED")
        raise SweepInterrupted(
            f"sweep {name!r} interrupted; its state is saved (finished trials are kept). Continue it with: "
            f"python -m hashtune.sweep --space {args.space} --name {name} --resume"
        )
    summary = summarize(results, space, client, experiment_id)
    summary |= {"experiment": name, "mlflow_uri": uri, "storage": experiment_path, "parent_run_id": parent_run_id}
    _close_parent(client, parent_run_id, summary)
    return summary


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
