"""The sweep's `Tuner`: grid points or Optuna samplers, ASHA, resources, and the trainable.

Grid spaces launch every feasible point once (with `replicates:`, the seeds a `ReplicationSearcher`
schedules); `tpe` and `random` spaces use Optuna's samplers, with the study in an RDB storage next to
the MLflow store. Trials that ASHA stops early are told to Optuna as
PRUNED, not COMPLETE, so TPE only learns from values measured at full fidelity.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from hashtune.config import Config, config_from_dict, to_flat_dict
from hashtune.sweep.space import Domain, SearchSpace
from hashtune.sweep.space_settings import budget_reached
from hashtune.sweep.summary import ELAPSED_METRIC
from hashtune.sweep.trial import TrialFunction, TrialResolver, TrialTracking, run_trial
from hashtune.train.bits import is_feasible

__all__ = [
    "OptunaSpace",
    "build_tuner",
    "trial_trainable",
    "DRIVER_RESOURCE",
    "reuse_trial_processes",
    "SweepStopper",
    "sweep_stopper",
]


class OptunaSpace:
    """Optuna define-by-run space: a key with `when` only where its condition holds (conditions first), and
    `model.k_groups` last, within what `model.bits` allows."""

    def __init__(self, params: dict[str, Domain], base: Config, fixed: dict[str, Any]) -> None:
        self.params, self.base, self.fixed = params, base, fixed
        self.start = to_flat_dict(base) | fixed  # what a key's condition reads where the condition is not searched

    def __call__(self, trial) -> None:
        sampled: dict[str, Any] = {}
        for key in sorted(self.params, key=lambda name: (self.params[name].when is not None, name == "model.k_groups")):
            domain = self.params[key]
            if domain.when and any(
                sampled.get(other, self.start[other]) != value for other, value in domain.when.items()
            ):
                continue  # the trial keeps the base value, which its other choices make irrelevant
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
        """Only a trial whose final report carries `final` is COMPLETE; an ASHA-stopped one is PRUNED (for every
        objective of a multi-objective study: Optuna prunes the trial, not one of its values)."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            finished = bool(result) and result.get("final") == 1.0
            super().on_trial_complete(trial_id, result if finished else None, error)

    return FidelityAwareOptunaSearch(**kwargs)


def _scheduler(space: SearchSpace, epochs: int):
    if not space.scheduler.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=int(space.scheduler.grace(epochs)),
        reduction_factor=float(space.scheduler.factor),
        brackets=int(space.scheduler.bracket_count),
    )


def build_tuner(
    space: SearchSpace,
    base: Config,
    *,
    name: str,
    storage: str,
    callbacks: list,
    optuna_journal: Path,
    max_concurrent: int,
    tracking: TrialTracking,
    trial_function: TrialFunction | None = None,
):
    """The `Tuner` of a sweep (fresh; `Tuner.restore` rebuilds it from storage on --resume)."""
    from ray import tune

    resolver = TrialResolver(base, space)
    search_alg, param_space, num_samples = _search(
        space, base, resolver, name=name, optuna_journal=optuna_journal, tracking=tracking
    )
    stop_on = space.scheduler.metric or space.metric  # several objectives: the one ASHA stops trials on
    return tune.Tuner(
        trial_trainable(space, resolver, storage, tracking, trial_function),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=stop_on,
            mode=dict(space.objectives).get(stop_on, space.mode),
            max_concurrent_trials=max_concurrent,
            scheduler=_scheduler(space, config_from_dict(resolver.base_flat | space.fixed).train.epochs),
            search_alg=search_alg,
            num_samples=num_samples,
            trial_dirname_creator=trial_dirname,
            reuse_actors=reuse_trial_processes(space),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=0),
            stop=sweep_stopper(space, tracking),
            # the best checkpoint(s) by the selection metric; Ray never deletes a trial's latest one
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=space.checkpoints_to_keep,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
        ),
    )


def _search(space: SearchSpace, base: Config, resolver: TrialResolver, *, name: str, optuna_journal: Path, tracking):
    """What chooses the trials, `(search_alg, param_space, num_samples)`: the replication schedule, a grid, or
    Optuna."""
    from ray import tune

    if space.replicates is not None:
        from hashtune.sweep.replicates import ReplicationSearcher

        searcher = ReplicationSearcher(
            points=resolver.points.values(),
            plan=space.replicates,
            reference=space.reference,
            tracking=tracking,
            metric=space.metric,
            mode=space.mode,
        )
        return searcher, None, len(resolver.points)  # a bound: the schedule ends itself
    if space.search == "grid":
        return None, {"point": tune.grid_search(list(resolver.points))}, 1
    objectives = space.objectives or ((space.metric, space.mode),)
    searcher = _fidelity_aware_optuna_search(
        space=OptunaSpace(space.params, base, space.fixed),
        metric=[name for name, _ in objectives] if space.objectives else space.metric,
        mode=[mode for _, mode in objectives] if space.objectives else space.mode,
        sampler=_sampler(space),
        study_name=name,
        storage=_journal_storage(optuna_journal),
    )
    return searcher, None, space.num_samples


