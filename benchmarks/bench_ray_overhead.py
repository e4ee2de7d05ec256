"""Ray Train overhead: the same digits steps through the plain loop and through Ray Train, side by side.

Run: `python -m benchmarks.bench_ray_overhead` (writes results/bench_ray_overhead.md). Throughput is
training images per second of training time (start-up and evaluation excluded); start-up is reported
separately as the extra wall time over the plain loop. The 1-worker Ray run gets the same 2 CPUs
(torch threads) as the plain loop; the 2-worker run gets 1 CPU each.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks._table import markdown_table, write_report
from hashtune.config import load_config
from hashtune.train.distributed import fit_distributed
from hashtune.train.local_ray import init_ray, shutdown_ray
from hashtune.train.trainer import fit


def timed_run(function, **kwargs) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        metrics = function(run_dir=run_dir, **kwargs)
        return metrics, time.perf_counter() - start


def _row(
    label: str, workers: int, cpus: int, metrics: dict, wall: float, reference: dict, reference_wall: float
) -> list:
    ratio = metrics["throughput/images_per_s"] / reference["throughput/images_per_s"]
    extra = "-" if workers == 0 else f"{wall - reference_wall:.1f}"
    return [
        label,
        workers,
        cpus,
        f"{metrics['throughput/images_per_s']:.0f}",
        f"{ratio:.3f}",
        f"{wall:.1f}",
        extra,
        f"{metrics['test/mAP']:.3f}",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--extra", nargs="*", default=[], help="config overrides (tests shrink the model)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2, 1], choices=[2, 1], help="torch thread counts to compare at"
    )
    parser.add_argument("--out", default="results/bench_ray_overhead.md")
    args = parser.parse_args(argv)
    config = load_config(
        overrides=[f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", "train.device=cpu", *args.extra]
    )
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        plain, plain_wall = timed_run(fit, config=config)
        rows.append(
            _row(
                f"plain loop ({threads} thread{'s' * (threads > 1)})", 0, threads, plain, plain_wall, plain, plain_wall
            )
        )
        started = init_ray(num_cpus=2)
        try:
            if threads == 2:  # the same loop while Ray's daemons (GCS, raylet, dashboard) run beside it, idle
                idle, idle_wall = timed_run(fit, config=config)
                rows.append(_row("plain loop, Ray idle beside it", 0, threads, idle, idle_wall, plain, plain_wall))
            layouts = ((1, 2), (2, 1)) if threads == 2 else ((1, 1),)
            for workers, cpus in layouts:
                metrics, wall = timed_run(fit_distributed, config=config, workers=workers, cpus_per_worker=float(cpus))
                rows.append(_row("Ray Train", workers, cpus, metrics, wall, plain, plain_wall))
        finally:
            if started:
                shutdown_ray()
    torch.set_num_threads(2)
    header = [
        "path",
        "workers",
        "CPUs/worker",
        "train images/s",
        "ratio to plain (same threads)",
        "wall s",
        "extra wall s (start-up)",
        "test/mAP",
    ]
    extra = f" --extra {' '.join(args.extra)}" if args.extra else ""
    extra += f" --threads {' '.join(map(str, args.threads))}" if args.threads != [2, 1] else ""
    notes = (
        f"{args.epochs} epochs of the digits default (500 training images, 32 bits), one evaluation at the end; "
        "throughput counts training time only. Ratios are to the plain loop with the same torch threads, measured "
        "in the same run. 'Ray idle beside it' is the plain loop while the local Ray started for the Ray rows runs "
        "idle: the cost of Ray's daemons sharing the 2 cores, not of the wrapper. "
        "Target: Ray Train with 1 worker within 5% of the plain loop's throughput."
    )
    write_report(
        args.out,
        "Ray Train overhead on digits (CPU)",
        f"python -m benchmarks.bench_ray_overhead --epochs {args.epochs}{extra}",
        markdown_table(header, rows),
        notes,
    )


if __name__ == "__main__":
    main()
