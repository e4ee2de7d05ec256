"""Files of a run folder: history.csv, metrics.json, pr_curve.csv and pr_curve.png (written by the main rank only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hashtune.metrics import RetrievalMetrics
from hashtune.paths import atomic_file, atomic_write_text

__all__ = [
    "write_history",
    "write_metrics",
    "read_metrics",
    "write_pr_curve",
    "read_pr_curve",
    "plot_pr_curve",
    "plot_pr_curves",
]


def write_history(rows: list[dict[str, float]], path: str | Path) -> None:
    """One row per epoch; columns are the union of every row's keys (evaluation columns blank between evals)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_file(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_metrics(metrics: dict[str, float], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def read_metrics(path: str | Path) -> dict[str, float]:
    return json.loads(Path(path).read_text())


def write_pr_curve(metrics: RetrievalMetrics, path: str | Path) -> None:
    """The precision-recall points by Hamming radius as CSV (radius, precision, recall)."""
    rows = [
        {"radius": int(r), "precision": float(p), "recall": float(q)}
        for r, p, q in zip(metrics.pr_radius, metrics.pr_precision, metrics.pr_recall)
    ]
    write_history(rows, path)


def read_pr_curve(path: str | Path) -> dict[str, list[float]]:
    """`{"radius": [...], "precision": [...], "recall": [...]}` from `write_pr_curve`'s file."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {column: [float(row[column]) for row in rows] for column in ("radius", "precision", "recall")}


def plot_pr_curves(curves: dict[str, dict[str, list[float]]], path: str | Path, *, title: str) -> Path:
    """Precision-recall by Hamming radius, one line per label (`{"recall": [...], "precision": [...]}` each)."""
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for label, curve in curves.items():
        axis.plot(curve["recall"], curve["precision"], marker=".", label=label)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    if len(curves) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")
    plt.close(figure)
    return Path(path)


def plot_pr_curve(metrics: RetrievalMetrics, path: str | Path, *, title: str = "") -> Path:
    """One run's precision-recall by Hamming radius (one point per radius 0..bits)."""
    curve = {"recall": metrics.pr_recall, "precision": metrics.pr_precision}
    return plot_pr_curves({"": curve}, path, title=title or f"mAP {metrics.map:.3f}")
