"""The scalar and small structured settings of a search space: objectives, budget, replicates, scheduler, sampler.

Each parser takes the file's name (`where`) for its one-line errors; `hashtune.sweep.space` assembles them.
"""

from __future__ import annotations

import math
from typing import Any

from hashtune.errors import InputError
from hashtune.sweep.replication_plan import Replicates

__all__ = [
    "SpaceError",
    "number",
    "parse_budget",
    "parse_objectives",
    "parse_replicates",
    "parse_scheduler",
    "parse_sampler",
]

OBJECTIVE_PREFIXES = ("val/", "code/", "model/", "cost/")
"""What a search may choose on: validation accuracy and what a model costs; never test metrics."""

BUDGET_KEYS = ("cpu_hours", "gpu_hours", "hard", "usd_per_gpu_hour")


class SpaceError(InputError):
    """A search space that cannot be run; the message names the file, the key and what would be valid."""


def parse_budget(where: str, budget: Any) -> dict[str, Any] | None:
    if budget is None:
        return None
    if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS):
        raise SpaceError(f"{where}: budget must be a mapping of {', '.join(BUDGET_KEYS)}, got {budget!r}")
    resources = [key for key in ("cpu_hours", "gpu_hours") if key in budget]
    if len(resources) != 1:
        raise SpaceError(f"{where}: budget needs exactly one of cpu_hours, gpu_hours, got {budget!r}")
    hours = number(where, budget, resources[0], None, float, 1e-9)
    price = budget.get("usd_per_gpu_hour")
    if price is not None:
        price = number(where, budget, "usd_per_gpu_hour", None, float, 0.0)
    if not isinstance(budget.get("hard", False), bool):
        raise SpaceError(f"{where}: budget.hard must be true or false, got {budget['hard']!r}")
    return {
        "resource": resources[0].split("_")[0],
        "hours": hours,
        "hard": budget.get("hard", False),
        "usd_per_gpu_hour": price,
    }


REPLICATES_KEYS = ("min", "max", "step", "delta", "alpha")


def parse_replicates(where: str, tree: dict) -> Replicates | None:
    spec = tree.get("replicates")
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - set(REPLICATES_KEYS):
        raise SpaceError(f"{where}: replicates must be a mapping of {', '.join(REPLICATES_KEYS)}, got {spec!r}")
    if tree.get("search", "grid") != "grid" or len(tree.get("variants") or {}) < 2:
        raise SpaceError(
            f"{where}: replicates needs search: grid and at least two variants (the first is the reference)"
        )
    if "seeds" in tree:
        raise SpaceError(
            f"{where}: replicates chooses the seeds (0, 1, 2, ... per arm); remove seeds: {tree['seeds']!r}"
        )
    if (tree.get("scheduler") or {"type": "none"}) not in ("none", {"type": "none"}):
        raise SpaceError(
            f"{where}: replicates compares finished trials; use scheduler: {{type: none}}, not {tree['scheduler']!r}"
        )
    default, at = Replicates(), f"{where}: replicates"
    plan = Replicates(
        min=number(at, spec, "min", default.min, int, 2),
        max=number(at, spec, "max", default.max, int, 2),
        step=number(at, spec, "step", default.step, int, 1),
        delta=number(at, spec, "delta", default.delta, float, 1e-12),
        alpha=number(at, spec, "alpha", default.alpha, float, 1e-12),
    )
    if plan.max < plan.min or plan.alpha >= 1:
        raise SpaceError(f"{where}: replicates needs 2 <= min <= max and 0 < alpha < 1, got {spec!r}")
    return plan


SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "brackets", "metric")


