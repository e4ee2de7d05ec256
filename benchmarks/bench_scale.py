"""What a trial costs the platform, against the stock Ray Tune + Optuna + MLflow stack, from 100 to 10,000 trials.

Run: `python -m benchmarks.bench_scale --keep DIR` (writes results/bench_scale.md; about three hours on 2 cores).
Every row is one sweep, run in its own process, of TPE (seed 0) + ASHA over three parameters, 2 trials at a time:

* **instant** trials: a deterministic formula of the sampled `train.lr`, `loss.gamma` and `loss.quant_weight`
  (`instant`), so the row measures the orchestration alone. hashtune runs it through the real sweep
  (`run_sweep`, its MLflow logger, fidelity-aware OptunaSearch, stores and exactly-once machinery; the trial's
  training replaced by `instant` through `SweepHooks.trial_function`); the **stock** stack is plain `Tuner` +
  `OptunaSearch` + `MLflowLoggerCallback` on SQLite with `reuse_actors=True`, the same objective, sampler
  seed, ASHA and concurrency, in the same benchmark run;
* **real tiny** trials: 1 epoch of a 1-block model on digits; the stock stack's trainable calls hashtune's own
  `fit` (same work, stock orchestration, its run folder reported to Tune as the checkpoint);
* **8 nodes**: the instant rows on a simulated cluster (`ray.cluster_utils.Cluster`, 8 nodes of 1 CPU on this
  machine), 8 trials at a time.

Per row: wall seconds from Ray's start to its shutdown over the trials; CPU of the driver process, of the trial
processes and of Ray's daemons (psutil); MLflow store calls of the driver and the trials (every outermost call of
the SQLAlchemy store, counted by a probe in each process); Optuna's suggestion time over the first and the last 20
trials; the bytes of Tune's experiment folder and of the MLflow and Optuna stores. On each finished hashtune store
of the local instant rows: `python -m hashtune.sweep --resume` of the finished sweep (which also rebuilds the
study), `python -m hashtune.report`, and the export's best-run lookup (`best_finished_run`), each timed.

With `--keep DIR` the benchmark can be stopped and run again with the same arguments: finished rows are read back,
an interrupted one continues (hashtune `--resume auto`, the stock stack `Tuner.restore`) and its figures are the
sums over its launches, marked "resumed".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks._table import markdown_table, write_report

PARAMS = {"train.lr": (3.0e-4, 1.0e-2), "loss.gamma": (1.0, 50.0), "loss.quant_weight": (1.0e-3, 1.0)}
"""The searched keys (log-uniform) of every row."""
INSTANT_EPOCHS = 9
"""Instant trials report once, at this epoch (ASHA's max_t); ASHA: grace period 1, reduction factor 3."""
TINY = {
    "model.depth": 1,
    "model.embed_dim": 16,
    "model.num_heads": 2,
    "train.epochs": 1,
    "train.eval_every": 1,
    "train.warmup_epochs": 0,
}
ARMS = ("hashtune", "stock")
TARGET_STOCK, TARGET_FLAT, TARGET_SECONDS = 1.2, 1.5, 60.0
RAY_TMPDIR = "/tmp/bench_scale_ray"
PROBE = 2
"""The CPU probe's version. 1 (2026-12-02/03): Ray's dashboard and runtime-env agents counted as trial processes,
trial processes that ended before the launch's end missed; a row measured by it is marked in the report."""


def instant_value(lr: float, gamma: float, quant_weight: float) -> float:
    """The instant objective: 1 at (lr 3e-3, gamma 5, lambda 0.1), lower away from it."""
    return (
        1.0
        - (math.log10(lr) + 2.5) ** 2 / 10
        - (math.log10(gamma) - 0.7) ** 2 / 5
        - (math.log10(quant_weight) + 1) ** 2 / 20
    )


def instant(variant: str, flat: dict) -> dict[str, float]:
    """hashtune's trial function (`SweepHooks.trial_function`): the instant objective as a trial's final metrics."""
    value = instant_value(flat["train.lr"], flat["loss.gamma"], flat["loss.quant_weight"])
    return {"val/best_mAP": value, "val/mAP": value, "test/mAP": value}


@dataclass(frozen=True)
class Row:
    """One sweep of the benchmark: which trials, through which stack, how many, on how many nodes."""

    scenario: str  # instant | real
    arm: str  # hashtune | stock
    trials: int
    nodes: int = 1

    @property
    def concurrency(self) -> int:
        return 2 if self.nodes == 1 else self.nodes

    @property
    def slug(self) -> str:
        return f"{self.scenario}-{self.nodes}n-{self.trials}-{self.arm}"

    @property
    def label(self) -> str:
        what = "instant" if self.scenario == "instant" else "real tiny (1 epoch, 1 block)"
        return what + (f", {self.nodes} nodes" if self.nodes > 1 else "")


def space_yaml(row: Row) -> str:
    """hashtune's space for a row (the stock stack is given the same domains, sampler seed and ASHA)."""
    fixed = {"train.epochs": INSTANT_EPOCHS, "train.warmup_epochs": 0} if row.scenario == "instant" else TINY
    lines = [
        "search: tpe",
        "metric: val/best_mAP",
        "mode: max",
        f"num_samples: {row.trials}",
        f"max_concurrent: {row.concurrency}",
        "cpus_per_trial: 1",
        "seeds: [0]",
        "scheduler: {type: asha, grace_period: 1, reduction_factor: 3}",
        "fixed:",
    ]
    lines += [f"  {key}: {value}" for key, value in fixed.items()] + ["params:"]
    lines += [f"  {key}: {{loguniform: [{low!r}, {high!r}]}}" for key, (low, high) in PARAMS.items()]
    return "\n".join(lines) + "\n"


# ---- one launch of a row, in its own process -------------------------------------------------------------------


def _launch(row: Row, folder: Path, address: str | None) -> dict:
    """Run (or continue) the row's sweep once in this process and measure it."""
    import resource

    import ray
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from benchmarks._scale_probe import (
        MLFLOW_LOG_ENV,
        CpuSampler,
        count_mlflow_calls,
        cpu_delta,
        ray_process_cpu,
        read_mlflow_log,
        time_calls,
        trial_process_count,
    )

    launch = len(_launches(folder))
    log = folder / f"mlflow_calls-{launch}.log"
    env = {MLFLOW_LOG_ENV: str(log)}
    os.environ.update(env)
    count_mlflow_calls("driver")
    suggestions = time_calls(OptunaSearch, "suggest", keep=lambda result: isinstance(result, dict))
    saves = time_calls(TuneController, "checkpoint")
    usage, processes = resource.getrusage(resource.RUSAGE_SELF), ray_process_cpu()
    sampler = CpuSampler(folder / f"ray_cpu-{launch}.json")
    start = time.perf_counter()
    # the hook runs before Ray puts the driver's folder on a worker's path: give it the project's
    project = str(Path(__file__).resolve().parent.parent)
    path = {"PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}
    runtime_env = {
        "worker_process_setup_hook": "benchmarks._scale_probe.count_mlflow_calls_in_trial",
        "env_vars": env | path,
    }
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, runtime_env=runtime_env
        )
    try:
        complete = (_hashtune_sweep if row.arm == "hashtune" else _stock_sweep)(row, folder, address)
    except KeyboardInterrupt:  # a second Ctrl-C while the sweep was stopping: what ran is still measured
        complete = False
    processes, trial_processes = cpu_delta(processes, sampler.stop()), trial_process_count()
    ray.shutdown()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    calls = read_mlflow_log(log)
    return {
        "complete": complete,
        "wall_s": wall,
        "driver_cpu_s": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
        "trial_cpu_s": processes["trial"],
        "daemon_cpu_s": processes["daemon"],
        "trial_processes": trial_processes,
        "probe": PROBE,
        "mlflow": calls,
        "suggest_first_s": suggestions[:20],
        "suggest_last_s": suggestions[-20:],
        "suggestions": len(suggestions),
        "suggest_s": sum(suggestions),
        "state_saves": len(saves),
        "state_save_s": sum(saves),
    }


def _hashtune_sweep(row: Row, folder: Path, address: str | None) -> bool:
    """The row through `hashtune.sweep`'s driver; whether it finished (an interrupted sweep raises SweepInterrupted)."""
    from hashtune.config import load_config
    from hashtune.sweep.cli import build_parser
    from hashtune.sweep.driver import SweepHooks, SweepInterrupted, run_sweep
    from hashtune.sweep.options import SweepOptions
    from hashtune.sweep.space import load_space

    argv = ["--space", str(folder / "space.yaml"), "--name", row.slug, "--results-dir", str(folder), "--resume", "auto"]
    args = build_parser().parse_args(argv + (["--address", address] if address else []))
    base = load_config()
    try:
        run_sweep(
            SweepOptions.from_args(args),
            base,
            load_space(args.space, base),
            resume_line="the benchmark's own command continues it",
            hooks=SweepHooks(trial_function=instant if row.scenario == "instant" else None),
        )
    except SweepInterrupted:
        return False
    return True


def _stock_sweep(row: Row, folder: Path, address: str | None) -> bool:
    """Plain Ray Tune + OptunaSearch + MLflowLoggerCallback (SQLite), reuse_actors=True: what a user writes."""
    import optuna
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    path = folder / "ray" / row.slug
    trainable = tune.with_resources(_stock_instant if row.scenario == "instant" else _stock_real, {"cpu": 1})
    if tune.Tuner.can_restore(str(path)):
        results = tune.Tuner.restore(str(path), trainable=trainable).fit()
        return len(results) == row.trials and results.num_terminated + results.num_errors == row.trials
    space = {key: optuna.distributions.FloatDistribution(low, high, log=True) for key, (low, high) in PARAMS.items()}
    max_t = INSTANT_EPOCHS if row.scenario == "instant" else TINY["train.epochs"]
    results = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="val/best_mAP",
            mode="max",
            num_samples=row.trials,
            max_concurrent_trials=row.concurrency,
            reuse_actors=True,
            search_alg=OptunaSearch(
                space=space, metric="val/best_mAP", mode="max", sampler=optuna.samplers.TPESampler(seed=0)
            ),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=1, reduction_factor=3),
        ),
        run_config=tune.RunConfig(
            name=row.slug,
            storage_path=str(folder / "ray"),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment_name=row.slug, save_artifact=False
                )
            ],
        ),
    ).fit()
    return (
        len(results) == row.trials and results.num_terminated + results.num_errors == row.trials
    )  # Ctrl-C returns early


