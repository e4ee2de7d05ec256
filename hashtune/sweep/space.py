"""Search spaces: YAML files whose keys are the trainer's dotted config names.

Schema (every key but `params` or `variants` optional)::

    description: what the study is for
    search: grid | tpe | random | nsga2 # grid: every point once; the others: Optuna samplers
    metric: val/best_mAP                # selection metric (only val/*): the reported weights' val mAP
    mode: max
    metric: [val/best_mAP, code/bits, cost/encode_ms]   # or several objectives (the first a val/* metric; then
    mode: [max, min, min]               # code/*, model/*, cost/*): Optuna searches the front (tpe, nsga2, random)
    num_samples: 24                     # tpe/random trials (grid: the grid decides)
    max_concurrent: 2
    workers: 0                          # 0: the plain trainer inside the trial; N: Ray Train DDP workers
    cpus_per_trial: 1                   # CPUs of a trial (workers: 0) or of each worker (workers: N)
    gpus_per_worker: 0
    max_failures: 2                     # Ray Train worker-group restarts of a trial (workers: N)
    checkpoints_to_keep: 1              # best checkpoints kept per trial by `metric` (Ray also keeps the latest)
    time_budget_s: null                 # wall-clock seconds of the sweep, summed over --resume; then every trial stops
    base: tune                          # start every arm from the best finished trial of this experiment
    budget: {cpu_hours: 2.0}            # or {gpu_hours: H}; hard: true stops running trials too;
                                        # usd_per_gpu_hour: P prices the summary (see clusters/README.md)
    scheduler: {type: asha, grace_period: 25, reduction_factor: 3}   # or {type: none}; brackets: N for
                                        # asynchronous HyperBand (ASHA over N brackets of grace periods);
                                        # metric: M (several objectives: the one ASHA stops trials on)
    sampler: {multivariate: true, group: true}   # tpe: Optuna's multivariate (grouped) TPE; nsga2: {population_size: N}
    seeds: [0, 1, 2]                    # train.seed and data.seed replicates (grid: a grid dimension)
    seeds: {data: [0, 1], train: [0, 1, 2]}   # or crossed (grid): the study splits the variance between them
    replicates: {min: 3, max: 20, step: 3, delta: 0.02, alpha: 0.05}
                                        # instead of seeds (grid + variants): seeds added per round to the
                                        # arms whose claim is unsettled (see hashtune.sweep.replicates)
    fixed: {train.epochs: 150}          # overrides every trial gets
    variants:                           # named override sets, a grid dimension (ablations)
      full: {}
      w/o Q: {loss.quant_weight: 0.0}
    params:                             # searched keys and their domains
      model.k_groups: {int: [1, 6]}
      model.bits: {choice: [16, 32, 48, 64]}
      loss.gamma: {loguniform: [1, 50]}
      loss.quant_weight: {uniform: [0, 1]}
      model.dual_stream: {grid: [true, false]}
      model.k_groups: {int: [1, 4], when: {model.dual_stream: true}}   # tpe/random: conditional

Domains: `choice` (categorical; in a grid, a grid dimension), `grid` (grid spaces only), `uniform`
and `loguniform` ([low, high]), `int` ([low, high], inclusive). Every value is checked against the
config's types. Points whose `model.bits` / `model.k_groups` allocation fails are never launched:
grids list them as infeasible, and TPE/random sample `k_groups` only within the feasible range.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashtune.config import SEED_KEYS, Config, ConfigError, require_val_metric
from hashtune.metric_names import SELECTION_METRIC
from hashtune.paths import shipped_spaces
from hashtune.strict_yaml import YamlError, read_yaml
from hashtune.sweep.space_checks import check_space
from hashtune.sweep.space_settings import (
    Budget,
    Replicates,
    SamplerOptions,
    Scheduler,
    SpaceError,
    budget_reached,
    number,
    parse_objectives,
)
from hashtune.train.bits import is_feasible

__all__ = ["SpaceError", "Domain", "GridPoint", "Replicates", "SearchSpace", "load_space", "space_text"]

SEARCHES = ("grid", "tpe", "random", "nsga2")
DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "int")
TOP_LEVEL = {
    "description",
    "search",
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "workers",
    "cpus_per_trial",
    "gpus_per_worker",
    "time_budget_s",
    "scheduler",
    "seeds",
    "fixed",
    "variants",
    "params",
    "max_failures",
    "checkpoints_to_keep",
    "budget",
    "base",
    "replicates",
    "sampler",
}


@dataclass(frozen=True)
class Domain:
    kind: str
    values: tuple
    when: dict[str, Any] | None = None
    """Sampled only where every `key: value` holds (tpe/random), e.g. k_groups only when dual_stream is true."""


@dataclass(frozen=True)
class GridPoint:
    """One run of a grid: a variant at one combination of the searched values, at one seed."""

    variant: str
    """The variant's name ("" in a space without variants)."""
    at: str
    """The searched values, e.g. `k_groups=2 bits=32` ("" in a space without params)."""
    seed: int | tuple[int, int]
    """The seed (data and train alike), or the `(data, train)` pair of a crossed design."""
    overrides: dict[str, Any]
    """Everything the point sets over the base config: fixed, variant, searched values, seeds."""

    @property
    def label(self) -> str:
        """What names the trial in Tune's table and in MLflow, e.g. `w/o Q k_groups=2 seed=1`."""
        seed = f"data_seed={self.seed[0]} seed={self.seed[1]}" if isinstance(self.seed, tuple) else f"seed={self.seed}"
        return " ".join(part for part in (self.variant, self.at, seed) if part)

    @property
    def arm(self) -> tuple[str, str]:
        """(variant, the searched values): what seeds replicate."""
        return self.variant, self.at

    @property
    def train_seed(self) -> int:
        return int(self.overrides["train.seed"])


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (see the module docstring for the YAML schema)."""

    name: str
    search: str = "grid"
    description: str = ""
    metric: str = SELECTION_METRIC
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int = 2
    workers: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    checkpoints_to_keep: int = 1
    budget: Budget | None = None
    base: str | None = None
    """A finished tuning experiment whose best trial is the configuration every arm starts from (`--base`)."""

    def budget_reached(self, totals: Mapping[str, float]) -> bool:
        """Whether the sweep's cost totals (`cost/*`, as its parent run holds them) reach its budget."""
        return budget_reached(totals, self.budget.limit if self.budget else None)

    time_budget_s: float | None = None
    scheduler: Scheduler = Scheduler()
    seeds: tuple = (0,)
    """Seeds that set `data.seed` and `train.seed` alike, or `(data, train)` pairs of a crossed design."""
    fixed: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Domain] = field(default_factory=dict)
    replicates: Replicates | None = None
    """The adaptive seed schedule (grid spaces with variants), or None: every point at every seed."""
    sampler: SamplerOptions | None = None
    objectives: tuple[tuple[str, str], ...] = ()
    """(metric, mode) of each objective of a multi-objective space (`metric` and `mode` are the first's); ()."""

    @property
    def reference(self) -> str | None:
        """The variant every other is compared with: the first one listed."""
        return next(iter(self.variants), None)

    def grid_points(self, base: Config) -> tuple[list[GridPoint], list[GridPoint]]:
        """All grid points as (feasible, infeasible) lists, in a stable order (variant, searched values, seed)."""
        variants = self.variants or {"": {}}
        names = list(self.params)
        value_lists = [self.params[name].values for name in names]
        feasible, infeasible = [], []
        seeds = self.replicates.seeds if self.replicates else self.seeds
        for variant, values, seed in itertools.product(variants, itertools.product(*value_lists), seeds):
            overrides = {**self.fixed, **variants[variant], **dict(zip(names, values)), **_seed_overrides(seed)}
            at = " ".join(f"{name.split('.')[-1]}={value}" for name, value in zip(names, values))
            point = GridPoint(variant=variant, at=at, seed=seed, overrides=overrides)
            (feasible if is_feasible(base.replace(overrides)) else infeasible).append(point)
        return feasible, infeasible


