"""The Tune trainable: a trial resolves its config and trains it, in its own process or as Ray Train workers.

`run_trial` is what Tune calls. With `workers: 0` the plain trainer runs inside the trial process and
reports through `ray.tune.report`; with `workers: N` the trial drives a `TorchTrainer` built by
`hashtune.train.distributed.build_torch_trainer`, whose reports reach Tune through its callback. Both
paths restore from the trial's latest checkpoint, so a restarted trial resumes where it stopped.

Trials are idempotent. A driver killed after a trial finished but before Tune saved that fact restarts
the trial on `--resume`; the trial first looks up its own MLflow run (by trial id) and, if it finished,
reports the recorded result and checkpoint instead of training again (tag `hashtune.replayed`). A trial
whose Tune checkpoint was not saved resumes from the checkpoint its MLflow run names.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hashtune.config import SEED_KEYS, Config, config_from_dict, to_flat_dict
from hashtune.sweep.space import GridPoint, SearchSpace
from hashtune.sweep.stores import TrialTracking
from hashtune.tracking import COMPLETED_TAG, TAG, find_trial_run, point_id

__all__ = ["TrialFunction", "TrialResolver", "TrialTracking", "run_trial"]


class TrialResolver:
    """Maps a Tune trial config to `(variant, flat resolved config)`; picklable for Tune's state."""

    def __init__(self, base: Config, space: SearchSpace) -> None:
        self.base_flat = to_flat_dict(base)
        self.fixed = dict(space.fixed)
        self.seed = space.seeds[0]
        self.points = {point.label: point for point in space.grid_points(base)[0]} if space.search == "grid" else {}

    def __setstate__(self, state: dict) -> None:
        # a sweep started before grid points were records pickled them as dicts in Tune's state (the MLflow logger)
        state["points"] = {label: _saved_point(point) for label, point in state["points"].items()}
        self.__dict__.update(state)

    def __call__(self, trial_config: dict) -> tuple[str, dict[str, Any]]:
        if "point" in trial_config:
            point = self.points[trial_config["point"]]
            return point.variant, self.base_flat | point.overrides
        sampled = {key: value for key, value in trial_config.items() if "." in key}
        return "", self.base_flat | self.fixed | sampled | dict.fromkeys(SEED_KEYS, self.seed)

    def point_id(self, trial_config: dict) -> str | None:
        """A grid point's id (the same at every launch of the point), or None for a sampled trial."""
        return point_id(self.points[trial_config["point"]].overrides) if "point" in trial_config else None

    def label(self, trial_config: dict) -> str:
        """The grid point's label, or the sampled values of a search trial."""
        if "point" in trial_config:
            return trial_config["point"]
        return " ".join(
            f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"
            for key, value in sorted(trial_config.items())
            if "." in key
        )


def _saved_point(point: GridPoint | dict) -> GridPoint:
    """A grid point as a sweep saved before points were records: `{"label", "variant", "overrides"}`."""
    if isinstance(point, GridPoint):
        return point
    seeds = point["overrides"]
    crossed = "data_seed=" in point["label"]
    seed = (int(seeds["data.seed"]), int(seeds["train.seed"])) if crossed else int(seeds["train.seed"])
    rest = point["label"].removeprefix(point["variant"]).strip()
    at = rest.rsplit("data_seed=" if crossed else "seed=", 1)[0].strip()
    return GridPoint(variant=point["variant"], at=at, seed=seed, overrides=point["overrides"])


class _TuneReporter:
    """Hands the trainer's reports to Tune; the first one also carries `extra` (the trial's environment tags)."""

    def __init__(self, extra: dict[str, str]) -> None:
        self.extra = extra

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        from ray import tune

        metrics, self.extra = metrics | self.extra, {}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)


def _fit_in_trial(config: Config, recorded_checkpoint: str | None, extra: dict[str, str]) -> None:
    from ray import tune

    from hashtune.train.distributed import restore_run_folder
    from hashtune.train.runtime import LocalRuntime, resolve_device
    from hashtune.train.trainer import fit

    with tempfile.TemporaryDirectory(prefix="hashtune-trial-") as folder:
        run_dir = Path(folder)
        checkpoint = tune.get_checkpoint() or (tune.Checkpoint(recorded_checkpoint) if recorded_checkpoint else None)
        resume_from = restore_run_folder(checkpoint, run_dir)
        runtime = LocalRuntime(resolve_device(config.train.device), _TuneReporter(extra))
        fit(config, runtime=runtime, run_dir=run_dir, resume_from=resume_from)


def _recorded_run(tracking: TrialTracking, trial_id: str):
    """This trial's MLflow run: the driver's logger created or adopted it (tagged with this trial id) before the
    trial started. Its `completed` tag and checkpoint say whether an earlier attempt finished or trained."""
    client = tracking.client()
    return client, find_trial_run(client, tracking.experiment_id, trial_id)