def _stock_instant(config: dict) -> None:
    from ray import tune

    value = instant_value(config["train.lr"], config["loss.gamma"], config["loss.quant_weight"])
    tune.report({"val/best_mAP": value, "val/mAP": value, "test/mAP": value, "epoch": INSTANT_EPOCHS})


def _stock_real(config: dict) -> None:
    """hashtune's `fit` in a plain Tune trainable: its reports (and run folder, as the checkpoint) go to Tune."""
    import torch
    from ray import tune

    from hashtune.config import load_config
    from hashtune.train.runtime import LocalRuntime
    from hashtune.train.trainer import fit

    def report(metrics: dict, folder) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

    torch.set_num_threads(1)
    trial_config = load_config(overrides=[f"{key}={value}" for key, value in (TINY | config).items()])
    with tempfile.TemporaryDirectory(prefix="stock-trial-") as folder:
        fit(trial_config, runtime=LocalRuntime(torch.device("cpu"), report), run_dir=folder)


# ---- the rows, read back or run ---------------------------------------------------------------------------------


def _launches(folder: Path) -> list[dict]:
    path = folder / "launches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.exists() else 0


LAUNCH_PAUSE_S = 60.0
"""A gap this long with no trial ending is a pause between two launches of a row (`--keep`), not a trial's cost."""