def _sampler(space: SearchSpace):
    """The space's Optuna sampler, seeded by its seed: TPE (with its options), NSGA-II or random."""
    import optuna

    seed = space.seeds[0]
    if space.search == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **(space.sampler.kwargs() if space.sampler else {}))
    if space.search == "nsga2":
        from hashtune.sweep.samplers import PicklableNSGAIISampler

        return PicklableNSGAIISampler(seed=seed, **(space.sampler.kwargs() if space.sampler else {}))
    return optuna.samplers.RandomSampler(seed=seed)


def _journal_storage(path: Path):
    """Optuna's journal storage: an append per operation (ask and tell of a 3-parameter TPE trial took 7 ms at the
    300th trial here, against 52 ms in a SQLite `RDBStorage`, 2026-12-02); `--resume` reads it back once."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def reuse_trial_processes(space: SearchSpace) -> bool:
    """Tune's `reuse_actors` for a space: a process runs trial after trial, so a trial pays no start-up or torch /
    timm / MLflow imports (`run_trial` keeps no state between trials: its numbers are a fresh process's).

    Not for `workers: N`: there a trial's training thread is inside `TorchTrainer.fit()`, which Tune cannot
    reset; with reuse, the first trial of `tests/test_sweep.py::test_asha_stopped_sweep_through_torch_trainer`
    never ended (its last report delivered, its process still in `fit()` 7 minutes later, 2026-12-02). Each
    such trial gets a fresh process, which takes its Ray Train run down with it.
    """
    return space.workers == 0


DRIVER_RESOURCE = "trial_driver"


def trial_dirname(trial) -> str:
    """Short trial folders (Tune's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def trial_trainable(
    space: SearchSpace,
    resolver: TrialResolver,
    storage: str,
    tracking: TrialTracking,
    trial_function: TrialFunction | None = None,
):
    """`run_trial` with the sweep's resolver, space, storage and store (and a `trial_function` instead of training),
    on the resources a trial takes."""
    from ray import tune

    trainable = tune.with_parameters(
        run_trial, resolver=resolver, space=space, storage=storage, tracking=tracking, trial_function=trial_function
    )
    if space.workers == 0:
        resources = {"cpu": space.cpus_per_trial} | ({"gpu": space.gpus_per_worker} if space.gpus_per_worker else {})
    else:
        resources = {
            "cpu": 0.01
        } | _driver_resource()  # the trial only drives its TorchTrainer; the workers hold the resources
    return tune.with_resources(trainable, resources)


def _driver_resource() -> dict[str, float]:
    """`{DRIVER_RESOURCE: 0.01}` on a cluster that defines it (clusters/*.yaml give it to the head only), else nothing.

    It pins the trials' driver processes to the head node, so a GPU node's CPUs all go to DDP workers.
    """
    import ray

    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 0.01}
    return {}


class SweepStopper(Stopper):
    """The sweep's limits, read from MLflow so that a resumed sweep continues them (see `sweep_stopper`)."""

    def __init__(
        self, *, tracking: TrialTracking, time_budget_s: float | None, budget: tuple[str, float] | None, every_s: float
    ) -> None:
        self.tracking, self.time_budget_s, self.budget, self.every_s = tracking, time_budget_s, budget, every_s
        self._fresh()

    def _fresh(self) -> None:
        self.checked_at, self.elapsed_before, self.started, self.stop = float("-inf"), None, time.monotonic(), False

    def __getstate__(self) -> dict:
        return {key: getattr(self, key) for key in ("tracking", "time_budget_s", "budget", "every_s")}

    def __setstate__(self, state: dict) -> None:  # restored by --resume: this driver's clock starts now
        self.__dict__.update(state)
        self._fresh()

    def __call__(self, trial_id, result) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        if self.stop or time.monotonic() - self.checked_at < self.every_s:
            return self.stop
        client, self.checked_at, parent = self.tracking.client(), time.monotonic(), self.tracking.parent_run_id
        if self.elapsed_before is None:
            self.elapsed_before = client.get_run(parent).data.metrics.get(ELAPSED_METRIC, 0.0)
        elapsed = self.elapsed_before + time.monotonic() - self.started
        client.log_metric(parent, ELAPSED_METRIC, elapsed)
        self.stop = self.time_budget_s is not None and elapsed >= self.time_budget_s
        if self.budget is not None and not self.stop:  # the running total the trials' logger keeps on the parent run
            self.stop = budget_reached(client.get_run(parent).data.metrics, self.budget)
        return self.stop


def sweep_stopper(space: SearchSpace, tracking: TrialTracking, every_s: float = 2.0) -> SweepStopper | None:
    """The sweep's limits as one Tune `Stopper` (or None): the wall-clock `time_budget_s` and a hard cost budget.

    Both are read from MLflow, not from this driver's clock or memory, so a resumed sweep continues the
    budget it had: the elapsed time is kept on the parent run (`sweep/elapsed_s`) and added to on every
    check; the spent cost is the trials' `cost/*` total on the parent run (a soft budget only keeps new
    trials from training).
    """
    budget = space.budget.limit if space.budget and space.budget.hard else None
    if budget is None and space.time_budget_s is None:
        return None
    return SweepStopper(tracking=tracking, time_budget_s=space.time_budget_s, budget=budget, every_s=every_s)
