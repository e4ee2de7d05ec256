"""The sweep's driver: stores, the MLflow parent run, start or resume the Tuner, and the summary."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashtune.config import Config, parse_overrides, to_flat_dict
from hashtune.errors import TRY_AGAIN_EXIT
from hashtune.paths import RESULTS_DIR, disk_full
from hashtune.sweep.mlflow_logger import MlflowTrialLogger
from hashtune.sweep.options import SweepOptions
from hashtune.sweep.replicates import STATUS_TAG as REPLICATES_TAG
from hashtune.sweep.resume import ResumeState, resume_state
from hashtune.sweep.space import SearchSpace
from hashtune.sweep.space_record import SPACE_ARTIFACT
from hashtune.sweep.stop_signals import stop_signals
from hashtune.sweep.stores import (
    StorageUnavailable,
    SweepError,
    SweepStores,
    open_tracking,
    resolve_stores,
    sweep_lock,
)
from hashtune.sweep.summary import (
    close_parent,
    disk_bytes,
    ended_by,
    limit_reached,
    priced,
    recorded_summary,
    replicates_record,
    spent,
    summarize,
)
from hashtune.sweep.trial import TrialFunction, TrialResolver, TrialTracking
from hashtune.sweep.tuner import build_tuner, trial_trainable
from hashtune.tracking import (
    TAG,
    StoreClient,
    StoreUnavailable,
    get_or_create_experiment,
    log_infeasible_points,
    mark_orphans_killed,
)

if TYPE_CHECKING:
    from ray.tune import Callback

__all__ = ["SweepError", "SweepHooks", "SweepInterrupted", "run_sweep"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepHooks:
    """What a caller may put into a sweep besides its space: a `trial_function` run instead of training (tests,
    benchmarks of the orchestration) and Tune callbacks after hashtune's MLflow logger (a test's fault injector).

    Callbacks are saved with Tune's state: a resumed sweep keeps those it started with; the trial function is given
    again by each launch.
    """

    trial_function: TrialFunction | None = None
    callbacks: tuple[Callback, ...] = ()


STORE_UNAVAILABLE_EXIT = TRY_AGAIN_EXIT
"""The exit code of a sweep stopped by an MLflow store or a storage that did not answer (within `--store-retry-s`),
or by a full disk: 75, EX_TEMPFAIL, run it again with --resume once it answers."""


class SweepInterrupted(SweepError):
    """Ctrl-C, SIGTERM or SIGUSR1 stopped the sweep; its Tune state and MLflow runs are kept for `--resume`."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _create_parent(
    client, experiment_id: str, stores: SweepStores, space: SearchSpace, base: Config, record: dict
) -> str:
    from mlflow.entities import Param

    run = client.create_run(
        experiment_id,
        run_name=stores.name,
        tags={
            f"{TAG}role": "sweep",
            f"{TAG}space": space.name,
            f"{TAG}storage": stores.experiment_path,
            f"{TAG}search": space.search,
        },
    )
    params = {
        "space": space.name,
        "search": space.search,
        "metric": space.metric,
        "seeds": list(space.seeds),
        "workers": space.workers,
        "num_samples": space.num_samples,
    } | ({"reference": space.reference} if space.reference else {})
    if space.objectives:  # the study's Pareto front reads them from here
        params["objectives"] = ",".join(f"{name}:{mode}" for name, mode in space.objectives)
    if space.replicates is not None:  # the study reads its level from here
        plan = space.replicates
        params |= {
            "replicates.spec": f"{{min: {plan.min}, max: {plan.max}, step: {plan.step}, delta: {plan.delta:g}, alpha: "
            "{plan.alpha:g}}}",
            "replicates.looks": plan.looks,
            "replicates.alpha_per_look": plan.alpha_per_look,
            "replicates.alpha": plan.alpha,
            "replicates.delta": plan.delta,
            "replicates.reference": space.reference,
        }
    params |= {f"base.{key}": value for key, value in record["overrides"].items()}
    params |= {
        f"base_run.{key}": value for key, value in record.get("base", {}).items()
    }  # --base: where the arms start from
    client.log_batch(run.info.run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()])
    client.log_dict(run.info.run_id, record, SPACE_ARTIFACT)
    return run.info.run_id


def _check_resume(mode: str, stores: SweepStores) -> bool:
    """Whether the sweep continues an existing one, after checking `--resume` (never | always | auto) allows it."""
    from ray.tune import Tuner

    exists = Tuner.can_restore(stores.experiment_path)
    if mode == "always" and not exists:
        raise SweepError(
            f"--resume: no sweep named {stores.name!r} at {stores.experiment_path}; start it without --resume"
        )
    if mode == "never" and exists:
        raise SweepError(
            f"a sweep named {stores.name!r} already exists at {stores.experiment_path}; continue it with --resume or "
            "pick another --name"
        )
    return exists