def _seed_overrides(seed: int | tuple[int, int]) -> dict[str, int]:
    if isinstance(seed, tuple):
        return {"data.seed": seed[0], "train.seed": seed[1]}
    return dict.fromkeys(SEED_KEYS, seed)


def space_text(name_or_path: str) -> tuple[str, str, str]:
    """`(name, where, YAML text)` of a shipped space by name (`ablations`) or of a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpaceError(f"space file {name_or_path!r} does not exist")
        return path.stem, str(path), _read_text(path, str(path))
    shipped = shipped_spaces()
    if name_or_path not in shipped:
        raise SpaceError(
            f"unknown space {name_or_path!r}; shipped spaces: {', '.join(sorted(shipped))} (or give a .yaml path)"
        )
    return name_or_path, f"search_spaces/{name_or_path}.yaml", _read_text(shipped[name_or_path], name_or_path)


def _read_text(resource, where: str) -> str:
    try:
        return resource.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpaceError(f"{where}: not UTF-8 text (byte {error.start}); save the space as UTF-8") from None


def _check_overrides(where: str, base: Config, overrides: dict[str, Any]) -> None:
    try:
        base.replace(overrides)
    except ConfigError as error:
        raise SpaceError(f"{where}: {error}") from None


def _parse_domain(where: str, key: str, spec: Any, base: Config, search: str) -> Domain:
    kinds = [name for name in spec if name != "when"] if isinstance(spec, dict) else []
    if len(kinds) != 1 or kinds[0] not in DOMAIN_KINDS:
        raise SpaceError(
            f"{where}: params.{key} must be one of {{{', '.join(DOMAIN_KINDS)}: ...}} (and optionally when:), got "
            f"{spec!r}"
        )
    kind, values = kinds[0], spec[kinds[0]]
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: params.{key}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2 or not values[0] < values[1]:
            raise SpaceError(f"{where}: params.{key}: {kind} needs [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise SpaceError(f"{where}: params.{key}: loguniform needs low > 0, got {values!r}")
        if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SpaceError(f"{where}: params.{key}: int needs integer bounds, got {values!r}")
        if search == "grid":
            raise SpaceError(f"{where}: params.{key}: a grid space takes choice or grid domains, not {kind}")
    if kind == "grid" and search != "grid":
        raise SpaceError(f"{where}: params.{key}: grid domains need search: grid (use choice with {search})")
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if kind in ("choice", "grid") and repeated:
        raise SpaceError(
            f"{where}: params.{key}: {kind} lists {repeated[0]!r} more than once in {values!r}; list each value once"
        )
    for value in values:
        _check_overrides(f"{where}: params.{key}", base, {key: value})
    when = spec.get("when")
    if when is not None and (search == "grid" or not isinstance(when, dict) or not when):
        raise SpaceError(
            f"{where}: params.{key}.when must be a mapping {{key: value}} in a tpe or random space, got {when!r} "
            f"({search})"
        )
    return Domain(kind=kind, values=tuple(values), when=dict(when) if when else None)


def _check_conditions(where: str, params: dict[str, Domain]) -> None:
    """Every `when` names another searched key with a choice domain, and one of its values."""
    for key, domain in params.items():
        for other, value in (domain.when or {}).items():
            condition = params.get(other)
            if (
                other == key
                or condition is None
                or condition.kind != "choice"
                or condition.when
                or value not in condition.values
            ):
                raise SpaceError(
                    f"{where}: params.{key}.when: {other}: {value!r} must name another searched key with an "
                    f"unconditional choice domain and one of its values"
                )


def _parse_seeds(where: str, seeds: Any, search: str) -> tuple:
    if isinstance(seeds, dict):
        if set(seeds) != {"data", "train"} or search != "grid":
            raise SpaceError(
                f"{where}: crossed seeds are {{data: [...], train: [...]}} in a grid space, got {seeds!r} ({search})"
            )
        data, train = (_parse_seeds(f"{where}: seeds.{key}", seeds[key], search) for key in ("data", "train"))
        return tuple(itertools.product(data, train))
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise SpaceError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if search != "grid" and len(seeds) != 1:
        raise SpaceError(
            f"{where}: a {search} search takes one seed, got {seeds}; replicate chosen configs with a grid space"
        )
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise SpaceError(
            f"{where}: seeds {repeated} appear more than once in {seeds}; each seed is one replicate, list it once"
        )
    return tuple(seeds)


def _parse_base(where: str, base: Any) -> str | None:
    if base is not None and not (isinstance(base, str) and base):
        raise SpaceError(f"{where}: base must name a finished tuning experiment, e.g. base: tune; got {base!r}")
    return base


INTEGERS = {"num_samples": 1, "max_concurrent": 1, "workers": 0, "max_failures": 0, "checkpoints_to_keep": 1}
NUMBERS = {"cpus_per_trial": 1.0, "gpus_per_worker": 0.0}
MODES = ("max", "min")


def _read_tree(where: str, text: str) -> dict:
    try:
        tree = read_yaml(text)
    except YamlError as error:
        raise SpaceError(f"{where}: {error}") from None
    if not isinstance(tree, dict):
        raise SpaceError(f"{where}: a space is a mapping of {', '.join(sorted(TOP_LEVEL))}")
    unknown = set(tree) - TOP_LEVEL
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(TOP_LEVEL))}")
    for key in ("fixed", "variants", "params"):
        if tree.get(key) is not None and not isinstance(tree[key], dict):
            raise SpaceError(f"{where}: {key} must be a mapping (key: value lines), got a {type(tree[key]).__name__}")
    for name, overrides in (tree.get("variants") or {}).items():
        if overrides is not None and not isinstance(overrides, dict):
            raise SpaceError(f"{where}: variants.{name} must be a mapping of config overrides, got {overrides!r}")
    return tree


def _settings(where: str, tree: dict) -> dict[str, Any]:
    """The space's scalar settings, each checked for its type and range."""
    settings = {
        key: number(where, tree, key, default, int, default if key != "max_concurrent" else 1)
        for key, default in INTEGERS.items()
    }
    settings |= {key: number(where, tree, key, default, float, 0.0) for key, default in NUMBERS.items()}
    if tree.get("time_budget_s") is not None:
        settings["time_budget_s"] = number(where, tree, "time_budget_s", None, float, 1e-9)
    objectives = parse_objectives(where, tree.get("metric", SELECTION_METRIC), tree.get("mode", "max"))
    metric, mode = objectives[0] if objectives else (tree.get("metric", SELECTION_METRIC), tree.get("mode", "max"))
    if mode not in MODES:
        raise SpaceError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        settings["metric"] = require_val_metric(metric)
    except ConfigError as error:
        raise SpaceError(f"{where}: {error}") from None
    description = str(tree.get("description", "")).strip()
    return settings | {"mode": mode, "objectives": objectives, "description": description}