def _spacings(ends: list[int]) -> list[float]:
    """Seconds between consecutive trials' end times (ms, sorted), pauses between launches left out."""
    gaps = [(later - earlier) / 1000.0 for earlier, later in zip(ends, ends[1:])]
    return [gap for gap in gaps if gap < LAUNCH_PAUSE_S]


def _trial_runs(row: Row, folder: Path) -> list:
    from mlflow import MlflowClient

    from hashtune.tracking import find_runs

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(row.slug)
    return [run for run in find_runs(client, experiment.experiment_id) if run.data.tags.get("hashtune.role") != "sweep"]


def _store_figures(row: Row, folder: Path) -> dict:
    """Bytes of the stores and the steady per-trial wall (the spacing of the runs' end times between their 10th and
    90th percentile, pauses between launches left out), and that spacing per 1,000 trials."""
    runs = _trial_runs(row, folder)
    ends = sorted(run.info.end_time for run in runs if run.info.end_time)
    finished = sum(
        run.info.status == "FINISHED" and run.data.tags.get("hashtune.status", "finished") == "finished" for run in runs
    )
    if finished != row.trials:
        raise RuntimeError(f"bench_scale: {row.slug}: {finished} of {row.trials} trials finished (see {folder})")
    low, high = int(0.1 * len(ends)), int(0.9 * len(ends)) - 1
    middle = _spacings(ends[low : high + 1])
    steady = sum(middle) / len(middle) if middle else float("nan")
    optuna = folder / "optuna" / f"{row.slug}.journal"
    return {
        "runs": len(runs),
        "steady_s": steady,
        "spacing_per_1000": _block_means(_spacings(ends), 1000) if len(ends) >= 5000 else [],
        "tune_bytes": _folder_bytes(folder / "ray" / row.slug),
        "mlflow_bytes": _folder_bytes(folder / "mlflow.db") + _folder_bytes(folder / "mlartifacts"),
        "optuna_bytes": optuna.stat().st_size if optuna.is_file() else None,
    }


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=os.environ | env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def _post_timings(row: Row, folder: Path) -> dict:
    """On the finished hashtune store: --resume of the finished sweep, the report, the export's best-run lookup."""
    from mlflow import MlflowClient

    from hashtune.tracking import best_finished_run

    env = {"RAY_TMPDIR": RAY_TMPDIR}  # a finished sweep: its summary is read back, nothing runs
    python = [sys.executable, "-m"]
    resume = _timed(
        python
        + [
            "hashtune.sweep",
            "--space",
            str(folder / "space.yaml"),
            "--name",
            row.slug,
            "--results-dir",
            str(folder),
            "--resume",
        ],
        env,
    )
    report = _timed(
        python
        + [
            "hashtune.report",
            "--experiment",
            row.slug,
            "--mlflow-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--out",
            str(folder / "report"),
        ],
        env,
    )
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    start = time.perf_counter()
    best_finished_run(client, row.slug, "val/best_mAP")
    return {"resume_s": resume, "report_s": report, "lookup_s": time.perf_counter() - start}


