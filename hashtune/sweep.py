"""`python -m hashtune.sweep`: a Ray Tune + Optuna search over the trainer's config, tracked in MLflow.

    python -m hashtune.sweep --space NAME|FILE [--name EXP] [--resume [auto]] [--address auto]
                             [--mlflow-uri URI] [--storage PATH_OR_S3_URI] [--max-concurrent N] [key=value ...]

Each trial runs the plain trainer inside the trial process (`workers: 0`, the default on one
machine: no per-trial Ray Train start-up) or builds a Ray Train `TorchTrainer` (`workers: N`, for
clusters); both report the same metrics and checkpoints to Tune. Grid spaces launch every feasible
point once; `tpe` and `random` spaces use Optuna's samplers, with the study in an RDB storage next
to the MLflow store. Trials that ASHA stops early are told to Optuna as PRUNED, not COMPLETE, so TPE
only learns from values measured at full fidelity.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hashtune.config import Config, ConfigError, config_from_dict, load_config, to_flat_dict
from hashtune.space import SEED_KEYS, Domain, SearchSpace, SpaceError, is_feasible, load_space

__all__ = ["TrialResolver", "OptunaSpace", "run_trial", "build_tuner", "main"]

RESULTS_DIR = Path("results")


class TrialResolver:
    """Maps a Tune trial config to `(variant, flat resolved config)`; picklable for Tune's state."""

    def __init__(self, base: Config, space: SearchSpace) -> None:
        self.base_flat = to_flat_dict(base)
        self.fixed = dict(space.fixed)
        self.seed = space.seeds[0]
        self.points = {point["label"]: point for point in space.grid_points(base)[0]} if space.search == "grid" else {}

    def __call__(self, trial_config: dict) -> tuple[str, dict[str, Any]]:
        if "point" in trial_config:
            point = self.points[trial_config["point"]]
            return point["variant"], self.base_flat | point["overrides"]
        sampled = {key: value for key, value in trial_config.items() if "." in key}
        return "", self.base_flat | self.fixed | sampled | dict.fromkeys(SEED_KEYS, self.seed)

    def label(self, trial_config: dict) -> str:
        """The grid point's label, or the sampled values of a search trial."""
        if "point" in trial_config:
            return trial_config["point"]
        return " ".join(f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"
                        for key, value in sorted(trial_config.items()) if "." in key)



class OptunaSpace:
    """Optuna define-by-run space: samples `model.k_groups` last, within what `model.bits` allows."""

    def __init__(self, params: dict[str, Domain], base: Config, fixed: dict[str, Any]) -> None:
        self.params, self.base, self.fixed = params, base, fixed

    def __call__(self, trial) -> None:
        sampled: dict[str, Any] = {}
        for key in sorted(self.params, key=lambda name: name == "model.k_groups"):
            domain = self.params[key]
            low, high = domain.values[0], domain.values[-1]
            if domain.kind == "choice":
                sampled[key] = trial.suggest_categorical(key, list(domain.values))
            elif domain.kind == "int":
                if key == "model.k_groups":
                    high = max(k for k in range(low, high + 1) if k == low or self._feasible(sampled, k))
                sampled[key] = trial.suggest_int(key, low, high)
            else:
                sampled[key] = trial.suggest_float(key, low, high, log=domain.kind == "loguniform")
        return None

    def _feasible(self, sampled: dict[str, Any], k_groups: int) -> bool:
        return is_feasible(self.base.replace({**self.fixed, **sampled, "model.k_groups": k_groups}))


