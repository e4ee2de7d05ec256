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
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hashtune.config import SEED_KEYS, Config, to_flat_dict
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
class Configuration:
    """One configuration of a study: its finished trials' metrics averaged over seeds (one trial: its own)."""

    name: str
    config: Config
    metrics: dict[str, float]
    """Each metric's mean over the configuration's runs (its seeds)."""
    sd: dict[str, float]
    """Each metric's sample SD over the runs (NaN for one run)."""
    runs: int
    """How many finished runs the configuration has (a sampler may draw a configuration twice)."""
    seeds: int
    """How many different seeds those runs used."""

    @property
    def bits(self) -> int:
        return self.config.model.bits


@dataclass(frozen=True)
class ParetoStudy:
    objectives: tuple[tuple[str, str], ...]
    candidates: list[Configuration]
    """The configurations whose finished trials report every objective."""
    front: list[Configuration]


def configurations(runs: list[TrialRun], names: list[str]) -> list[Configuration]:
    """The finished runs reporting every metric in `names`, grouped by their config less the seeds."""
    groups: dict[tuple, list[TrialRun]] = {}
    for run in runs:
        if run.status == "finished" and all(name in run.metrics for name in names):
            key = tuple(sorted((k, str(v)) for k, v in to_flat_dict(run.config).items() if k not in SEED_KEYS))
            groups.setdefault(key, []).append(run)
    summaries = []
    for group in groups.values():
        keys = set.intersection(*(set(run.metrics) for run in group))
        values = {key: [run.metrics[key] for run in group] for key in keys}
        summaries.append(
            Configuration(
                name=re.sub(r"\s*\b(data_seed|seed)=\d+", "", group[0].name).strip(),
                config=group[0].config,
                metrics={key: statistics.fmean(column) for key, column in values.items()},
                sd={key: statistics.stdev(column) if len(column) > 1 else math.nan for key, column in values.items()},
                runs=len(group),
                seeds=len({tuple(getattr(run.config, part.split(".")[0]).seed for part in SEED_KEYS) for run in group}),
            )
        )
    return summaries


def pareto_study(runs: list[TrialRun], objectives: tuple[tuple[str, str], ...]) -> ParetoStudy:
    """The front of the configurations (seed means where a configuration ran at several seeds)."""
    names = [name for name, _ in objectives]
    candidates = configurations(runs, names)
    values = [[point.metrics[name] for name in names] for point in candidates]
    front = [candidates[i] for i in pareto_front(values, [mode for _, mode in objectives])] if candidates else []
    accuracy = objectives[0][0]
    front.sort(key=lambda point: (point.metrics[names[1]], -point.metrics[accuracy]))
    return ParetoStudy(objectives, candidates, front)


def _with_sd(point: Configuration, key: str) -> str:
    value = point.metrics.get(key)
    if value is None:
        return ""
    return f"{value:.4g}" if point.runs == 1 else f"{value:.4g} ± {point.sd[key]:.2g}"


def _row(point: Configuration, study: ParetoStudy) -> dict[str, object]:
    flat = {
        column: getattr(getattr(point.config, column.split(".")[0]), column.split(".")[1]) for column in CONFIG_COLUMNS
    }
    objectives = {name: _with_sd(point, name) for name, _ in study.objectives}
    cost = {"cost/cpu_seconds": _with_sd(point, "cost/cpu_seconds"), TEST_MAP: _with_sd(point, TEST_MAP)}
    return {"configuration": point.name, "runs": point.runs, "seeds": point.seeds, **objectives, **cost, **flat}


def _csv_row(point: Configuration, study: ParetoStudy) -> dict[str, object]:
    """Numbers a program can read: each objective's mean and SD in their own columns (the table's `a ± b` is text)."""
    row = _row(point, study)
    for key in [name for name, _ in study.objectives] + ["cost/cpu_seconds", TEST_MAP]:
        row[key] = point.metrics.get(key)
        row[f"{key} sd"] = point.sd.get(key)
    return row


def pareto_csv(study: ParetoStudy) -> str:
    rows = [_csv_row(point, study) for point in study.front]
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
    best = max(study.candidates, key=lambda point: point.metrics[accuracy])
    near = [point for point in study.candidates if point.metrics[accuracy] >= best.metrics[accuracy] - tolerance]
    cheapest = min(near, key=lambda point: (sign * point.metrics[first_cost], -point.metrics[accuracy]))
    lines = [
        f"- Best {accuracy}: {_with_sd(best, accuracy)} ({best.name}, {first_cost} {_with_sd(best, first_cost)}).",
        f"- Cheapest by {first_cost} within {tolerance} of it: {cheapest.name}, {accuracy} "
        f"{_with_sd(cheapest, accuracy)}, {first_cost} {_with_sd(cheapest, first_cost)}.",
    ]
    for bits in sorted({point.bits for point in study.candidates}):
        within = [point for point in study.candidates if point.bits <= bits]
        chosen = max(within, key=lambda point: point.metrics[accuracy])
        lines.append(f"- Best at <= {bits} bits: {chosen.name}, {accuracy} {_with_sd(chosen, accuracy)}.")
    if any(point.seeds > 1 for point in study.candidates):
        lines.append(
            "- Values of configurations run at several seeds are seed means ± SD and the front is over the means: "
            "where two configurations differ by less than their SDs, which is better is inconclusive."
        )
    else:
        lines.append(
            "- Every configuration ran at one seed (one point of a configuration the sampler drew twice is the mean "
            "of its reruns): differences between neighbours on the front are not tested; replicate the chosen "
            "configurations (a grid space with seeds) before calling one better."
        )
    return lines


def pareto_markdown(study: ParetoStudy) -> str:
    names = ", ".join(f"{name} ({mode})" for name, mode in study.objectives)
    rows = [_row(run, study) for run in study.front]
    header = list(rows[0]) if rows else ["configuration"]
    lines = [
        "# Pareto front",
        "",
        f"Objectives: {names}. {len(study.front)} of {len(study.candidates)} configurations are non-dominated "
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
    on_front = {id(point) for point in study.front}
    for axis, (name, _) in zip(axes[0], others):
        dominated = [point for point in study.candidates if id(point) not in on_front]
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
    figure.suptitle(f"{len(study.front)} non-dominated of {len(study.candidates)} configurations")
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path