def run_row(row: Row, folder: Path, address: str | None) -> dict:
    """The row's figures: read back if it finished in `folder`, else run (or continued) in a child process."""
    record_path = folder / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space_yaml(row))
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_scale",
        "--launch",
        json.dumps(asdict(row)),
        "--folder",
        str(folder),
    ]
    if not _run_child(command + (["--address", address] if address else [])):
        raise KeyboardInterrupt
    launches = _launches(folder)
    record = {"row": asdict(row), "launches": len(launches)} | _summed(launches) | _store_figures(row, folder)
    if row.arm == "hashtune" and row.scenario == "instant" and row.nodes == 1:
        record |= _post_timings(row, folder)
    record_path.write_text(json.dumps(record, indent=1))
    return record


def _run_child(command: list[str]) -> bool:
    """Run one launch; whether its sweep finished. Ctrl-C reaches the child too: wait while it records what it ran."""
    child = subprocess.Popen(command, env=os.environ | {"RAY_TMPDIR": RAY_TMPDIR})
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            continue
    if code not in (0, 130):
        raise RuntimeError(f"bench_scale: a launch failed with exit status {code}: {shlex.join(command)}")
    return code == 0


def _summed(launches: list[dict]) -> dict:
    summed = {
        key: sum(launch[key] for launch in launches)
        for key in (
            "wall_s",
            "driver_cpu_s",
            "trial_cpu_s",
            "daemon_cpu_s",
            "trial_processes",
            "suggest_s",
            "suggestions",
            "state_saves",
            "state_save_s",
        )
    }
    calls: dict[str, dict[str, float]] = {}
    for launch in launches:
        for role, counts in launch["mlflow"].items():
            for key, value in counts.items():
                held = calls.setdefault(role, {}).get(key, 0)
                calls[role][key] = max(held, value) if key == "most_rows" else held + value
    first = launches[0]["suggest_first_s"] if launches else []
    return summed | {
        "probe": min((launch.get("probe", 1) for launch in launches), default=PROBE),
        "mlflow": calls,
        "suggest_first_s": first,
        "suggest_last_s": launches[-1]["suggest_last_s"] if launches else [],
    }