def run_sweep(
    options: SweepOptions,
    base: Config,
    space: SearchSpace,
    provenance: dict | None = None,
    *,
    resume_line: str | None = None,
    hooks: SweepHooks | None = None,
) -> dict[str, Any]:
    """Start the sweep, or continue it (`options.resume`: never | always | auto); returns its summary.

    Everything that can refuse (a Ray temp dir too long for a local Ray, name, `--resume`, a running sweep
    of the same name, a space edited since the sweep started) refuses before anything is written.
    Interrupted, it says how to continue: `resume_line` when a caller that runs the sweep in its own
    process gives one (a benchmark continues through its own command), else the `hashtune.sweep` command.
    """
    if not options.address:
        from hashtune.train.local_ray import check_local_ray_temp_dir

        check_local_ray_temp_dir()
    stores = resolve_stores(options, space)
    _check_resume(options.resume, stores)
    tracking_store = open_tracking(stores)
    with sweep_lock(stores):
        return _run_locked(options, base, space, stores, tracking_store, provenance, resume_line, hooks or SweepHooks())


def _run_locked(
    options: SweepOptions,
    base: Config,
    space: SearchSpace,
    stores: SweepStores,
    tracking_store,
    provenance: dict | None,
    resume_line: str | None,
    hooks: SweepHooks,
) -> dict[str, Any]:
    resume = _check_resume(options.resume, stores)  # again, now that no other driver can create it meanwhile
    uri, artifacts = tracking_store
    client = StoreClient(uri, options.store_retry_s)
    existing = client.get_experiment_by_name(stores.name)
    explicit = None if provenance else set(parse_overrides(list(options.overrides)))
    state = resume_state(
        client, existing, stores, space, base, resume=resume, explicit=explicit, provenance=provenance, uri=uri
    )
    if state.parent is not None and state.parent.info.status == "FINISHED":
        finished = recorded_summary(client, state.parent.info.run_id)
        if finished is not None:  # nothing to run: no Ray, no Tune state to read back
            _logger.info(
                "sweep %r has finished: nothing to run (its summary is read back from its parent run)", stores.name
            )
            return finished
    tracking = _open_parent(client, existing, stores, state, artifacts, uri)
    resume_line = resume_line or _resume_line(options, stores.name)
    interruption = _Interruption(client, tracking, stores.name, resume_line)
    try:
        results, stop_signal = _fit(
            options,
            state.base,
            state.space,
            stores,
            tracking,
            resume,
            lambda: print(f"hashtune.sweep: {interruption.record('SIGTERM')}", file=sys.stderr),
            hooks,
        )
    except Exception as error:  # Tune wraps what its callbacks raise in a TuneError: the cause is in the chain
        outage = _outage(error, stores.results_dir)
        if outage is None:
            raise
        # its runs are marked KILLED by the --resume that finds the store back
        message = f"sweep {stores.name!r} stopped: {outage}; {resume_line}"
        raise SweepInterrupted(message, exit_code=STORE_UNAVAILABLE_EXIT) from None
    if stop_signal is not None:
        raise SweepInterrupted(interruption.record(stop_signal), exit_code=128 + signal.Signals[stop_signal].value)
    return _close(results, state.space, client, stores, tracking)


def _outage(error: BaseException, results_dir: Path) -> Exception | None:
    """The store or storage outage, or the full disk, that `error` (or an exception it was raised from) is."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (StoreUnavailable, StorageUnavailable)):
            return seen
        if isinstance(seen, OSError) and (full := disk_full(seen, results_dir)) is not None:
            return full
        seen = seen.__cause__ or seen.__context__
    return None


def _open_parent(client, existing, stores: SweepStores, state: ResumeState, artifacts, uri: str) -> TrialTracking:
    """The sweep's parent run, created (a new sweep) or reopened RUNNING with its orphans KILLED (a resumed one)."""
    experiment_id = existing.experiment_id if existing else get_or_create_experiment(client, stores.name, artifacts)
    if state.parent is not None:
        parent_run_id = state.parent.info.run_id
        client.update_run(parent_run_id, status="RUNNING")
        mark_orphans_killed(client, experiment_id, parent_run_id)
    else:
        parent_run_id = _create_parent(client, experiment_id, stores, state.space, state.base, state.record)
    if state.space.search == "grid":
        infeasible = state.space.grid_points(state.base)[1]
        log_infeasible_points(
            client, experiment_id, parent_run_id, state.space.name, infeasible, to_flat_dict(state.base)
        )
    return TrialTracking(uri, experiment_id, parent_run_id, client.retry_s)


