"""Does a multi-objective search reach configurations a grid over code lengths does not?

Run after both sweeps (`python -m hashtune.sweep --space pareto`, then `--space pareto_grid`), on the same
store: `python -m benchmarks.pareto_vs_grid` (writes results/pareto/vs_grid.md). The grid is the way people
choose a code length (the tuned model at each length, seeds replicated); the search spends the same number of
trials on code length, depth, width and K. For every grid length the mean of its seeds is one configuration.
A searched trial ran once, so its accuracy carries the seed-to-seed noise the grid measures (its SD at each
length). Two counts per grid configuration: trials that dominate it beyond that noise (accuracy above the grid's
mean by more than its SD, no more bits, no slower), and trials as good within the noise (accuracy at least the
mean less its SD) with fewer bits or a faster encoder.
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


def beyond_noise(trial: dict, grid: dict) -> bool:
    """`trial` more accurate than the grid configuration by more than its seed SD, with no more bits, no slower."""
    cheaper_or_equal = trial[BITS] <= grid[BITS] and trial[ENCODE] <= grid[ENCODE]
    return cheaper_or_equal and trial[ACCURACY] > grid[ACCURACY] + grid["sd"]


def within_noise_and_cheaper(trial: dict, grid: dict) -> bool:
    """`trial` no less accurate than the grid's mean less its SD, with fewer bits or a faster encoder (neither more)."""
    cheaper_or_equal = trial[BITS] <= grid[BITS] and trial[ENCODE] <= grid[ENCODE]
    cheaper = trial[BITS] < grid[BITS] or trial[ENCODE] < grid[ENCODE]
    return cheaper_or_equal and cheaper and trial[ACCURACY] >= grid[ACCURACY] - grid["sd"]


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
    trials = [{"name": run.name, **{key: run.metrics[key] for key in (ACCURACY, BITS, ENCODE)}} for run in searched]
    rows = []
    for row in grid:
        beaten_by = [trial for trial in trials if beyond_noise(trial, row)]
        matched_by = [trial for trial in trials if within_noise_and_cheaper(trial, row)]
        best = max(beaten_by or matched_by, key=lambda trial: trial[ACCURACY], default=None)
        rows.append(
            [
                row["name"],
                f"{row[ACCURACY]:.4f} ± {row['sd']:.4f}",
                f"{row[ENCODE]:.4f}",
                len(beaten_by),
                len(matched_by),
                f"{best['name']} ({best[ACCURACY]:.4f})" if best else "",
            ]
        )
    header = [
        "grid configuration",
        "val/best_mAP (mean ± SD)",
        "encode ms (median)",
        "searched trials dominating it beyond the SD",
        "as good within the SD and cheaper",
        "most accurate of them",
    ]
    beyond = sum(1 for row in rows if row[3])
    within = sum(1 for row in rows if row[4])
    notes = (
        f"{len(trials)} searched trials (one seed each) against {len(grid)} grid configurations (the grid's finished "
        "trials averaged per code length).\n\n"
        f"Measured: {beyond} of {len(grid)} grid configurations are dominated beyond their seed SD by a searched "
        f"trial; {within} of {len(grid)} have a searched trial as accurate within that SD with fewer bits or a faster "
        "encoder. A searched trial ran once: it names a configuration to replicate (a grid space with seeds) before "
        "calling it better; the encode times of both sweeps were measured the same way, two trials at a time."
    )
    command = "python -m benchmarks.pareto_vs_grid" + (" " + " ".join(argv) if argv else "")
    write_report(
        args.out, "The searched front against a grid over code lengths", command, markdown_table(header, rows), notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
