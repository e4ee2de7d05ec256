"""Small-sample statistics over seeds: t-intervals of a mean and paired differences between variants."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "MeanCI",
    "PairedDifference",
    "mean_ci",
    "paired_difference",
    "VERDICTS",
    "ClaimVerdict",
    "claim_verdict",
    "minimum_detectable_effect",
    "seeds_for_half_width",
    "VarianceSplit",
    "variance_components",
]


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with the half-width of its two-sided t-interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


@dataclass(frozen=True)
class PairedDifference:
    """`a - b` paired by seed: the mean difference, its t-interval, the paired t-test's p-value, wins of `a`."""

    difference: MeanCI
    p_value: float
    wins: int

    @property
    def n(self) -> int:
        return self.difference.n


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean and t-interval half-width `t_{(1+c)/2, n-1} * s / sqrt(n)` (sample standard deviation s)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if n == 1:
        return MeanCI(float(values[0]), math.nan, 1)
    sem = values.std(ddof=1) / math.sqrt(n)
    return MeanCI(float(values.mean()), float(stats.t.ppf((1 + confidence) / 2, n - 1) * sem), n)


def paired_difference(a: dict, b: dict, confidence: float = 0.95) -> PairedDifference | None:
    """Compare two variants on the seeds both have (`{seed: value}` each); None when no seed is shared.

    The p-value is the two-sided paired t-test's (NaN with fewer than 2 pairs or identical differences).
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    differences = np.array([a[seed] - b[seed] for seed in shared], dtype=np.float64)
    p_value = math.nan
    if len(shared) >= 2 and np.ptp(differences) > 0:
        p_value = float(stats.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue)
    return PairedDifference(mean_ci(differences, confidence), p_value, int((differences > 0).sum()))


VERDICTS = ("holds", "reversed", "equivalent", "inconclusive")
POWER = 0.8


@dataclass(frozen=True)
class ClaimVerdict:
    """What paired seeds can say about a claim (differences oriented so that > 0 means the claim holds).

    `verdict`: `holds` (CI above 0), `reversed` (CI below 0), `equivalent` (TOST: within ±delta), or
    `inconclusive` (none of these: never "does not hold"). `mde`: the smallest true difference a two-sided
    paired t-test at `alpha` detects with 80% power at these seeds; `seeds_for_delta`: the seeds a CI
    half-width of `delta` needs at the observed spread.
    """

    verdict: str
    difference: MeanCI
    n: int
    tost_p: float
    mde: float
    seeds_for_delta: int | None
    alpha: float
    delta: float


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The difference a two-sided paired t-test at `alpha` detects with `power` (statsmodels' TTestPower)."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not sd > 0:
        return math.nan
    return (
        float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"))
        * sd
    )


def seeds_for_half_width(sd: float, delta: float, confidence: float = 0.95, limit: int = 10_000) -> int | None:
    """The fewest seeds whose t-interval half-width `t_{(1+c)/2, n-1} sd / sqrt(n)` is at most `delta`."""
    if not sd > 0:
        return 2
    for n in range(2, limit + 1):
        if stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n) <= delta:
            return n
    return None


def claim_verdict(differences, *, delta: float, alpha: float = 0.05) -> ClaimVerdict:
    """The verdict of paired differences (claim-oriented) at level `alpha` with equivalence margin `delta`."""
    from statsmodels.stats.weightstats import DescrStatsW

    values = np.asarray(differences, dtype=np.float64)
    n = len(values)
    ci = mean_ci(values, 1 - alpha) if n else MeanCI(math.nan, math.nan, 0)
    sd = float(values.std(ddof=1)) if n >= 2 else math.nan
    tost_p = float(DescrStatsW(values).ttost_mean(-delta, delta)[0]) if n >= 2 and sd > 0 else math.nan
    if n < 2 or math.isnan(ci.half_width):
        verdict = "inconclusive"
    elif ci.low > 0:
        verdict = "holds"
    elif ci.high < 0:
        verdict = "reversed"
    elif tost_p < alpha:
        verdict = "equivalent"
    else:
        verdict = "inconclusive"
    return ClaimVerdict(
        verdict,
        ci,
        n,
        tost_p,
        minimum_detectable_effect(sd, n, alpha),
        seeds_for_half_width(sd, delta, 1 - alpha) if n >= 2 else None,
        alpha,
        delta,
    )


@dataclass(frozen=True)
class VarianceSplit:
    """Variance components of a crossed data-seed x train-seed design (one run per pair)."""

    data: float
    train: float
    residual: float
    n_data: int
    n_train: int


def variance_components(values: dict[tuple[int, int], float]) -> VarianceSplit | None:
    """Split seed variance into data split, training seed and what is left, from `{(data_seed, train_seed): value}`.

    Two-way ANOVA without replication (statsmodels' `anova_lm`); the random-effects components are the
    method-of-moments ones, `(MS_data - MS_res) / n_train` and `(MS_train - MS_res) / n_data`, floored at 0.
    Uses the largest complete crossing (data seeds that have every train seed); None below 2 x 2.
    """
    import pandas as pd
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    trains = sorted({train for _, train in values})
    datas = sorted(data for data in {data for data, _ in values} if all((data, train) in values for train in trains))
    if len(datas) < 2 or len(trains) < 2:
        return None
    frame = pd.DataFrame([(d, t, values[d, t]) for d in datas for t in trains], columns=["data", "train", "value"])
    mean_square = anova_lm(ols("value ~ C(data) + C(train)", frame).fit())["mean_sq"]
    residual = float(mean_square["Residual"])
    return VarianceSplit(
        max(0.0, (float(mean_square["C(data)"]) - residual) / len(trains)),
        max(0.0, (float(mean_square["C(train)"]) - residual) / len(datas)),
        residual,
        len(datas),
        len(trains),
    )