def _close(results, space: SearchSpace, client, stores: SweepStores, tracking: TrialTracking) -> dict[str, Any]:
    """The finished sweep's summary, also closing its parent run."""
    summary = summarize(results, space, client, tracking.experiment_id)
    summary |= {
        "experiment": stores.name,
        "mlflow_uri": tracking.uri,
        "storage": stores.experiment_path,
        "parent_run_id": tracking.parent_run_id,
        "disk_bytes": disk_bytes(stores.experiment_path),
        "cost": priced(spent(client, tracking), space),
    }
    if space.replicates is not None:
        summary["replicates"] = replicates_record(client, tracking.parent_run_id)
    summary["ended_by"] = ended_by(summary, space, tracking)
    close_parent(client, tracking.parent_run_id, summary)
    return summary


def _resume_line(options: SweepOptions, name: str) -> str:
    """The command that continues the sweep: its space and name, and the stores, cluster and base it was given."""
    where = [
        (flag, getattr(options, key))
        for flag, key in (
            ("--results-dir", "results_dir"),
            ("--mlflow-uri", "mlflow_uri"),
            ("--storage", "storage"),
            ("--address", "address"),
            ("--base", "base"),
        )
    ]
    given = [
        part
        for flag, value in where
        if value is not None and not (flag == "--results-dir" and Path(value) == RESULTS_DIR)
        for part in (flag, str(value))
    ]
    command = shlex.join(
        ["python", "-m", "hashtune.sweep", "--space", options.space, "--name", name, "--resume", *given]
    )
    return f"nothing finished is lost. Continue it with: {command}"


class _Interruption:
    """Records an interrupted sweep once (from the driver or the SIGTERM watchdog): runs KILLED, the resume line."""

    def __init__(self, client, tracking: TrialTracking, name: str, resume_line: str) -> None:
        self.client, self.tracking, self.name, self.resume_line = client, tracking, name, resume_line
        self._lock, self._message = threading.Lock(), None

    def record(self, signal_name: str) -> str:
        with self._lock:
            if self._message is None:
                mark_orphans_killed(self.client, self.tracking.experiment_id, self.tracking.parent_run_id)
                self.client.set_tag(self.tracking.parent_run_id, f"{TAG}status", "interrupted")
                self.client.set_terminated(self.tracking.parent_run_id, "KILLED")
                self._message = f"sweep {self.name!r} interrupted by {signal_name}; {self.resume_line}"
            return self._message


def _fit(
    options: SweepOptions,
    base: Config,
    space: SearchSpace,
    stores: SweepStores,
    tracking: TrialTracking,
    resume: bool,
    on_forced_exit,
    hooks: SweepHooks,
):
    """Run (or restore and continue) the Tuner on a Ray this call starts unless one is given.

    Returns `(results, stop_signal)`: the signal name when the sweep was interrupted, else None.
    """
    from ray.tune import Tuner

    from hashtune.train.local_ray import init_ray, shutdown_ray

    resolver = TrialResolver(base, space)
    logger = MlflowTrialLogger(tracking=tracking, space_name=space.name, resolve=resolver)
    started = init_ray(options.address)
    results, stop_signal = None, "SIGINT"
    with stop_signals(on_forced_exit) as seen:  # its watchdog also bounds the shutdown
        try:
            if resume:
                _logger.info(
                    "continuing sweep %r from %s (finished trials are not re-run)", stores.name, stores.experiment_path
                )
                tuner = Tuner.restore(
                    stores.experiment_path,
                    trainable=trial_trainable(space, resolver, stores.storage, tracking, hooks.trial_function),
                    resume_errored=True,
                )  # a trial SIGTERMed with its sweep errored: continue it
            else:
                tuner = build_tuner(
                    space,
                    base,
                    name=stores.name,
                    storage=stores.storage,
                    callbacks=[logger, *hooks.callbacks],
                    trial_function=hooks.trial_function,
                    tracking=tracking,
                    max_concurrent=options.max_concurrent or space.max_concurrent,
                    optuna_journal=stores.optuna_journal,
                )
            results = tuner.fit()
            interrupted = _interrupted(results, space, len(resolver.points), tracking)
            stop_signal = (seen[0] if seen else "SIGINT") if interrupted else None
        except KeyboardInterrupt:  # a second Ctrl-C while Tune was already stopping
            stop_signal = "SIGINT"
        finally:
            if started:
                shutdown_ray()
    return results, stop_signal


def _interrupted(results, space: SearchSpace, grid_size: int, tracking: TrialTracking) -> bool:
    """Whether Tune returned early on Ctrl-C (SIGINT) or SIGUSR1: it then returns normally, with trials unfinished."""
    if results.num_terminated + results.num_errors < len(results):
        return True
    if space.replicates is not None:  # the schedule says on the parent run when it is done
        done = tracking.client().get_run(tracking.parent_run_id).data.tags.get(REPLICATES_TAG) == "done"
        return not done and limit_reached(space, tracking) is None
    planned = grid_size if space.search == "grid" else space.num_samples
    return len(results) < planned and limit_reached(space, tracking) is None
