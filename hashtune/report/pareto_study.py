"""The study of a multi-objective sweep: its front, the trials on it, and the choices it supports.

    pareto.md / pareto.csv   the non-dominated finished trials by the space's objectives (validation and cost
                             metrics), each with its config, its test metrics (reported, never chosen on) and cost
    pareto.png               the front in the accuracy objective against each other objective, dominated trials grey

The answers a user asks are computed from the finished trials: the cheapest configuration within `tolerance`
of the best accuracy, and the best configuration at each code length or less.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hashtune.errors import InputError
from hashtune.metric_names import TEST_MAP
from hashtune.paths import atomic_file
from hashtune.report.pareto import MODES, pareto_front
from hashtune.report.runs import TrialRun

__all__ = ["ParetoStudy", "answers", "parse_objectives", "pareto_csv", "pareto_markdown", "pareto_study", "plot_pareto"]

CONFIG_COLUMNS = ("model.bits", "model.depth", "model.embed_dim", "model.dual_stream", "model.k_groups")


def parse_objectives(text: str) -> tuple[tuple[str, str], ...]:
    """`val/best_mAP:max,code/bits:min` -> (("val/best_mAP", "max"), ("code/bits", "min"))."""
    pairs = []
    for part in text.split(","):
        name, _, mode = part.strip().rpartition(":")
        if not name or mode not in MODES:
            raise InputError(f"objective {part.strip()!r} is not METRIC:max or METRIC:min (e.g. code/bits:min)")
        pairs.append((name, mode))
    if len(pairs) < 2:
        raise InputError(f"a front needs two or more objectives, got {text!r}")
    return tuple(pairs)


@dataclass(frozen=True)
class ParetoStudy:
    objectives: tuple[tuple[str, str], ...]
    candidates: list[TrialRun]
    """The finished trials that report every objective."""
    front: list[TrialRun]


def pareto_study(runs: list[TrialRun], objectives: tuple[tuple[str, str], ...]) -> ParetoStudy:
    names = [name for name, _ in objectives]
    candidates = [run for run in runs if run.status == "finished" and all(name in run.metrics for name in names)]
    values = [[run.metrics[name] for name in names] for run in candidates]
    front = [candidates[i] for i in pareto_front(values, [mode for _, mode in objectives])] if candidates else []
    accuracy = objectives[0][0]
    front.sort(key=lambda run: (run.metrics[names[1]], -run.metrics[accuracy]))
    return ParetoStudy(objectives, candidates, front)


def _row(run: TrialRun, study: ParetoStudy) -> dict[str, object]:
    flat = {
        column: getattr(getattr(run.config, column.split(".")[0]), column.split(".")[1]) for column in CONFIG_COLUMNS
    }
    objectives = {name: run.metrics[name] for name, _ in study.objectives}
    cost = {"cost/cpu_seconds": run.metrics.get("cost/cpu_seconds"), TEST_MAP: run.metrics.get(TEST_MAP)}
    return {"trial": run.name, **objectives, **cost, **flat}


def pareto_csv(study: ParetoStudy) -> str:
    rows = [_row(run, study) for run in study.front]
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def answers(study: ParetoStudy, tolerance: float = 0.01) -> list[str]:
    """Sentences computed from the candidates: the cheapest within `tolerance` of the best, the best per code length."""
    if not study.candidates:
        return []
    (accuracy, _), (first_cost, cost_mode) = study.objectives[0], study.objectives[1]
    sign = 1 if cost_mode == "min" else -1
    best = max(study.candidates, key=lambda run: run.metrics[accuracy])
    near = [run for run in study.candidates if run.metrics[accuracy] >= best.metrics[accuracy] - tolerance]
    cheapest = min(near, key=lambda run: (sign * run.metrics[first_cost], -run.metrics[accuracy]))
    lines = [
        f"- Best {accuracy}: {best.metrics[accuracy]:.4f} ({best.name}, {first_cost} "
        f"{_cell(best.metrics[first_cost])}).",
        f"- Cheapest by {first_cost} within {tolerance} of it: {cheapest.name}, {accuracy} "
        f"{cheapest.metrics[accuracy]:.4f}, {first_cost} {_cell(cheapest.metrics[first_cost])}.",
    ]
    for bits in sorted({run.bits for run in study.candidates}):
        within = [run for run in study.candidates if run.bits <= bits]
        chosen = max(within, key=lambda run: run.metrics[accuracy])
        lines.append(f"- Best at <= {bits} bits: {chosen.name}, {accuracy} {chosen.metrics[accuracy]:.4f}.")
    lines.append(
        "- Each trial ran once (one seed): differences between neighbouring trials on the front are not tested; "
        "replicate the chosen configurations (a grid space with seeds) before calling one better."
    )
    return lines


def pareto_markdown(study: ParetoStudy) -> str:
    names = ", ".join(f"{name} ({mode})" for name, mode in study.objectives)
    rows = [_row(run, study) for run in study.front]
    header = list(rows[0]) if rows else ["trial"]
    lines = [
        "# Pareto front",
        "",
        f"Objectives: {names}. {len(study.front)} of {len(study.candidates)} finished trials are non-dominated "
        "(chosen on validation and cost metrics only; test/mAP is reported, never chosen on).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(row[key]) for key in header) + " |" for row in rows),
        "",
        *answers(study),
    ]
    return "\n".join(lines) + "\n"


def plot_pareto(study: ParetoStudy, path: Path) -> Path:
    """One panel per cost objective: the accuracy objective against it, dominated trials grey, the front marked."""
    (accuracy, _), others = study.objectives[0], study.objectives[1:]
    figure, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
    on_front = {run.run_id for run in study.front}
    for axis, (name, _) in zip(axes[0], others):
        dominated = [run for run in study.candidates if run.run_id not in on_front]
        axis.scatter(
            [run.metrics[name] for run in dominated],
            [run.metrics[accuracy] for run in dominated],
            color="0.7",
            label="dominated",
        )
        axis.scatter(
            [run.metrics[name] for run in study.front],
            [run.metrics[accuracy] for run in study.front],
            color="tab:red",
            label="Pareto front",
        )
        axis.set_xlabel(name)
        axis.set_ylabel(accuracy)
        axis.legend(fontsize=8)
    figure.suptitle(f"{len(study.front)} non-dominated of {len(study.candidates)} finished trials")
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path
