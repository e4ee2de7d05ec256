"""The scalar and small structured settings of a search space: objectives, budget, replicates (the adaptive seed
schedule's plan; `hashtune.sweep.replicates` runs it), scheduler, sampler.

Budget, replicates, scheduler and sampler are frozen dataclasses that parse themselves (`parse`, given the file's
name for its one-line errors) and own their defaults; the objectives are (metric, mode) pairs
(`parse_objectives`). `hashtune.sweep.space` assembles them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hashtune.errors import InputError

__all__ = [
    "Budget",
    "Replicates",
    "SamplerOptions",
    "Scheduler",
    "SpaceError",
    "budget_reached",
    "number",
    "parse_objectives",
]

# `Replicates` lived in `hashtune.sweep.replication_plan` until 2026-12-02: a replicated sweep started before then has
# it pickled under that name in Tune's state (its searcher's plan), and its --resume unpickles it from here
sys.modules.setdefault("hashtune.sweep.replication_plan", sys.modules[__name__])

OBJECTIVE_PREFIXES = ("val/", "code/", "model/", "cost/")
"""What a search may choose on: validation accuracy and what a model costs; never test metrics."""

BUDGET_KEYS = ("cpu_hours", "gpu_hours", "hard", "usd_per_gpu_hour")


class SpaceError(InputError):
    """A search space that cannot be run; the message names the file, the key and what would be valid."""


@dataclass(frozen=True)
class Budget:
    """What a sweep may spend (`budget: {cpu_hours: H}` or `{gpu_hours: H, hard: true, usd_per_gpu_hour: P}`)."""

    resource: str
    """`cpu` or `gpu`: which `cost/*_seconds` total of the trials the budget caps."""
    hours: float
    hard: bool = False
    """True: running trials are stopped too once it is spent (a soft budget only keeps new trials from training)."""
    usd_per_gpu_hour: float | None = None

    @classmethod
    def parse(cls, where: str, budget: Any) -> Budget | None:
        if budget is None:
            return None
        if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS):
            raise SpaceError(f"{where}: budget must be a mapping of {', '.join(BUDGET_KEYS)}, got {budget!r}")
        resources = [key for key in ("cpu_hours", "gpu_hours") if key in budget]
        if len(resources) != 1:
            raise SpaceError(f"{where}: budget needs exactly one of cpu_hours, gpu_hours, got {budget!r}")
        price = budget.get("usd_per_gpu_hour")
        if price is not None:
            price = number(where, budget, "usd_per_gpu_hour", None, float, 0.0)
        if not isinstance(budget.get("hard", False), bool):
            raise SpaceError(f"{where}: budget.hard must be true or false, got {budget['hard']!r}")
        hours = number(where, budget, resources[0], None, float, 1e-9)
        return cls(resources[0].split("_")[0], hours, budget.get("hard", False), price)

    @property
    def limit(self) -> tuple[str, float]:
        """(the `cost/*` metric the budget caps, its limit in seconds): what `budget_reached` compares."""
        return f"cost/{self.resource}_seconds", self.hours * 3600.0


def budget_reached(totals: Mapping[str, float], limit: tuple[str, float] | None) -> bool:
    """The one budget rule the trials, the stopper and the summary apply: the sweep's `cost/*` total (as its parent
    run holds it) has reached `limit` (`Budget.limit`; None: no budget)."""
    return limit is not None and totals.get(limit[0], 0.0) >= limit[1]


@dataclass(frozen=True)
class Replicates:
    """The adaptive schedule of a space (`replicates:`)."""

    min: int = 3
    max: int = 20
    step: int = 3
    delta: float = 0.02
    alpha: float = 0.05

    @property
    def looks(self) -> int:
        """The planned looks: the first round and every round `step` can add before `max`."""
        return 1 + math.ceil((self.max - self.min) / self.step)

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every seed an arm can run: 0 .. max-1, in the order they are added."""
        return tuple(range(self.max))

    @classmethod
    def parse(cls, where: str, tree: dict) -> Replicates | None:
        """The space's `replicates:`, read from the whole space (a grid with variants, no seeds, no scheduler)."""
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
                f"{where}: replicates compares finished trials; use scheduler: {{type: none}}, "
                f"not {tree['scheduler']!r}"
            )
        default, at = cls(), f"{where}: replicates"
        plan = cls(
            min=number(at, spec, "min", default.min, int, 2),
            max=number(at, spec, "max", default.max, int, 2),
            step=number(at, spec, "step", default.step, int, 1),
            delta=number(at, spec, "delta", default.delta, float, 1e-12),
            alpha=number(at, spec, "alpha", default.alpha, float, 1e-12),
        )
        if plan.max < plan.min or plan.alpha >= 1:
            raise SpaceError(f"{where}: replicates needs 2 <= min <= max and 0 < alpha < 1, got {spec!r}")
        return plan


REPLICATES_KEYS = ("min", "max", "step", "delta", "alpha")


SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "brackets", "metric")


@dataclass(frozen=True)
class Scheduler:
    """Early stopping (`scheduler:`): none, or ASHA over the trials' epochs. A value left out is None here (and in
    the sweep's record) and its default applies where it is read."""

    type: str = "none"
    metric: str | None = None
    """The objective ASHA stops trials on (required with several objectives; else the space's metric)."""
    grace_period: int | None = None
    reduction_factor: float | None = None
    brackets: int | None = None

    @classmethod
    def parse(cls, where: str, scheduler: Any) -> Scheduler:
        if scheduler in (None, "none"):
            return cls()
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
        return cls(**scheduler)

    @property
    def asha(self) -> bool:
        return self.type == "asha"

    def grace(self, epochs: int) -> int:
        """ASHA's first rung: `grace_period`, by default a sixth of the trials' epochs (at least 1)."""
        return self.grace_period if self.grace_period is not None else max(1, epochs // 6)

    @property
    def factor(self) -> float:
        return self.reduction_factor if self.reduction_factor is not None else 3

    @property
    def bracket_count(self) -> int:
        return self.brackets if self.brackets is not None else 1


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


SAMPLER_KEYS = ("multivariate", "group", "n_startup_trials")


@dataclass(frozen=True)
class SamplerOptions:
    """Optuna sampler options (`sampler:`): TPE's `multivariate`, `group` (needs multivariate), `n_startup_trials`;
    NSGA-II's `population_size`. A value left out is None: Optuna's default."""

    multivariate: bool | None = None
    group: bool | None = None
    n_startup_trials: int | None = None
    population_size: int | None = None

    def kwargs(self) -> dict[str, Any]:
        """The options given, as the sampler's keyword arguments."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def parse(cls, where: str, sampler: Any, search: str) -> SamplerOptions | None:
        if sampler is None:
            return None
        if search == "nsga2":
            if not isinstance(sampler, dict) or set(sampler) - {"population_size"}:
                raise SpaceError(f"{where}: sampler for search: nsga2 is {{population_size: N}}, got {sampler!r}")
            number(f"{where}: sampler", sampler, "population_size", 50, int, 2)
            return cls(**sampler)
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
        return cls(**sampler)


def number(where: str, tree: dict, key: str, default, kind: type, minimum):
    value = tree.get(key, default)
    valid = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    )
    if not valid or (kind is int and not isinstance(value, int)):
        expected = f"an integer >= {minimum}" if kind is int else f"a number >= {minimum}"
        raise SpaceError(f"{where}: {key} must be {expected}, got {value!r}")
    return kind(value)
