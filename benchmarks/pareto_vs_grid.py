"""Does a multi-objective search reach configurations a grid over code lengths does not?

Run after both sweeps (`python -m hashtune.sweep --space pareto`, then `--space pareto_grid`), on the same
store: `python -m benchmarks.pareto_vs_grid` (writes results/pareto/vs_grid.md). The grid is the way people
choose a code length (the tuned model at each length, seeds replicated); the search spends the same number of
trials on code length, depth, width and K. For every grid length the mean of its seeds is one configuration.
A configuration dominates another when it is at least as good on every objective and better on one; a gap in
accuracy smaller than the grid's own seed-to-seed SD at that length is called inconclusive, not a win.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks._table import markdown_table, write_report
from hashtune.paths import RESULTS_DIR
from hashtune.report.runs import load_study
from hashtune.tracking import default_tracking_uri

ACCURACY, BITS, ENCODE = "val/best_mAP", "code/bits", "cost/encode_ms"


def grid_configurations(runs) -> list[dict]:
    """One row per code length: seed means (and the accuracy's SD) of the grid's finished trials."""
    by_bits: dict[int, list] = {}
    for run in runs:
        by_bits.setdefault(run.bits, []).append(run)
    rows = []
    for bits, group in sorted(by_bits.items()):
        accuracy = [run.metrics[ACCURACY] for run in group]
        rows.append(
            {
                "name": f"grid {bits} bits (n={len(group)})",
                ACCURACY: statistics.mean(accuracy),
                "sd": statistics.stdev(accuracy) if len(accuracy) > 1 else float("nan"),
                BITS: float(bits),
                ENCODE: statistics.median(run.metrics[ENCODE] for run in group),
            }
        )
    return rows


def dominates(a: dict, b: dict, margin: float) -> bool:
    """`a` at least as good as `b` everywhere (accuracy by more than `margin` where it is better) and better once."""
    no_worse = a[ACCURACY] >= b[ACCURACY] - 1e-12 and a[BITS] <= b[BITS] and a[ENCODE] <= b[ENCODE]
    better = a[ACCURACY] > b[ACCURACY] + margin or a[BITS] < b[BITS] or a[ENCODE] < b[ENCODE]
    return no_worse and better


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-uri", default=default_tracking_uri(RESULTS_DIR))
    parser.add_argument("--search", default="pareto")
    parser.add_argument("--grid", default="pareto_grid")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "pareto" / "vs_grid.md")
    args = parser.parse_args(argv)
    client = MlflowClient(args.mlflow_uri)
    searched = [run for run in load_study(client, args.search).finished if ENCODE in run.metrics]
    grid = grid_configurations([run for run in load_study(client, args.grid).finished if ENCODE in run.metrics])
    margin = max((row["sd"] for row in grid if row["sd"] == row["sd"]), default=0.0)
    trials = [{"name": run.name, **{key: run.metrics[key] for key in (ACCURACY, BITS, ENCODE)}} for run in searched]
    rows = []
    for row in grid:
        beaten_by = [trial["name"] for trial in trials if dominates(trial, row, margin)]
        beats = [trial["name"] for trial in trials if dominates(row, trial, margin)]
        rows.append(
            [
                row["name"],
                f"{row[ACCURACY]:.4f} ± {row['sd']:.4f}",
                f"{row[ENCODE]:.4f}",
                len(beaten_by),
                len(beats),
                beaten_by[0] if beaten_by else "",
            ]
        )
    header = [
        "grid configuration",
        "val/best_mAP (mean ± SD)",
        "encode ms",
        "searched trials dominating it",
        "searched trials it dominates",
        "e.g.",
    ]
    dominated = sum(1 for row in rows if row[3])
    notes = (
        f"{len(trials)} searched trials against {len(grid)} grid configurations "
        f"({sum(1 for _ in grid)} code lengths, seeds averaged); dominance in accuracy needs a gap over {margin:.4f}, "
        "the largest seed-to-seed SD of the grid (smaller gaps are inconclusive).\n\n"
        f"Measured: {dominated} of {len(grid)} grid configurations are dominated by a searched trial "
        "(at least as accurate beyond the margin, no more bits, no slower to encode, better in one). "
        "The searched trials ran once each: a dominating trial is a configuration worth replicating, "
        "not yet a settled win."
    )
    command = "python -m benchmarks.pareto_vs_grid" + (" " + " ".join(argv) if argv else "")
    write_report(
        args.out, "The searched front against a grid over code lengths", command, markdown_table(header, rows), notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
