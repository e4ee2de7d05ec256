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
from hashtune.distributed import fit_distributed, init_ray
from hashtune.trainer import fit


def timed_run(function, **kwargs) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        metrics = function(run_dir=run_dir, **kwargs)
        return metrics, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--extra", nargs="*", default=[], help="config overrides (tests shrink the model)")
    parser.add_argument("--out", default="results/bench_ray_overhead.md")
    args = parser.parse_args(argv)
    config = load_config(overrides=[f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", "train.device=cpu", *args.extra])
    torch.set_num_threads(2)
    plain, plain_wall = timed_run(fit, config=config)
    rows = [["plain loop", 0, 2, f"{plain['throughput/images_per_s']:.0f}", "1.000", f"{plain_wall:.1f}", "-", f"{plain['test/mAP']:.3f}"]]
    started = init_ray(num_cpus=2)
    try:
        for workers, cpus in ((1, 2.0), (2, 1.0)):
            metrics, wall = timed_run(fit_distributed, config=config, workers=workers, cpus_per_worker=cpus)
            ratio = metrics["throughput/images_per_s"] / plain["throughput/images_per_s"]
            rows.append([
                "Ray Train", workers, int(cpus), f"{metrics['throughput/images_per_s']:.0f}", f"{ratio:.3f}", f"{wall:.1f}",
                f"{wall - plain_wall:.1f}", f"{metrics['test/mAP']:.3f}",
            ])
    finally:
        if started:
            import ray

            ray.shutdown()
    header = ["path", "workers", "CPUs/worker", "train images/s", "ratio to plain", "wall s", "extra wall s (start-up)", "test/mAP"]
    extra = f" --extra {' '.join(args.extra)}" if args.extra else ""
    notes = (
        f"{args.epochs} epochs of the digits default (500 training images, 32 bits), one evaluation at the end. "
        "Target: Ray Train with 1 worker within 5% of the plain loop's throughput."
    )
    write_report(args.out, "Ray Train overhead on digits (CPU)", f"python -m benchmarks.bench_ray_overhead --epochs {args.epochs}{extra}", markdown_table(header, rows), notes)


if __name__ == "__main__":
    main()