# ---- the report -------------------------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    return f"{1000 * sum(values) / len(values):.1f}" if values else "-"


def _mb(value) -> str:
    return "in memory" if value is None else f"{value / 1e6:.1f}"


def _old_probe(record: dict) -> str:
    return "" if record.get("probe", 1) == PROBE else " \u2020"


def _old_probe_note(records: dict[Row, dict]) -> str:
    old = [f"{row.label}, N = {row.trials:,}, {row.arm}" for row, record in records.items() if _old_probe(record)]
    if not old:
        return ""
    return (
        f" \u2020 Measured by an earlier launch of the same command (kept with `--keep`) whose CPU probe counted "
        "Ray's dashboard and runtime-env agents as trial processes and missed a trial process that ended before "
        f"the row did: its trial-process CPU and count, and its daemons' CPU, are not comparable ({'; '.join(old)})."
    )


def _per_trial(record: dict, key: str) -> float:
    return record[key] / record["row"]["trials"]


def _calls_per_trial(record: dict, role: str) -> float:
    return record["mlflow"].get(role, {}).get("calls", 0) / record["row"]["trials"]


def main_rows(records: dict[Row, dict]) -> list[list]:
    rows = []
    for row, record in records.items():
        stock = records.get(Row(row.scenario, "stock", row.trials, row.nodes))
        ratio = f"{_per_trial(record, 'wall_s') / _per_trial(stock, 'wall_s'):.2f}x" if stock else "-"
        rows.append(
            [
                row.label,
                f"{row.trials:,}",
                row.arm + (" (resumed)" if record["launches"] > 1 else ""),
                f"{record['wall_s']:.0f}",
                f"{_per_trial(record, 'wall_s'):.3f}",
                ratio,
                f"{record['steady_s']:.3f}",
                f"{_per_trial(record, 'driver_cpu_s'):.3f}",
                f"{_per_trial(record, 'trial_cpu_s'):.3f}" + _old_probe(record),
                f"{_per_trial(record, 'daemon_cpu_s'):.3f}" + _old_probe(record),
                f"{_calls_per_trial(record, 'driver'):.1f} + {_calls_per_trial(record, 'trial'):.1f}",
                f"{_ms(record['suggest_first_s'])} / {_ms(record['suggest_last_s'])}",
                f"{record['tune_bytes'] / 1e6:.1f}",
                f"{_mb(record['mlflow_bytes'])}",
                _mb(record["optuna_bytes"]),
            ]
        )
    return rows


def breakdown_rows(records: dict[Row, dict]) -> list[list]:
    """Where a trial's seconds go, per trial: what the probes timed of each part."""
    rows = []
    for row, record in records.items():
        driver, trial = record["mlflow"].get("driver", {}), record["mlflow"].get("trial", {})
        calls = ", ".join(
            f"{name} {count / row.trials:.1f}"
            for name, count in sorted(driver.items(), key=lambda item: -item[1])
            if name not in ("calls", "seconds", "most_rows") and count / row.trials >= 0.05
        )
        rows.append(
            [
                row.label,
                f"{row.trials:,}",
                row.arm,
                f"{1000 * _per_trial(record, 'wall_s'):.0f}",
                f"{1000 * driver.get('seconds', 0.0) / row.trials:.1f}",
                f"{1000 * trial.get('seconds', 0.0) / row.trials:.1f}",
                f"{1000 * record['suggest_s'] / row.trials:.1f}",
                f"{1000 * record['state_save_s'] / row.trials:.1f} ({record['state_saves']} saves)",
                f"{record['trial_processes']}" + _old_probe(record),
                f"{1000 * _per_trial(record, 'trial_cpu_s'):.0f}" + _old_probe(record),
                f"{driver.get('most_rows', 0)} / {trial.get('most_rows', 0)}",
                calls or "-",
            ]
        )
    return rows


