"""Checks that read a whole search space: its grid's size (counted, never expanded), feasible bit allocations, every
arm running at every point, and ASHA's rungs inside the trials' epochs. `load_space` runs them once the space is parsed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hashtune.config import Config, ConfigError, check_schedule, to_flat_dict
from hashtune.sweep.space_settings import SpaceError
from hashtune.train.bits import is_feasible

if TYPE_CHECKING:
    from hashtune.sweep.space import GridPoint, SearchSpace

__all__ = ["MAX_GRID_POINTS", "check_space"]


def check_space(where: str, space: SearchSpace, base: Config) -> None:
    """Raise `SpaceError` (one line naming `where`) for a space that cannot run as a whole."""
    _check_grid_size(where, space)
    _check_feasible(where, space, base)
    _check_scheduler(where, space, base)
    _check_objectives(where, space)
    _check_warmup(where, space, base)


def _check_objectives(where: str, space: SearchSpace) -> None:
    """Several objectives: ASHA stops trials on one of them (named), and the seed schedule compares one metric."""
    names = [name for name, _ in space.objectives]
    stop_on = space.scheduler.metric
    if not names:
        if stop_on is not None:
            raise SpaceError(
                f"{where}: scheduler.metric is for spaces with several objectives; this one has {space.metric}"
            )
        return
    if space.replicates is not None:
        raise SpaceError(f"{where}: replicates compare arms on one metric; give metric one name, not {names}")
    if space.scheduler.asha and stop_on is None:
        raise SpaceError(
            f"{where}: ASHA stops trials on one metric: add scheduler.metric (one of {', '.join(names)}, e.g. "
            f"{names[0]}) or use scheduler: {{type: none}}"
        )
    if stop_on is not None and stop_on not in names:
        raise SpaceError(f"{where}: scheduler.metric {stop_on!r} is not one of the objectives {', '.join(names)}")


MAX_GRID_POINTS = 10_000
"""The most points a grid space may have (the most trials `benchmarks/bench_scale.py` measures a sweep at)."""


def _check_grid_size(where: str, space: SearchSpace) -> None:
    """Refuse a grid too large to run, counted from its dimensions (expanding 2.6e10 points would fill memory)."""
    if space.search != "grid":
        return
    seeds = space.replicates.seeds if space.replicates else space.seeds
    dimensions = [len(space.variants) or 1, len(seeds)] + [len(domain.values) for domain in space.params.values()]
    points = math.prod(dimensions)
    if points > MAX_GRID_POINTS:
        raise SpaceError(
            f"{where}: the grid has {points:,} points ({' x '.join(map(str, dimensions))}: variants, seeds, then each "
            f"param's values); at most {MAX_GRID_POINTS:,}: use search: tpe or random with num_samples instead"
        )


def _check_scheduler(where: str, space: SearchSpace, base: Config) -> None:
    """ASHA's rungs must fit inside the trials' epochs (they are counted in epochs)."""
    if not space.scheduler.asha:
        return
    epochs = base.replace(space.fixed).train.epochs
    grace, factor = space.scheduler.grace(epochs), space.scheduler.factor
    if isinstance(grace, bool) or not isinstance(grace, int) or not 1 <= grace <= epochs:
        raise SpaceError(
            f"{where}: scheduler.grace_period must be an integer in [1, train.epochs={epochs}], got {grace!r}"
        )
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise SpaceError(f"{where}: scheduler.reduction_factor must be a number > 1, got {factor!r}")


def _check_warmup(where: str, space: SearchSpace, base: Config) -> None:
    """Every arm's longest warmup below its fewest epochs (the trainer's rule, over what the space can sample)."""
    for variant in space.variants.values() if space.variants else [{}]:
        arm = base.replace({**space.fixed, **variant})
        epochs, warmups = (
            _domain_values(space, key) or [to_flat_dict(arm)[key]] for key in ("train.epochs", "train.warmup_epochs")
        )
        try:
            check_schedule(arm.replace({"train.epochs": min(epochs), "train.warmup_epochs": max(warmups)}))
        except ConfigError as error:
            raise SpaceError(f"{where}: {error}") from None


def _check_feasible(where: str, space: SearchSpace, base: Config) -> None:
    if space.search == "grid":
        feasible, infeasible = space.grid_points(base)
        if not feasible:
            raise SpaceError(
                f"{where}: every one of the {len(infeasible)} grid points has an infeasible model.bits/model.k_groups "
                "allocation"
            )
        _check_arms_run_together(where, space, feasible, infeasible)
        return
    bits = _values(space, base, "model.bits")
    groups = _values(space, base, "model.k_groups")
    if not any(
        is_feasible(base.replace({**space.fixed, "model.bits": b, "model.k_groups": k})) for b in bits for k in groups
    ):
        raise SpaceError(f"{where}: no model.bits in {sorted(bits)} works with any model.k_groups in {sorted(groups)}")


def _check_arms_run_together(
    where: str, space: SearchSpace, feasible: list[GridPoint], infeasible: list[GridPoint]
) -> None:
    """A variant infeasible at a grid point where another variant runs would silently drop out of a comparison."""
    if len(space.variants) < 2:
        return
    running = {(point.at, point.seed) for point in feasible}
    for point in infeasible:
        if (point.at, point.seed) in running:
            at = point.label.removeprefix(point.variant).strip()
            raise SpaceError(
                f"{where}: variant {point.variant!r} has an infeasible model.bits/model.k_groups allocation at "
                f"{at!r}, where other variants run; change its k_groups or bits so every arm runs at every point"
            )


def _values(space: SearchSpace, base: Config, key: str) -> list:
    """The values a key can take in a search (an int range expanded), or its fixed/base value."""
    return _domain_values(space, key) or [to_flat_dict(base.replace(space.fixed))[key]]


def _domain_values(space: SearchSpace, key: str) -> list:
    """The values a searched key can take (an int range expanded); none for a key the space does not search."""
    if key not in space.params:
        return []
    domain = space.params[key]
    return list(range(domain.values[0], domain.values[1] + 1)) if domain.kind == "int" else list(domain.values)
