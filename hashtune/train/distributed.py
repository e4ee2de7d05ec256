"""Ray Train (V2) around the plain trainer: multi-node DDP with restore, same config, metrics and files.

The one place that builds a `TorchTrainer` (`build_torch_trainer`): `python -m hashtune.train --workers N`
(via `fit_distributed`) and sweep trials with `workers: N` both call it. The per-worker function
(`train_loop_per_worker`) restores from `ray.train.get_checkpoint()`, then runs the trainer's own `fit`
with a `RayTrainRuntime`. The epoch loop, model, losses and metrics are the single-process ones.

* Backend: NCCL when workers have GPUs, gloo on CPU (or the one asked for).
* Each report carries the run folder written by rank 0 (checkpoint.pt, history.csv, config.yaml, ...)
  as a `ray.train.Checkpoint`; Ray restarts a failed worker group (`FailureConfig(max_failures)`)
  from the latest one, and re-running the same command (same run folder, same storage) resumes it.
* Evaluation: every rank encodes its shard of the query and database sets; codes are all-gathered
  with their dataset positions, so the mAP equals a single process's on the same weights.
* Asymmetric strategy: `B` is replicated on every rank (see `hashtune.train.asymmetric`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from hashtune.config import Config, config_from_dict, to_flat_dict
from hashtune.train.checkpoint import copy_run_folder
from hashtune.train.local_ray import init_ray, shutdown_ray
from hashtune.train.runtime import DistributedRuntime

# The trainer (timm, torchvision, matplotlib, numba) is imported where a worker trains, not at module import: a
# sweep's trial with `workers: N` loads this module only to build the `TorchTrainer` and needs none of it (about
# 3 CPU-seconds per trial, measured here 2026-12-03).

__all__ = [
    "RayTrainRuntime",
    "restore_run_folder",
    "train_loop_per_worker",
    "build_torch_trainer",
    "fit_distributed",
]


class RayTrainRuntime(DistributedRuntime):
    """One Ray Train worker: its rank and device from Ray, DDP through Ray, reports to Ray Train."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        super().__init__(ray.train.torch.get_device(), context.get_world_rank(), context.get_world_size())

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


def restore_run_folder(checkpoint, run_dir: Path) -> Path | None:
    """Copy a Ray (Train or Tune) checkpoint's run folder into `run_dir`: the folder to resume from, or None."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return copy_run_folder(folder, run_dir)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's per-worker function: restore if Ray (or the user) gives a checkpoint, then `fit`.

    `loop_config` holds `config` (the flat dotted config) and optionally `resume_from`, a run folder
    reachable from every worker (used only when Ray has no checkpoint of this run yet).
    """
    import ray.train

    from hashtune.train.trainer import fit

    config = config_from_dict(loop_config["config"])
    runtime = RayTrainRuntime()
    run_dir = Path(tempfile.mkdtemp(prefix=f"hashtune-rank{runtime.rank}-"))
    resume_from = restore_run_folder(ray.train.get_checkpoint(), run_dir)
    if resume_from is None and loop_config.get("resume_from"):
        resume_from = copy_run_folder(loop_config["resume_from"], run_dir)
    try:
        fit(config, runtime=runtime, run_dir=run_dir, resume_from=resume_from)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def build_torch_trainer(
    config: Config,
    *,
    name: str,
    storage: str,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_failures: int = 2,
    num_to_keep: int = 1,
    score_attribute: str | None = "val/mAP",
    score_order: str = "max",
    callbacks: Sequence = (),
    resume_from: str | Path | None = None,
    placement_strategy: str = "PACK",
    backend: str | None = None,
):
    """The `TorchTrainer` that runs `config` on `workers` DDP workers.

    Args:
        name: the Ray Train run's name; the same name and storage resume the same run.
        storage: Ray Train storage (a path or an s3:// URI).
        max_failures: worker-group restarts before the run fails.
        num_to_keep: checkpoints kept by `score_attribute` (`score_order`: max | min); Ray keeps the latest too.
        callbacks: Ray Train callbacks (a sweep trial passes Tune's report callback).
        resume_from: a run folder to start from when Ray has no checkpoint of this run.
        backend: `nccl` or `gloo` (default: NCCL with GPUs, gloo without).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": to_flat_dict(config),
            "resume_from": str(Path(resume_from).absolute()) if resume_from else None,
        },
        torch_config=TorchConfig(backend=backend or ("nccl" if use_gpu else "gloo")),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources, placement_strategy=placement_strategy
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep, checkpoint_score_attribute=score_attribute, checkpoint_score_order=score_order
            ),
            callbacks=list(callbacks),
            # torch's intra-op threads match the worker's CPU share (Ray would otherwise leave 1)
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker)))}},
        ),
    )


def fit_distributed(
    config: Config,
    *,
    run_dir: str | Path,
    workers: int,
    resume_from: str | Path | None = None,
    address: str | None = None,
    storage: str | None = None,
    **trainer_options,
) -> dict[str, float]:
    """Run `config` as `workers` Ray Train DDP workers and copy the final run folder to `run_dir`.

    The Ray run is named after `run_dir` and stored under `storage` (default `<run_dir>/ray`), so
    running the same command again continues from its latest checkpoint. `trainer_options` go to
    `build_torch_trainer` (cpus/gpus per worker, max_failures, num_to_keep, backend, ...).
    """
    from hashtune.train.outputs import read_metrics

    run_dir = Path(run_dir).absolute()
    started = init_ray(address)
    try:
        trainer = build_torch_trainer(
            config,
            name=f"train-{run_dir.name}",
            storage=storage or str(run_dir / "ray"),
            workers=workers,
            resume_from=resume_from,
            **trainer_options,
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            copy_run_folder(folder, run_dir)
    finally:
        if started:
            shutdown_ray()
    return read_metrics(run_dir / "metrics.json")