def target_lines(records: dict[Row, dict]) -> list[str]:
    lines = []

    def wall(scenario: str, arm: str, trials: int) -> float | None:
        record = records.get(Row(scenario, arm, trials))
        return _per_trial(record, "wall_s") if record else None

    for scenario, trials in (("instant", 1000), ("real", 100)):
        ours, stock = wall(scenario, "hashtune", trials), wall(scenario, "stock", trials)
        if ours and stock:
            met = ours / stock <= TARGET_STOCK
            lines.append(
                f"{Row(scenario, 'hashtune', trials).label} at N = {trials:,}: hashtune {ours:.3f} s per trial, "
                f"{ours / stock:.2f}x the "
                f"stock stack's {stock:.3f} s (target <= {TARGET_STOCK}x): **{'met' if met else 'not met'}**"
            )
    small, large = wall("instant", "hashtune", 100), wall("instant", "hashtune", 10000)
    if small and large:
        lines.append(
            f"growth: hashtune's wall per instant trial at N = 10,000 is {large / small:.2f}x that at N = 100 "
            f"({large:.3f} against "
            f"{small:.3f} s; target <= {TARGET_FLAT}x): **{'met' if large / small <= TARGET_FLAT else 'not met'}**"
        )
    big = records.get(Row("instant", "hashtune", 10000))
    if big and "report_s" in big:
        for key, what in (
            ("report_s", "`python -m hashtune.report` of 10,000 runs"),
            ("resume_s", "`--resume` of the finished 10,000-trial sweep"),
        ):
            lines.append(
                f"{what}: {big[key]:.1f} s (target <= {TARGET_SECONDS:.0f} s): "
                f"**{'met' if big[key] <= TARGET_SECONDS else 'not met'}**"
            )
    return lines