def _replay(client, run, config: Config) -> None:
    """Report a finished run's recorded final result and checkpoint to Tune, without training."""
    from ray import tune

    metrics = dict(run.data.metrics) | {"epoch": config.train.epochs, "final": 1.0}
    location = run.data.tags.get(f"{TAG}checkpoint")
    client.set_tag(run.info.run_id, f"{TAG}replayed", "1")
    if location is None:
        tune.report(metrics)
        return
    with tune.Checkpoint(location).as_directory() as folder:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _fit_with_ray_train(config: Config, *, space: SearchSpace, storage: str) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hashtune.train.distributed import build_torch_trainer

    trainer = build_torch_trainer(
        config,
        name=f"train-trial_id={tune.get_context().get_trial_id()}",  # a restarted trial resumes this run
        storage=storage,
        workers=space.workers,
        cpus_per_worker=space.cpus_per_trial,
        gpus_per_worker=space.gpus_per_worker,
        max_failures=space.max_failures,
        num_to_keep=space.checkpoints_to_keep,
        score_attribute=space.metric,
        score_order=space.mode,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def pin_threads(cpus: float) -> int:
    """Pin torch's intra-op threads to the trial's CPU allocation; returns the count."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return torch.get_num_threads()


def environment_tags(torch_threads: int) -> dict[str, str]:
    """What a trial's numbers depend on beyond its config: threads, CPU model, library versions."""
    return {f"{TAG}torch_threads": str(torch_threads)} | _process_environment()


@functools.cache
def _process_environment() -> dict[str, str]:
    """The CPU model and library versions: read once per process (a reused trial process keeps them)."""
    import platform
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return {f"{TAG}cpu_model": cpu} | {
        f"{TAG}version.{name}": version(name) for name in ("torch", "numba", "timm", "numpy")
    }


def _is_fresh(run, checkpoint) -> bool:
    """A trial that has not trained yet (a restarted one that has is let finish under a soft budget)."""
    return checkpoint is None and (run is None or f"{TAG}checkpoint" not in run.data.tags)


def _budget_spent(client, tracking: TrialTracking, space: SearchSpace) -> bool:
    """Whether the sweep's trials (finished and running) have spent the space's budget: the running total the
    driver's logger keeps on the parent run (`cost/*`), one read whatever the number of trials."""
    return space.budget is not None and space.budget_reached(client.get_run(tracking.parent_run_id).data.metrics)


TrialFunction = Callable[[str, dict[str, Any]], dict[str, float]]
"""`function(variant, flat_config) -> final metrics`: what a sweep may run instead of training (tests of the schedule,
MLflow and resume machinery on known arm means; benchmarks of the orchestration alone). A module-level function, so
that Ray can ship it to the trials."""


def _function_trial(
    function: TrialFunction, variant: str, flat: dict[str, Any], epochs: int, extra: dict[str, str]
) -> None:
    from ray import tune

    tune.report(function(variant, flat) | {"epoch": epochs, "final": 1.0} | extra)


def run_trial(
    trial_config: dict,
    *,
    resolver: TrialResolver,
    space: SearchSpace,
    storage: str,
    tracking: TrialTracking,
    trial_function: TrialFunction | None = None,
) -> None:
    """The Tune trainable: resolve the trial's config; replay it if its MLflow run finished, else train it.

    Tune may run it in a process an earlier trial used (`reuse_actors`): nothing here or in `fit` keeps
    state between trials but the imports and the environment read once per process.
    """
    from ray import tune

    variant, flat = resolver(trial_config)
    config = config_from_dict(flat)
    client, run = _recorded_run(tracking, tune.get_context().get_trial_id())
    # bit-identical reruns need the same intra-op thread count (and CPU): pinned, and said with the first report
    extra = environment_tags(pin_threads(space.cpus_per_trial)) if space.workers == 0 else {}
    if run is not None and run.data.tags.get(COMPLETED_TAG) == "1":
        _replay(client, run, config)
    elif _is_fresh(run, tune.get_checkpoint()) and _budget_spent(client, tracking, space):
        # a new trial, launched after the sweep spent its budget: not trained (Tune wants the metric and ASHA the epoch)
        objectives = dict(space.objectives) or {space.metric: space.mode}  # Tune checks each report names them
        tune.report({"budget/skipped": 1.0, "epoch": 0} | dict.fromkeys(objectives, float("nan")))
    elif trial_function is not None:
        _function_trial(trial_function, variant, flat, config.train.epochs, extra)
    elif space.workers == 0:
        _fit_in_trial(config, run.data.tags.get(f"{TAG}checkpoint") if run is not None else None, extra)
    else:
        _fit_with_ray_train(config, space=space, storage=storage)
