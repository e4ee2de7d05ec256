"""The study's figures (matplotlib, PNG): importance bars, sensitivity curves, search progress (PR curves:
`train.outputs`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hashtune.metric_names import TEST_MAP
from hashtune.paths import atomic_file
from hashtune.report.runs import TrialRun
from hashtune.report.sensitivity import BinnedCurve
from hashtune.report.tables import ClaimRow

__all__ = ["plot_importance", "plot_sensitivity", "plot_search_progress", "plot_forest"]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")
    plt.close(figure)
    return path


def plot_importance(importances: dict[str, dict[str, float]], path: Path) -> Path:
    """One horizontal bar chart per evaluator, parameters in the first evaluator's order."""
    order = list(next(iter(importances.values())))[::-1]
    figure, axes = plt.subplots(
        1, len(importances), figsize=(4.5 * len(importances), 0.45 * len(order) + 1.5), squeeze=False
    )
    for axis, (name, values) in zip(axes[0], importances.items()):
        axis.barh(order, [values.get(param, 0.0) for param in order])
        axis.set_title(name)
        axis.set_xlabel("importance (normalised)")
    return _save(figure, path)


def plot_sensitivity(curves: list[BinnedCurve], param: str, path: Path) -> Path:
    """test/mAP of every finished run against `param`, one colour per bits, with binned means and 95% CIs."""
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for curve in (c for c in curves if c.param == param):
        points = axis.scatter(curve.x, curve.y, s=14, alpha=0.5, label=f"{curve.bits} bits")
        centres, means, errors = [], [], []
        for i, mean in enumerate(curve.bin_means):
            if mean is None:
                continue
            low, high = curve.bin_edges[i], curve.bin_edges[min(i + 1, len(curve.bin_edges) - 1)]
            centres.append((low * high) ** 0.5 if curve.log_scale else (low + high) / 2)
            means.append(mean.mean)
            errors.append(0.0 if mean.n < 2 else mean.half_width)
        axis.errorbar(centres, means, yerr=errors, color=points.get_facecolor()[0], marker="o", capsize=3)
        axis.set_xscale("log" if curve.log_scale else "linear")
    axis.set_xlabel(param)
    axis.set_ylabel(TEST_MAP)
    axis.set_title(f"sensitivity to {param} (points: runs; line: binned mean ± 95% CI)", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_search_progress(runs: list[TrialRun], metric: str, path: Path) -> Path:
    """Left: each trial's last `metric` by start order and the best finished so far. Right: the best finished
    so far against the cumulative CPU-hours the trials spent (`cost/cpu_seconds`), what the search cost."""
    ordered = [run for run in runs if metric in run.metrics]
    figure, (axis, cost_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for status, marker in (("finished", "o"), ("stopped_early", "x")):
        points = [(i, run.metrics[metric]) for i, run in enumerate(ordered) if run.status == status]
        if points:
            axis.scatter(*zip(*points), marker=marker, label=status.replace("_", " "))
    best, line, hours, spent = float("-inf"), [], [], 0.0
    for run in ordered:
        if run.status == "finished":
            best = max(best, run.metrics[metric])
        spent += run.metrics.get("cost/cpu_seconds", 0.0) / 3600
        line.append(best if best > float("-inf") else float("nan"))
        hours.append(spent)
    axis.step(range(len(ordered)), line, where="post", color="black", label="best finished so far")
    axis.set_xlabel("trial (start order)")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()
    cost_axis.step(hours, line, where="post", color="black")
    cost_axis.set_xlabel("cumulative CPU-hours of the trials")
    cost_axis.set_ylabel(f"best finished {metric}")
    cost_axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_forest(rows: list[ClaimRow], delta: float, path: Path) -> Path:
    """One row per claim: the paired difference (claim's direction) with its CI, 0 and the ±delta band, verdict
    and n."""
    figure, axis = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.4))
    axis.axvspan(-delta, delta, color="0.9", label=f"±{delta:g} (equivalent)")
    axis.axvline(0.0, color="black", linewidth=0.8)
    for y, row in enumerate(rows[::-1]):
        v = row.verdict
        low, high = v.difference.low, v.difference.high
        if v.n >= 2:
            axis.plot([low, high], [y, y], color="C0", linewidth=2)
        axis.plot(v.difference.mean, y, "o", color="C0")
        axis.annotate(
            f"{v.verdict} (n={v.n})", xy=(1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8
        )
    axis.set_yticks(
        range(len(rows)),
        [f"{r.claim}, {r.bits} bits{f' {r.where}' if r.where else ''}" for r in rows[::-1]],
        fontsize=8,
    )
    axis.set_xlabel("paired difference in test/mAP, in the claim's direction (> 0: the claim holds)")
    axis.legend(fontsize=8, loc="lower right")
    figure.subplots_adjust(left=0.38, right=0.8)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")
    plt.close(figure)
    return path