def load_space(name_or_path: str, base: Config | None = None) -> SearchSpace:
    """Load and validate a space; every error is one line naming the file and the key."""
    space_name, where, text = space_text(name_or_path)
    base = base or Config()
    tree = _read_tree(where, text)
    search = tree.get("search", "grid")
    if search not in SEARCHES:
        raise SpaceError(f"{where}: search must be one of {', '.join(SEARCHES)}, got {search!r}")
    fixed, variants = (
        dict(tree.get("fixed") or {}),
        {name: dict(o or {}) for name, o in (tree.get("variants") or {}).items()},
    )
    _check_overrides(f"{where}: fixed", base, fixed)
    for name, overrides in variants.items():
        _check_overrides(f"{where}: variants.{name}", base, {**fixed, **overrides})
    params = {key: _parse_domain(where, key, spec, base, search) for key, spec in (tree.get("params") or {}).items()}
    if not params and not variants:
        raise SpaceError(f"{where}: nothing to search; give params or variants")
    _check_conditions(where, params)
    space = SearchSpace(
        name=space_name,
        search=search,
        **_settings(where, tree),
        scheduler=Scheduler.parse(where, tree.get("scheduler")),
        seeds=_parse_seeds(where, tree.get("seeds", [0]), search),
        fixed=fixed,
        variants=variants,
        params=params,
        budget=Budget.parse(where, tree.get("budget")),
        base=_parse_base(where, tree.get("base")),
        replicates=Replicates.parse(where, tree),
        sampler=SamplerOptions.parse(where, tree.get("sampler"), search),
    )
    check_space(where, space, base)
    return space
