"""The scalar and small structured settings of a search space: budget, replicates, scheduler, sampler.

Each parser takes the file's name (`where`) for its one-line errors; `hashtune.sweep.space` assembles them.
"""

from __future__ import annotations

import math
from typing import Any

from hashtune.errors import InputError
from hashtune.sweep.replication_plan import Replicates

__all__ = ["SpaceError", "number", "parse_budget", "parse_replicates", "parse_scheduler", "parse_sampler"]

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


SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "brackets")


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


def parse_sampler(where: str, sampler: Any, search: str) -> dict | None:
    """Optuna TPE options: `{multivariate: true, group: true, n_startup_trials: N}` (tpe only; group needs
    multivariate)."""
    if sampler is None:
        return None
    if search != "tpe":
        raise SpaceError(f"{where}: sampler options are for search: tpe, got search: {search}")
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
