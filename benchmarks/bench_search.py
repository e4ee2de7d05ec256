"""Search efficiency on digits at 32 bits: three searchers, each run with several sampler seeds.

Run: `python -m benchmarks.bench_search` (writes results/bench_search.md; about 3.5 hours on 2 cores).
Every arm is a real sweep (`hashtune.sweep.driver.run_sweep`) with the same trial budget, once per seed,
into its own MLflow experiment of a private store:

* TPE + ASHA: `search_spaces/tune.yaml` (independent TPE, ASHA at 50 and 150 epochs);
* random search without early stopping: the same space, every trial to 300 epochs;
* multivariate TPE over a conditional space + ASHA: `search_spaces/tune_conditional.yaml` (Optuna's
  `multivariate=True, group=True`; `model.dual_stream` searched, `model.k_groups` only when it is on).

A seed sets the sampler's seed and the trials' split and training seed, so arms are paired by seed
(the same seed gives the same data split in every arm). Per run the table reads back from MLflow the
best trial by `val/best_mAP` among those that finished, that trial's `test/mAP`, and the CPU-seconds
all its trials spent (`cost/cpu_seconds`); per arm it gives the mean and the spread (min-max) over
seeds. Target: an arm whose mean best test mAP is >= 0.94 within 24 trials at <= 0.5x random search's
mean CPU-seconds.

With `--keep DIR` the benchmark can be stopped and run again with the same arguments: runs that finished
are read back from DIR's MLflow store, an interrupted one is resumed (`--resume auto`: no trial trains
twice); its wall seconds are then those of the launch that finished it (marked "resumed"). Stopped (Ctrl-C or
SIGTERM), it says in one line the command that continues it: its own, not `hashtune.sweep --resume`, which would
continue one arm outside the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._table import markdown_table, write_report
from hashtune.config import load_config, parse_overrides
from hashtune.report.stats import claim_verdict
from hashtune.sweep.space import load_space
from hashtune.sweep.space_settings import Scheduler
from hashtune.tracking import TAG, default_tracking_uri, find_runs

SELECTION = "val/best_mAP"
RANDOM = "random, no early stopping"
ARMS = {  # label -> (space, changes to it)
    "TPE + ASHA": ("tune", {}),
    RANDOM: ("tune", {"search": "random", "scheduler": Scheduler(), "sampler": None}),
    "multivariate TPE, conditional space + ASHA": ("tune_conditional", {}),
}
TARGET_MAP, TARGET_COST = 0.94, 0.5
DELTA = 0.02  # mAP differences within ±DELTA count as equivalent (the studies' margin)
WALL, RESUMED = (
    "bench/wall_s",
    "bench/resumed",
)  # on a run's parent once it finished: its launch's wall seconds; resumed?


def run_arm(
    name: str, space, base, results_dir: Path, resume: str = "never", train: bool = True, resume_line: str | None = None
) -> dict | None:
    """Run one sweep, or continue it (`resume` as the sweep's `--resume`), and read its trials back from MLflow.

    A sweep that already finished in `results_dir` (its parent run holds `bench/wall_s`) is only read back;
    with `train=False` one that has not finished gives None. `resume_line`: what an interruption says.
    """
    from mlflow import MlflowClient

    from hashtune.sweep.driver import run_sweep
    from hashtune.sweep.options import SweepOptions

    client = MlflowClient(default_tracking_uri(results_dir))
    parent = _sweep_parent(client, name)
    if parent is None or WALL not in parent.data.metrics:
        if not train:
            return None
        options = SweepOptions(space.name, name=name, resume=resume, results_dir=Path(results_dir))
        start = time.perf_counter()
        parent_run_id = run_sweep(options, base, space, resume_line=resume_line)["parent_run_id"]
        client.log_metric(parent_run_id, WALL, time.perf_counter() - start)
        client.set_tag(parent_run_id, RESUMED, str(parent is not None))
        parent = client.get_run(parent_run_id)
    trials = [run for run in find_runs(client, parent.info.experiment_id) if f"{TAG}trial_id" in run.data.tags]
    finished = [run for run in trials if run.data.tags.get(f"{TAG}status") == "finished"]
    best = max(finished, key=lambda run: run.data.metrics[SELECTION])
    return {
        "trials": len(trials),
        "finished": len(finished),
        "stopped": sum(run.data.tags.get(f"{TAG}status") == "stopped_early" for run in trials),
        "best_val": best.data.metrics[SELECTION],
        "best_test": best.data.metrics["test/mAP"],
        "best_params": {key: _sampled(best.data.params, key, domain) for key, domain in space.params.items()},
        "cpu_s": sum(run.data.metrics.get("cost/cpu_seconds", 0.0) for run in trials),
        "wall_s": parent.data.metrics[WALL],
        "resumed": parent.data.tags.get(RESUMED) == "True",
    }


def _sampled(params: dict[str, str], key: str, domain) -> str:
    """The run's value of a searched key, or "-" where its `when:` did not hold (the key kept its default,
    unsearched)."""
    active = domain.when is None or all(params.get(other) == str(value) for other, value in domain.when.items())
    return params[key] if active else "-"


def _sweep_parent(client, name: str):
    experiment = client.get_experiment_by_name(name)
    runs = find_runs(client, experiment.experiment_id, f"tags.`{TAG}role` = 'sweep'") if experiment else []
    return runs[0] if runs else None


def arm_space(label: str, base, trials: int, fixed_overrides: list[str], seed: int):
    """The arm's space with the benchmark's trial budget, fixed overrides (tests shorten epochs) and seed."""
    name, changes = ARMS[label]
    space = load_space(name, base)
    fixed = dict(space.fixed) | parse_overrides(fixed_overrides)
    epochs = base.replace(fixed).train.epochs
    scheduler = changes.get("scheduler", space.scheduler)
    if scheduler.asha:
        scheduler = dataclasses.replace(scheduler, grace_period=min(scheduler.grace_period or 1, epochs))
    return dataclasses.replace(
        space, **(changes | {"num_samples": trials, "fixed": fixed, "scheduler": scheduler, "seeds": (seed,)})
    )


def _spread(values: list[float], digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary_rows(runs: dict[str, list[dict]]) -> tuple[list[list], list[str]]:
    """One row per arm (mean and min-max over seeds) and the target's verdict per arm."""
    random_cpu = np.mean([run["cpu_s"] for run in runs[RANDOM]]) if RANDOM in runs else float("nan")
    rows, verdicts = [], []
    for label, per_seed in runs.items():
        tests, cpus = [run["best_test"] for run in per_seed], [run["cpu_s"] for run in per_seed]
        ratio = np.mean(cpus) / random_cpu
        rows.append(
            [
                label,
                len(per_seed),
                f"{np.mean([r['finished'] for r in per_seed]):.1f}",
                f"{np.mean([r['stopped'] for r in per_seed]):.1f}",
                _spread([run["best_val"] for run in per_seed], 3),
                _spread(tests, 3),
                _spread(cpus, 0),
                f"{ratio:.2f}x",
            ]
        )
        met = np.mean(tests) >= TARGET_MAP and ratio <= TARGET_COST
        verdicts.append(
            f"{label}: mean best test mAP {np.mean(tests):.3f} at {ratio:.2f}x random's CPU-seconds: target "
            f"{'met' if met else 'not met'}"
        )
    return rows, verdicts


