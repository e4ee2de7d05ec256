"""Small-sample statistics over seeds: t-intervals of a mean and paired differences between variants."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "PairedDifference", "mean_ci", "paired_difference"]


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
