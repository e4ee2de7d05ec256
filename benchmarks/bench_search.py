"""Search efficiency on digits at 32 bits: Optuna TPE + ASHA against random search without stopping.

Run: `python -m benchmarks.bench_search` (writes results/bench_search.md). Both arms are real sweeps
(`hashtune.sweep_driver.run_sweep`) over the same space (`search_spaces/tune.yaml`, the same trial
budget and sampler seed), each into its own MLflow experiment of a private store. The table reads the
trials back from MLflow: the best trial by `val/mAP` among those that finished, that trial's
`test/mAP`, how many trials ASHA stopped, the CPU-seconds the trials' processes spent (`cost/cpu_seconds`,
all threads) and the sweep's wall time. Target: a best test/mAP >= 0.90 within the trial budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from benchmarks._table import markdown_table, write_report
from hashtune.config import load_config, to_flat_dict
from hashtune.sweep.space import load_space
from hashtune.tracking import TAG, find_runs

ARMS = {
    "TPE + ASHA": {"search": "tpe"},
    "random, no early stopping": {"search": "random", "scheduler": {"type": "none"}},
}


def run_arm(label: str, space, base, results_dir: Path) -> dict:
    """Run one sweep arm and read its trials back from MLflow."""
    from mlflow import MlflowClient

    from hashtune.sweep.driver import run_sweep

    name = "bench-" + label.split()[0].lower().strip(",")
    args = argparse.Namespace(
        name=name, space=space.name, resume="never", address=None, mlflow_uri=None, storage=None, max_concurrent=None,
        results_dir=results_dir,
    )
    start = time.perf_counter()
    summary = run_sweep(args, base, space)
    wall = time.perf_counter() - start
    client = MlflowClient(summary["mlflow_uri"])
    experiment = client.get_experiment_by_name(name)
    trials = [run for run in find_runs(client, experiment.experiment_id) if f"{TAG}trial_id" in run.data.tags]
    finished = [run for run in trials if run.data.tags.get(f"{TAG}status") == "finished"]
    best = max(finished, key=lambda run: run.data.metrics["val/mAP"])
    return {
        "trials": len(trials),
        "finished": len(finished),
        "stopped": sum(run.data.tags.get(f"{TAG}status") == "stopped_early" for run in trials),
        "best_val": best.data.metrics["val/mAP"],
        "best_test": best.data.metrics["test/mAP"],
        "best_params": {key: best.data.params[key] for key in space.params},
        "cpu_s": sum(run.data.metrics.get("cost/cpu_seconds", 0.0) for run in trials),
        "wall_s": wall,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tune", help="the searched space (default: search_spaces/tune.yaml)")
    parser.add_argument("--trials", type=int, default=24, help="trial budget of each arm")
    parser.add_argument("--extra", nargs="*", default=[], help="config overrides for every trial (tests shrink the model)")
    parser.add_argument("--fixed", nargs="*", default=[], help="space `fixed:` overrides, key=value (tests shorten epochs)")
    parser.add_argument("--keep", type=Path, help="keep the MLflow store and Ray results here (default: a temporary folder)")
    parser.add_argument("--out", default="results/bench_search.md")
    args = parser.parse_args(argv)
    base = load_config(overrides=args.extra)
    space = load_space(args.space, base)
    fixed = dict(space.fixed) | {key: to_flat_dict(load_config(overrides=[item]))[key] for item in args.fixed for key in [item.split("=", 1)[0]]}
    epochs = load_config(overrides=[*args.extra, *(f"{k}={v}" for k, v in fixed.items())]).train.epochs
    scheduler = dict(space.scheduler) | {"grace_period": min(space.scheduler.get("grace_period", 1), epochs)}
    rows, bests = [], []
    with tempfile.TemporaryDirectory() as scratch:
        results_dir = args.keep or Path(scratch)
        for label, change in ARMS.items():
            arm_space = dataclasses.replace(space, **({"num_samples": args.trials, "fixed": fixed, "scheduler": scheduler} | change))
            arm = run_arm(label, arm_space, base, results_dir)
            rows.append([
                label, arm["trials"], arm["finished"], arm["stopped"], f"{arm['best_val']:.3f}", f"{arm['best_test']:.3f}",
                f"{arm['cpu_s']:.0f}", f"{arm['wall_s']:.0f}",
            ])
            bests.append(f"- {label}: {', '.join(f'{k}={v}' for k, v in arm['best_params'].items())}")
    cpu = [float(row[6]) for row in rows]
    header = ["arm", "trials", "finished", "stopped by ASHA", "best val/mAP", "test/mAP of best", "CPU-seconds", "wall s"]
    extra = "".join(f" --{flag} {' '.join(values)}" for flag, values in (("extra", args.extra), ("fixed", args.fixed)) if values)
    notes = (
        f"Space `{space.name}` ({', '.join(space.params)}), fixed {fixed}, sampler seed {space.seeds[0]}, "
        f"{space.max_concurrent} concurrent trials of {space.cpus_per_trial:g} CPU. TPE + ASHA used "
        f"{cpu[0] / cpu[1]:.2f}x the CPU-seconds of random search. Target: best test/mAP >= 0.90 within {args.trials} trials.\n\n"
        "Best configurations:\n" + "\n".join(bests)
    )
    command = f"python -m benchmarks.bench_search --space {args.space} --trials {args.trials}{extra}"
    write_report(args.out, "Search efficiency on digits (32 bits)", command, markdown_table(header, rows), notes)


if __name__ == "__main__":
    main()