def paired_with_random(runs: dict[str, list[dict]], delta: float = DELTA) -> list[str]:
    """Each searcher against random search, paired by seed: what the seeds say about its best test mAP, and its cost.

    The verdict is the studies' (`claim_verdict`, claim: the searcher's best test mAP is higher): `holds`,
    `reversed`, `equivalent` within ±delta, or `inconclusive`, with the difference 80% power would detect.
    """
    reference = {run["seed"]: run for run in runs.get(RANDOM, [])}
    lines = []
    for label, per_seed in runs.items():
        paired = [(run, reference[run["seed"]]) for run in per_seed if run["seed"] in reference]
        if label == RANDOM or not paired:
            continue
        verdict = claim_verdict([run["best_test"] - other["best_test"] for run, other in paired], delta=delta)
        ratios = [run["cpu_s"] / other["cpu_s"] for run, other in paired]
        ci = verdict.difference
        interval = "" if np.isnan(ci.half_width) else f", 95% CI [{ci.low:+.3f}, {ci.high:+.3f}]"
        power = (
            ""
            if np.isnan(verdict.mde)
            else (
                f"; {verdict.n} seeds detect a difference of {verdict.mde:.3f} with 80% power"
                + (f", a ±{delta} interval needs {verdict.seeds_for_delta} seeds" if verdict.seeds_for_delta else "")
            )
        )
        lines.append(
            f"{label} - random, paired over seeds {[run['seed'] for run, _ in paired]}: best test mAP {ci.mean:+.3f}"
            f"{interval}: **{verdict.verdict}**{power}; CPU-seconds {np.mean(ratios):.2f}x random's "
            f"({min(ratios):.2f}-{max(ratios):.2f}x per seed)"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trial budget of each run")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler (and split/training) seeds per arm"
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument(
        "--extra", nargs="*", default=[], help="config overrides for every trial (tests shrink the model)"
    )
    parser.add_argument(
        "--fixed", nargs="*", default=[], help="space `fixed:` overrides, key=value (tests shorten epochs)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the MLflow store and Ray results here, and continue what is there (default: a temporary folder)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="with --keep: write the report of the seeds finished there, train nothing",
    )
    parser.add_argument("--out", default="results/bench_search.md")
    args = parser.parse_args(argv)
    if args.report_only and not args.keep:
        parser.error("--report-only reads a kept store: give --keep DIR")
    from hashtune.sweep.driver import SweepInterrupted

    args.resume_line = resume_line(args.keep, sys.argv[1:] if argv is None else argv)
    try:
        run_benchmark(args)
    except (
        SweepInterrupted
    ) as stop:  # Ctrl-C or SIGTERM: what finished is kept (with --keep); the same command continues
        print(f"bench_search: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


def resume_line(keep: Path | None, argv: list[str]) -> str:
    """What an interrupted arm says: the benchmark's own command continues it (its store is kept), or nothing does."""
    if keep is None:
        return (
            "the benchmark kept nothing (its store was temporary): give --keep DIR to make a run that can be continued"
        )
    return f"nothing finished is lost. Continue it with: python -m benchmarks.bench_search {shlex.join(argv)}"


def run_benchmark(args: argparse.Namespace) -> None:
    """Every arm at every seed (seeds outermost), the report after each seed."""
    base = load_config(overrides=args.extra)
    runs: dict[str, list[dict]] = {label: [] for label in args.arms}
    with tempfile.TemporaryDirectory() as scratch:
        results_dir = args.keep or Path(scratch)
        for seed in args.seeds:  # seeds outermost: after each seed the report holds every arm at the seeds done so far
            done = {}
            for label in args.arms:
                space = arm_space(label, base, args.trials, args.fixed, seed)
                slug = "-".join(label.replace(",", "").replace("+", "").split()[:2]).lower()
                run = run_arm(
                    f"bench-{slug}-seed{seed}",
                    space,
                    base,
                    results_dir,
                    resume="auto" if args.keep else "never",
                    train=not args.report_only,
                    resume_line=args.resume_line,
                )
                if run is not None:
                    print(
                        f"bench_search: {label}, seed {seed}: best test/mAP {run['best_test']:.3f}, {run['cpu_s']:.0f} "
                        "CPU-s",
                        flush=True,
                    )
                    done[label] = run | {"seed": seed}
            if len(done) < len(args.arms):
                break  # --report-only: this seed is not finished in every arm
            for label, run in done.items():
                runs[label].append(run)
            write_bench_report(args, runs)
    if not any(runs.values()):
        raise SystemExit(f"bench_search: no seed has finished in every arm under {args.keep}")


def write_bench_report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    """The report for the seeds every arm has finished (all of them once the benchmark is done)."""
    done = [run["seed"] for run in next(iter(runs.values()))]
    rows, verdicts = summary_rows(runs)
    header = [
        "arm",
        "seeds",
        "finished (mean)",
        "stopped by ASHA (mean)",
        "best val/best_mAP",
        "test/mAP of best",
        "CPU-seconds",
        "CPU vs random",
    ]
    per_seed = [
        [
            label,
            run["seed"],
            f"{run['best_test']:.3f}",
            f"{run['cpu_s']:.0f}",
            f"{run['wall_s']:.0f}" + (" (resumed)" if run["resumed"] else ""),
            ", ".join(f"{k.split('.')[-1]}={v}" for k, v in run["best_params"].items()),
        ]
        for label, arm in runs.items()
        for run in arm
    ]
    progress = (
        ""
        if done == args.seeds
        else f"**Partial: seeds {done} of {args.seeds} done; the benchmark continues with --keep.** "
    )
    notes = (
        f"{progress}{args.trials} trials per run, seeds {args.seeds} (sampler, split and training seed), 2 concurrent "
        "trials of 1 CPU; "
        "cells are the mean (min-max) over seeds. CPU-seconds are every trial process's own CPU time, summed over the "
        "run: "
        f"the fair cost measure (wall time depends on what else ran). Target: mean best test mAP >= {TARGET_MAP} at <= "
        f"{TARGET_COST}x random search's CPU-seconds.\n\n"
        + "\n".join(f"- {v}" for v in verdicts)
        + "\n\nEach searcher against random search, paired by seed (same split and training seed; verdicts as in the "
        "studies: "
        f"holds / reversed / equivalent within ±{DELTA} / inconclusive):\n\n"
        + "\n".join(f"- {line}" for line in paired_with_random(runs))
        + "\n\nPer run:\n\n"
        + markdown_table(["arm", "seed", "test/mAP of best", "CPU-seconds", "wall s", "best configuration"], per_seed)
    )
    extra = "".join(
        f" --{flag} {' '.join(map(str, values))}"
        for flag, values in (
            ("trials", [args.trials]),
            ("seeds", args.seeds),
            ("extra", args.extra),
            ("fixed", args.fixed),
        )
        if values
    )
    write_report(
        args.out,
        "Search efficiency on digits (32 bits)",
        f"python -m benchmarks.bench_search{extra}",
        markdown_table(header, rows),
        notes,
    )


if __name__ == "__main__":
    main()