def write_scale_report(
    args: argparse.Namespace,
    records: dict[Row, dict],
    planned: list[Row],
    unfinished: dict[Row, list[float]] | None = None,
) -> None:
    header = [
        "trials",
        "N",
        "stack",
        "wall s",
        "wall s / trial",
        "vs stock",
        "steady s / trial",
        "driver CPU s / trial",
        "trial-process CPU s / trial",
        "Ray daemons CPU s / trial",
        "MLflow calls / trial (driver + trials)",
        "Optuna suggest ms (first / last 20)",
        "Tune state MB",
        "MLflow store MB",
        "Optuna store MB",
    ]
    post = [
        [
            f"{row.trials:,}",
            f"{record['resume_s']:.1f}",
            f"{record['report_s']:.1f}",
            f"{1000 * record['lookup_s']:.0f}",
        ]
        for row, record in records.items()
        if "resume_s" in record
    ]
    partial = (
        ""
        if len(records) == len(planned)
        else f"**Partial: {len(records)} of {len(planned)} rows done; the same command continues.** "
    )
    growth = [
        f"{row.arm} {', '.join(f'{value:.3f}' for value in record['spacing_per_1000'])}"
        for row, record in records.items()
        if record.get("spacing_per_1000")
    ]
    if growth:
        partial += (
            "How a trial's cost grows with N: seconds between consecutive trials, per 1,000 trials in end order "
            f"(pauses between launches left out): {'; '.join(growth)}. "
        )
    for row, spacing in (unfinished or {}).items():
        partial += (
            f"Unfinished: {row.label}, N = {row.trials:,}, {row.arm}, stopped after {500 * len(spacing):,}+ trials; "
            f"seconds between trials per 500 trials: {', '.join(f'{value:.3f}' for value in spacing)}. "
        )
    if args.stock_max_trials is not None:
        partial += (
            f"The stock stack runs the rows up to N = {args.stock_max_trials:,} (`--stock-max-trials`): no target "
            "compares it beyond. "
        )
    notes = (
        f"{partial}Each row is one sweep in its own process, rows one after the other in one benchmark run on this "
        "machine; "
        "TPE (seed 0) + ASHA (grace 1, reduction 3) over three log-uniform parameters, 2 trials at a time (8 on the "
        "8-node cluster), "
        "1 CPU per trial. 'wall s' runs from Ray's start to its shutdown (Ray's start-up and shutdown, about 8 s, are "
        "in every row); "
        "'steady s / trial' is the spacing of the trials' MLflow end times between the 10th and the 90th percentile, "
        "the cost of one "
        "more trial. CPU: the driver process, the Ray worker processes (those that ran trials, and any Ray started "
        "meanwhile; one that ended before the row did is counted from a sampler's last reading of it, every 0.5 s), "
        "and Ray's "
        "daemons (raylet, GCS, dashboard, agents). MLflow calls: every outermost call of MLflow's SQLAlchemy "
        "store, in the driver and in the trial processes."
        + _old_probe_note(records)
        + "\n\n"
        + "Targets:\n\n"
        + "\n".join(f"- {line}" for line in target_lines(records) or ["(no row pair finished yet)"])
        + "\n\nWhere a trial's time goes (per trial; MLflow and Optuna are wall time in the process that calls them, "
        "the rest of "
        "the driver's time is Tune's event loop and waiting for trial processes):\n\n"
        + markdown_table(
            [
                "trials",
                "N",
                "stack",
                "wall ms / trial",
                "MLflow in the driver ms",
                "MLflow in the trial ms",
                "Optuna suggest ms",
                "Tune state saves ms",
                "trial processes (ran trials)",
                "trial-process CPU ms",
                "most runs one search read (driver / trials)",
                "driver MLflow calls / trial",
            ],
            breakdown_rows(records),
        )
        + (
            "\n\nOn the finished hashtune stores (local instant rows): `python -m hashtune.sweep --resume` of the "
            "finished sweep "
            "(Tune's state read back, nothing launched, the study rebuilt), `python -m hashtune.report`, and the "
            "export's best-run "
            "lookup (`best_finished_run` on an open client), each timed:\n\n"
            + markdown_table(["N", "--resume s", "hashtune.report s", "best-run lookup ms"], post)
            if post
            else ""
        )
    )
    command = "python -m benchmarks.bench_scale" + "".join(
        f" --{flag} {' '.join(map(str, values))}"
        for flag, values in (
            ("trials", args.trials),
            ("real-trials", [args.real_trials]),
            ("cluster-trials", [args.cluster_trials]),
            ("stock-max-trials", [args.stock_max_trials] if args.stock_max_trials is not None else []),
        )
        if values
    )
    write_report(
        args.out,
        "What a trial costs the platform: hashtune against the stock Ray Tune + Optuna + MLflow stack",
        command,
        markdown_table(header, main_rows(records)),
        notes,
    )


def planned_rows(args: argparse.Namespace) -> list[Row]:
    """Shortest first, so a stopped benchmark has its cheap rows: each size's hashtune row, then the stock one."""

    def arms(trials: int) -> tuple[str, ...]:
        return ARMS if args.stock_max_trials is None or trials <= args.stock_max_trials else ("hashtune",)

    rows = [Row("instant", arm, n) for n in sorted(args.trials) if n < 10000 for arm in arms(n)]
    rows += [Row("real", arm, args.real_trials) for arm in arms(args.real_trials) if args.real_trials]
    rows += [
        Row("instant", arm, args.cluster_trials, nodes=8) for arm in arms(args.cluster_trials) if args.cluster_trials
    ]
    return rows + [Row("instant", arm, n) for n in sorted(args.trials) if n >= 10000 for arm in arms(n)]


def run_benchmark(args: argparse.Namespace, keep: Path) -> None:
    planned, records = planned_rows(args), {}
    cluster = None
    try:
        for row in planned:
            address = None
            if row.nodes > 1:
                cluster = cluster or _start_cluster(row.nodes)
                address = cluster.address
            elif cluster is not None:  # a local row after the cluster's: its launch would join the cluster instead
                _stop_cluster(cluster)
                cluster = None
            records[row] = run_row(row, keep / row.slug, address)
            print(
                f"bench_scale: {row.label}, N={row.trials}, {row.arm}: {_per_trial(records[row], 'wall_s'):.3f} s per "
                "trial",
                flush=True,
            )
            write_scale_report(args, records, planned)
    finally:
        if cluster is not None:
            _stop_cluster(cluster)