def _fidelity_aware_optuna_search(**kwargs):
    from ray.tune.search.optuna import OptunaSearch

    class FidelityAwareOptunaSearch(OptunaSearch):
        """Only a trial whose final report carries `final` is COMPLETE; an ASHA-stopped one is PRUNED."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            finished = bool(result) and result.get("final") == 1.0
            super().on_trial_complete(trial_id, result if finished else None, error)

    return FidelityAwareOptunaSearch(**kwargs)


def _report_to_tune(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)


def _fit_in_trial(config: Config) -> None:
    from ray import tune

    from hashtune.distributed import _copy_run_folder
    from hashtune.runtime import LocalRuntime, resolve_device
    from hashtune.trainer import fit

    with tempfile.TemporaryDirectory(prefix="hashtune-trial-") as folder:
        run_dir, resume_from = Path(folder), None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as saved:
                _copy_run_folder(saved, run_dir)
            resume_from = run_dir
        fit(config, runtime=LocalRuntime(resolve_device(config.train.device), _report_to_tune), run_dir=run_dir, resume_from=resume_from)


def _fit_with_ray_train(config: Config, *, workers: int, cpus: float, gpus: float, storage: str) -> None:
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from hashtune.distributed import train_loop_per_worker

    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_flat_dict(config)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"train-trial_id={tune.get_context().get_trial_id()}",  # a restarted trial resumes this run
            storage_path=storage,
            failure_config=FailureConfig(max_failures=2),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus)))}},
        ),
    )
    trainer.fit()


def run_trial(trial_config: dict, *, resolver: TrialResolver, workers: int, cpus: float, gpus: float, storage: str) -> None:
    """The Tune trainable: resolve the trial's config and train it on the space's path."""
    _, flat = resolver(trial_config)
    config = config_from_dict(flat)
    if workers == 0:
        _fit_in_trial(config)
    else:
        _fit_with_ray_train(config, workers=workers, cpus=cpus, gpus=gpus, storage=storage)


def _scheduler(space: SearchSpace, epochs: int):
    if space.scheduler["type"] != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch", max_t=epochs, grace_period=int(space.scheduler.get("grace_period", max(1, epochs // 6))),
        reduction_factor=float(space.scheduler.get("reduction_factor", 3)),
    )


def build_tuner(
    space: SearchSpace, base: Config, *, name: str, storage: str, callbacks: list, optuna_storage: str, max_concurrent: int,
):
    """The `Tuner` of a sweep (fresh; `Tuner.restore` rebuilds it from storage on --resume)."""
    from ray import tune

    resolver = TrialResolver(base, space)
    trainable = trial_trainable(space, resolver, storage)
    tune_config: dict[str, Any] = dict(metric=space.metric, mode=space.mode, max_concurrent_trials=max_concurrent,
                                       scheduler=_scheduler(space, config_from_dict(resolver.base_flat | space.fixed).train.epochs),
                                       time_budget_s=space.time_budget_s)
    if space.search == "grid":
        param_space = {"point": tune.grid_search(list(resolver.points))}
        tune_config["num_samples"] = 1
    else:
        import optuna

        sampler = optuna.samplers.TPESampler(seed=space.seeds[0]) if space.search == "tpe" else optuna.samplers.RandomSampler(seed=space.seeds[0])
        tune_config["search_alg"] = _fidelity_aware_optuna_search(
            space=OptunaSpace(space.params, base, space.fixed), metric=space.metric, mode=space.mode, sampler=sampler,
            study_name=name, storage=optuna.storages.RDBStorage(optuna_storage),
        )
        tune_config["num_samples"] = space.num_samples
        param_space = None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(**tune_config, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=0)),
    )


DRIVER_RESOURCE = "trial_driver"


def trial_dirname(trial) -> str:
    """Short trial folders (Tune's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def trial_trainable(space: SearchSpace, resolver: TrialResolver, storage: str):
    from ray import tune

    trainable = tune.with_parameters(
        run_trial, resolver=resolver, workers=space.workers, cpus=space.cpus_per_trial, gpus=space.gpus_per_worker, storage=storage
    )
    if space.workers == 0:
        resources = {"cpu": space.cpus_per_trial} | ({"gpu": space.gpus_per_worker} if space.gpus_per_worker else {})
    else:
        resources = {"cpu": 0.01} | _driver_resource()  # the trial only drives its TorchTrainer; the workers hold the resources
    return tune.with_resources(trainable, resources)


def _driver_resource() -> dict[str, float]:
    """`{DRIVER_RESOURCE: 0.01}` on a cluster that defines it (clusters/*.yaml give it to the head only), else nothing.

    It pins the trials' driver processes to the head node, so a GPU node's CPUs all go to DDP workers.
    """
    import ray

    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 0.01}
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hashtune.sweep", description="Search hashing configs with Ray Tune + Optuna.")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every trial")
    parser.add_argument("--space", required=True, help="a shipped space name (search_spaces/NAME.yaml) or a YAML file")
    parser.add_argument("--name", help="experiment name (default: the space's name)")
    parser.add_argument(
        "--resume", nargs="?", const="always", default="never", choices=("never", "always", "auto"),
        help="continue an interrupted sweep of this name (`--resume`); `--resume auto` continues one if it exists, "
             "else starts it (what `make sweep` does); default: refuse to touch an existing sweep",
    )
    parser.add_argument("--address", help="Ray cluster address, e.g. auto (default: start a local Ray on 127.0.0.1)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite results/mlflow.db)")
    parser.add_argument("--storage", help="Tune storage path or s3:// URI (default: results/ray)")
    parser.add_argument("--max-concurrent", type=int, help="concurrent trials (default: the space's max_concurrent)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the default stores and the study go")
    return parser


def main(argv: list[str] | None = None) -> int:
    from hashtune.sweep_driver import SweepError, SweepInterrupted, run_sweep

    args = build_parser().parse_args(argv)
    try:
        base = load_config(overrides=args.overrides)
        space = load_space(args.space, base)
        summary = run_sweep(args, base, space)
    except SweepInterrupted as stopped:
        print(f"hashtune.sweep: {stopped}", file=sys.stderr)
        return 130
    except (ConfigError, SpaceError, SweepError, ConnectionError, FileNotFoundError) as error:
        print(f"hashtune.sweep: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    if summary.get("best"):
        _report(summary, Path(args.results_dir))
    return 0 if summary.get("best") else 1


def _report(summary: dict, results_dir: Path) -> None:
    """The study of the sweep's experiment into `results/<experiment>/` (and onto its parent run)."""
    from mlflow import MlflowClient

    from hashtune.report import ReportError, build_report

    out = results_dir / summary["experiment"].replace("/", "_")
    try:
        build_report(MlflowClient(summary["mlflow_uri"]), summary["experiment"], out)
    except ReportError as error:  # the sweep's runs are safe in MLflow; the report can be rebuilt later
        print(f"hashtune.sweep: report not built: {error}", file=sys.stderr)
        return
    print(f"study written to {out} (python -m hashtune.report --experiment {summary['experiment']} rebuilds it)")


if __name__ == "__main__":
    sys.exit(main())
