"""Sensitivity tables, as pure functions of `TrialRun`s: K x bits (TransHash Tab. 3) and binned `test/mAP` against
each continuous parameter that varies between runs.

Every table reads `test/mAP` of finished runs only (trials ASHA stopped early have no test metrics).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from hashtune.config import Config, to_flat_dict
from hashtune.report.runs import TrialRun
from hashtune.report.stats import MeanCI, mean_ci
from hashtune.report.tables import METRIC, csv_table, format_number, markdown_table, varying_params
from hashtune.train.bits import is_feasible

__all__ = [
    "SensitivityTable",
    "k_bits_table",
    "BinnedCurve",
    "continuous_sensitivity",
    "continuous_table",
]


@dataclass(frozen=True)
class SensitivityTable:
    """K x bits: mean test/mAP per cell; `-` infeasible bit allocation, blank not run."""

    k_values: list[int]
    bits: list[int]
    cells: dict[tuple[int, int], MeanCI]
    infeasible: set[tuple[int, int]]

    def cell_text(self, k: int, b: int) -> str:
        if (k, b) in self.infeasible:
            return "-"
        cell = self.cells.get((k, b))
        return f"{cell.mean:.3f} (n={cell.n})" if cell else ""

    def to_markdown(self) -> str:
        rows = [[f"K={k}"] + [self.cell_text(k, b) for b in self.bits] for k in self.k_values]
        return markdown_table(["K"] + [f"{b} bits" for b in self.bits], rows)

    def to_csv(self) -> str:
        rows = []
        for k in self.k_values:
            for b in self.bits:
                cell = self.cells.get((k, b))
                state = "infeasible" if (k, b) in self.infeasible else ("run" if cell else "not run")
                rows.append(
                    [
                        k,
                        b,
                        state,
                        cell.n if cell else 0,
                        format_number(cell.mean) if cell else "",
                        format_number(cell.low) if cell else "",
                        format_number(cell.high) if cell else "",
                    ]
                )
        return csv_table(["k_groups", "bits", "state", "n", "mean", "ci95_low", "ci95_high"], rows)


def k_bits_table(runs: list[TrialRun]) -> SensitivityTable | None:
    """Mean test/mAP by (K, bits) over finished dual-stream runs; None unless K or bits vary."""
    dual = [run for run in runs if run.config.model.dual_stream]
    finished = [run for run in dual if run.status == "finished"]
    if len({(run.k_groups, run.bits) for run in dual}) < 2 or not finished:
        return None
    k_values = list(range(1, max(run.k_groups for run in dual) + 1))
    bits = sorted({run.bits for run in dual})
    values: dict[tuple[int, int], list[float]] = defaultdict(list)
    for run in finished:
        values[run.k_groups, run.bits].append(run.metrics[METRIC])
    infeasible = {
        (k, b)
        for k in k_values
        for b in bits
        if not is_feasible(Config().replace({"model.bits": b, "model.k_groups": k}))
    }
    return SensitivityTable(k_values, bits, {key: mean_ci(v) for key, v in values.items()}, infeasible)


@dataclass(frozen=True)
class BinnedCurve:
    """test/mAP against one continuous parameter at one code length: points and quantile-binned means."""

    param: str
    bits: int
    log_scale: bool
    x: list[float]
    y: list[float]
    bin_edges: list[float]
    bin_means: list[MeanCI | None]


def _quantile_edges(x: np.ndarray, bins: int, log_scale: bool) -> np.ndarray:
    scaled = np.log10(x) if log_scale else x
    edges = np.unique(np.quantile(scaled, np.linspace(0, 1, bins + 1)))
    return 10**edges if log_scale else edges


def continuous_sensitivity(runs: list[TrialRun], *, min_values: int = 4, bins: int = 4) -> list[BinnedCurve]:
    """For each float parameter with at least `min_values` distinct values among finished runs, per bits."""
    finished = [run for run in runs if run.status == "finished"]
    curves = []
    for param, values in varying_params(finished).items():
        if len(values) < min_values or not all(isinstance(v, float) for v in values):
            continue
        log_scale = values[0] > 0 and values[-1] / values[0] >= 10
        for b in sorted({run.bits for run in finished}):
            points = sorted((to_flat_dict(run.config)[param], run.metrics[METRIC]) for run in finished if run.bits == b)
            if len(points) < 2:
                continue
            x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
            edges = _quantile_edges(x, min(bins, len(points) // 2 or 1), log_scale)
            index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
            means = [mean_ci(y[index == i]) if (index == i).any() else None for i in range(max(len(edges) - 1, 1))]
            curves.append(BinnedCurve(param, b, log_scale, x.tolist(), y.tolist(), edges.tolist(), means))
    return curves


def continuous_table(curves: list[BinnedCurve]) -> tuple[str, str]:
    """Markdown and CSV of the binned curves: one row per (parameter, bits, bin)."""
    header = ["parameter", "bits", "bin", "n", "mean test/mAP", "ci95_low", "ci95_high"]
    rows = []
    for curve in curves:
        for i, mean in enumerate(curve.bin_means):
            low, high = curve.bin_edges[i], curve.bin_edges[min(i + 1, len(curve.bin_edges) - 1)]
            rows.append(
                [
                    curve.param,
                    curve.bits,
                    f"[{low:.4g}, {high:.4g}]",
                    mean.n if mean else 0,
                    format_number(mean.mean) if mean else "",
                    format_number(mean.low) if mean else "",
                    format_number(mean.high) if mean else "",
                ]
            )
    markdown_rows = [[str(cell) for cell in row[:5]] for row in rows]
    return markdown_table(header[:5], markdown_rows), csv_table(header, rows)