def _start_cluster(nodes: int):
    """A simulated cluster on this machine: `nodes` Ray nodes of 1 CPU each (loopback, no dashboard)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = RAY_TMPDIR
    # the nodes listen on 127.0.0.1 only; without this, Ray resolves a loopback address to the host's outward IP
    # (`resolve_ip_for_localhost`), where no node listens: the launches (children) inherit it
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"}
    )
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster


def report_kept(args: argparse.Namespace, keep: Path) -> None:
    """`--report-only`: the report of the rows finished in `keep` (store sizes read from its folders now), and the
    per-trial spacing of each unfinished row so far; runs nothing."""
    planned, records, unfinished = planned_rows(args), {}, {}
    for row in planned:
        folder = keep / row.slug
        if (folder / "record.json").is_file():
            records[row] = json.loads((folder / "record.json").read_text()) | _store_figures(row, folder)
        elif (folder / "mlflow.db").is_file():
            unfinished[row] = _spacing_by_block(row, folder)
    if not records:
        raise SystemExit(f"bench_scale: no row has finished in {keep}; run without --report-only")
    write_scale_report(args, records, planned, unfinished)


def _spacing_by_block(row: Row, folder: Path, block: int = 500) -> list[float]:
    """Seconds between consecutive trials' MLflow end times, averaged over each `block` of trials (in end order)."""
    return _block_means(
        _spacings(sorted(run.info.end_time for run in _trial_runs(row, folder) if run.info.end_time)), block
    )


def _block_means(values: list[float], block: int) -> list[float]:
    return [sum(values[start : start + block]) / block for start in range(0, len(values) - block + 1, block)]


def _stop_cluster(cluster) -> None:
    """Shut the simulated cluster down (its address file goes with it) and let Ray resolve addresses as before."""
    cluster.shutdown()
    os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, nargs="*", default=[100, 1000, 10000], help="instant-trial sweep sizes (local)"
    )
    parser.add_argument("--real-trials", type=int, default=100, help="real tiny trials per stack (0: none)")
    parser.add_argument(
        "--cluster-trials", type=int, default=1000, help="instant trials on the simulated 8-node cluster (0: none)"
    )
    parser.add_argument(
        "--stock-max-trials",
        type=int,
        help="run the stock stack's rows only up to this N (no target compares the "
        "stock stack beyond N = 1,000; the 10,000-trial stock row alone takes about 50 minutes here)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep every row's stores here and continue what is there (default: a temporary folder)",
    )
    parser.add_argument("--out", default="results/bench_scale.md")
    parser.add_argument("--report-only", action="store_true", help="write the report of the rows finished in --keep")
    parser.add_argument("--launch", help=argparse.SUPPRESS)  # internal: one launch of a row, in a child process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch:
        row = Row(**json.loads(args.launch))
        measured = _launch(row, args.folder, args.address)
        with (args.folder / "launches.jsonl").open("a") as launches:
            launches.write(json.dumps(measured) + "\n")
        if not measured["complete"]:
            raise SystemExit(130)
        return
    Path(RAY_TMPDIR).mkdir(exist_ok=True)
    try:
        if args.report_only:
            if not args.keep:
                raise SystemExit("bench_scale: --report-only reads the rows kept by --keep DIR")
            report_kept(args, args.keep.absolute())
        elif args.keep:
            run_benchmark(args, args.keep.absolute())
        else:
            with tempfile.TemporaryDirectory() as scratch:
                run_benchmark(args, Path(scratch))
    except KeyboardInterrupt:
        again = f"python -m benchmarks.bench_scale {shlex.join(sys.argv[1:] if argv is None else argv)}"
        print(
            "bench_scale: stopped; "
            + (
                f"finished rows are kept. Continue with: {again}"
                if args.keep
                else "nothing was kept (give --keep DIR to make a run that can be continued)"
            ),
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