def parse_scheduler(where: str, scheduler: Any) -> dict:
    if scheduler in (None, "none"):
        return {"type": "none"}
    if not isinstance(scheduler, dict) or scheduler.get("type") not in ("none", "asha"):
        raise SpaceError(
            f"{where}: scheduler must be {{type: none}} or "
            f"{{type: asha, grace_period: N, reduction_factor: N, brackets: N}}"
        )
    unknown = set(scheduler) - set(SCHEDULER_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown scheduler keys {sorted(unknown)}; valid: {', '.join(SCHEDULER_KEYS)}")
    if "brackets" in scheduler:
        number(f"{where}: scheduler", scheduler, "brackets", 1, int, 1)
    return dict(scheduler)


SAMPLER_KEYS = ("multivariate", "group", "n_startup_trials")


def parse_objectives(where: str, metric: Any, mode: Any) -> tuple[tuple[str, str], ...]:
    """`metric: [val/best_mAP, code/bits]` with `mode: [max, min]` -> the (metric, mode) pairs; () for one metric.

    The first objective is the accuracy one (a val/* metric); the others may be any val/*, code/*, model/* or
    cost/* metric a trial reports.
    """
    if not isinstance(metric, list):
        if isinstance(mode, list):
            raise SpaceError(f"{where}: mode is a list but metric names one metric; give a list of metrics too")
        return ()
    if not isinstance(mode, list) or len(mode) != len(metric):
        raise SpaceError(
            f"{where}: metric lists {len(metric)} objectives; mode must list as many (max or min), got {mode!r}"
        )
    if len(metric) < 2 or len(set(map(str, metric))) != len(metric):
        raise SpaceError(f"{where}: a list of metrics needs two or more different objectives, got {metric!r}")
    for name, direction in zip(metric, mode):
        if not isinstance(name, str) or not name.startswith(OBJECTIVE_PREFIXES):
            raise SpaceError(
                f"{where}: objective {name!r} is not a val/*, code/*, model/* or cost/* metric (a search never "
                "chooses on test data)"
            )
        if direction not in ("max", "min"):
            raise SpaceError(f"{where}: mode of {name} must be max or min, got {direction!r}")
    if not metric[0].startswith("val/"):
        raise SpaceError(f"{where}: the first objective is the accuracy one, a val/* metric; got {metric[0]!r}")
    return tuple(zip(metric, mode))


def parse_sampler(where: str, sampler: Any, search: str) -> dict | None:
    """Optuna sampler options: TPE's `{multivariate: true, group: true, n_startup_trials: N}` (group needs
    multivariate); NSGA-II's `{population_size: N}`."""
    if sampler is None:
        return None
    if search == "nsga2":
        if not isinstance(sampler, dict) or set(sampler) - {"population_size"}:
            raise SpaceError(f"{where}: sampler for search: nsga2 is {{population_size: N}}, got {sampler!r}")
        number(f"{where}: sampler", sampler, "population_size", 50, int, 2)
        return dict(sampler)
    if search != "tpe":
        raise SpaceError(f"{where}: sampler options are for search: tpe or nsga2, got search: {search}")
    if not isinstance(sampler, dict) or set(sampler) - set(SAMPLER_KEYS):
        raise SpaceError(f"{where}: sampler must be a mapping of {', '.join(SAMPLER_KEYS)}, got {sampler!r}")
    for key in ("multivariate", "group"):
        if not isinstance(sampler.get(key, False), bool):
            raise SpaceError(f"{where}: sampler.{key} must be true or false, got {sampler[key]!r}")
    if sampler.get("group") and not sampler.get("multivariate"):
        raise SpaceError(
            f"{where}: sampler.group: true needs multivariate: true (Optuna's grouped TPE is multivariate)"
        )
    if "n_startup_trials" in sampler:
        number(f"{where}: sampler", sampler, "n_startup_trials", 10, int, 0)
    return dict(sampler)


def number(where: str, tree: dict, key: str, default, kind: type, minimum):
    value = tree.get(key, default)
    valid = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    )
    if not valid or (kind is int and not isinstance(value, int)):
        expected = f"an integer >= {minimum}" if kind is int else f"a number >= {minimum}"
        raise SpaceError(f"{where}: {key} must be {expected}, got {value!r}")
    return kind(value)
