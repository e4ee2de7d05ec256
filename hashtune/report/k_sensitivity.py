"""The K x bits study in words: every K against the best K of its code length, and TransHash Tab. 3's findings.

Per code length the best K is chosen on validation (`val/best_mAP`, mean over seeds), so the test
differences below are not the ones that picked it. Each other K's difference to it is paired by seed
(`test/mAP`), with its CI, two one-sided tests against ±delta, the effect 80% power detects at these
seeds and the seeds a ±delta interval needs, every one at `alpha / m` for the m comparisons made at that
code length (Bonferroni: the chance of any false call among them stays under alpha). TransHash (Chen et al. 2021, Tab.
3)
reports three findings, each given one of the four verdict words here:

* "mAP is not very sensitive to K" (K 2..6 within 0.017 at 48 bits): **holds** when every feasible K in
  2..6 is within ±delta of the best K (two one-sided tests, even where a smaller difference is significant);
  **reversed** when one of them is worse by more than delta
  (its CI entirely below -delta); otherwise **inconclusive**.
* "K = 2 for every code length": the other Ks against K = 2, oriented so that > 0 favours K = 2:
  **reversed** when some K beats K = 2, **holds** when K = 2 beats every K it is not equivalent to
  (and at least one), **equivalent** when it is equivalent to all, otherwise **inconclusive**.
* "local heads under 4 bits fail to converge": those cells are not run (`-`), here as in the paper, so
  the study gives no verdict on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from hashtune.metric_names import SELECTION_METRIC
from hashtune.report.runs import TrialRun
from hashtune.report.stats import ClaimVerdict, claim_verdict
from hashtune.report.tables import METRIC, format_number, is_crossed, markdown_table, replicate_key

__all__ = ["SELECTION_METRIC", "KVersusBest", "k_versus_best", "k_findings", "k_versus_best_markdown"]

PAPER_K = range(2, 7)  # the Ks of TransHash's Tab. 3
PAPER_TAB3 = (
    "TransHash Tab. 3 (CIFAR-10, 48 bits): K 2..6 give 0.9017-0.9187 mAP (a 0.017 spread), K = 2 is used for every "
    "code length, and local heads under 4 bits fail to converge (its `-` cells). Here:"
)
VERSUS_BEST = {"holds": "higher", "reversed": "lower", "equivalent": "equivalent", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class KVersusBest:
    """One K at one code length against that code length's best K (chosen on validation)."""

    k: int
    bits: int
    best_k: int
    test_mean: float
    verdict: ClaimVerdict  # of test/mAP(K) - test/mAP(best K), paired by seed


def _per_seed(runs: list[TrialRun], metric: str) -> dict[tuple[int, int], dict]:
    """`{(K, bits): {seed: metric}}` over finished dual-stream runs."""
    finished = [run for run in runs if run.status == "finished" and run.config.model.dual_stream]
    crossed = is_crossed(finished)
    cells: dict[tuple[int, int], dict] = defaultdict(dict)
    for run in finished:
        if metric in run.metrics:
            cells[run.k_groups, run.bits][replicate_key(run, crossed)] = run.metrics[metric]
    return cells


def _paired(cells: dict, a: tuple[int, int], b: tuple[int, int], *, delta: float, alpha: float) -> ClaimVerdict:
    """The verdict on cell a - cell b, paired over the seeds both have."""
    shared = sorted(set(cells[a]) & set(cells[b]))
    return claim_verdict([cells[a][seed] - cells[b][seed] for seed in shared], delta=delta, alpha=alpha)


def _mean(values: dict) -> float:
    return float(np.mean(list(values.values())))


def k_versus_best(runs: list[TrialRun], *, delta: float = 0.02, alpha: float = 0.05) -> list[KVersusBest]:
    """Every run (K, bits) cell against its code length's best K; [] unless some code length has two Ks."""
    test, val = _per_seed(runs, METRIC), _per_seed(runs, SELECTION_METRIC)
    rows = []
    for bits in sorted({b for _, b in test}):
        ks = sorted(k for k, b in test if b == bits and (k, b) in val)
        if len(ks) < 2:
            continue
        best = max(ks, key=lambda k: (_mean(val[k, bits]), -k))
        level = alpha / (len(ks) - 1)  # Bonferroni over this code length's comparisons with its best K
        rows += [
            KVersusBest(
                k, bits, best, _mean(test[k, bits]), _paired(test, (k, bits), (best, bits), delta=delta, alpha=level)
            )
            for k in ks
        ]
    return rows


def _insensitive(rows: list[KVersusBest], delta: float) -> str:
    others = [row for row in rows if row.k != row.best_k and row.k in PAPER_K]
    if not others:
        return "inconclusive"
    if any(row.verdict.difference.high < -delta for row in others):
        return "reversed"
    return (
        "holds" if all(row.verdict.tost_p < row.verdict.alpha for row in others) else "inconclusive"
    )  # each within ±delta


def _k2_verdict(test: dict, bits: int, delta: float, alpha: float) -> tuple[str, list[str]]:
    others = sorted(k for k, b in test if b == bits and k != 2)
    if (2, bits) not in test or not others:
        return "inconclusive", []
    verdicts = {k: _paired(test, (2, bits), (k, bits), delta=delta, alpha=alpha / len(others)) for k in others}
    details = [f"K=2 vs K={k}: {v.verdict} ({v.difference.mean:+.3f}, n={v.n})" for k, v in verdicts.items()]
    words = [v.verdict for v in verdicts.values()]
    if "reversed" in words:
        return "reversed", details
    if all(word == "equivalent" for word in words):
        return "equivalent", details
    return ("inconclusive" if "inconclusive" in words else "holds"), details


def k_findings(runs: list[TrialRun], rows: list[KVersusBest], *, delta: float = 0.02, alpha: float = 0.05) -> list[str]:
    """TransHash Tab. 3's findings (given `k_versus_best(runs)`), one sentence per code length each, in the four
    verdict words."""
    test = _per_seed(runs, METRIC)
    sentences = [PAPER_TAB3] if rows else []
    for bits in sorted({row.bits for row in rows}):
        here = [row for row in rows if row.bits == bits]
        paper = [row.test_mean for row in here if row.k in PAPER_K]
        spread = f"; test means of K in 2..6 span {max(paper) - min(paper):.3f}" if len(paper) > 1 else ""
        sentences.append(
            f'{bits} bits, "mAP is not very sensitive to K": **{_insensitive(here, delta)}** (best K on validation: '
            f"{here[0].best_k}{spread}; equivalence margin ±{delta:g})."
        )
        verdict, details = _k2_verdict(test, bits, delta, alpha)
        sentences.append(
            f'{bits} bits, "K = 2": **{verdict}**' + (f" ({'; '.join(details)})." if details else " (K = 2 not run).")
        )
    if sentences:
        sentences.append(
            '"Local heads under 4 bits fail to converge": no verdict: those cells are not run (`-`), as in the paper.'
        )
    return sentences


def k_versus_best_markdown(rows: list[KVersusBest], delta: float) -> str:
    header = [
        "bits",
        "K",
        "best K (val)",
        "test mAP",
        "Δ test mAP to best K (CI)",
        "CI level",
        "n",
        "verdict",
        "TOST p (±delta)",
        "MDE at 80% power",
        f"seeds for ±{delta:g}",
    ]
    body = []
    for row in rows:
        v = row.verdict
        interval = (
            ""
            if row.k == row.best_k
            else (
                f"{v.difference.mean:+.3f} [{format_number(v.difference.low, 3)}, "
                f"{format_number(v.difference.high, 3)}]"
                if not math.isnan(v.difference.mean)
                else ""
            )
        )
        word = "best" if row.k == row.best_k else VERSUS_BEST[v.verdict]
        level = "" if row.k == row.best_k else f"{100 * (1 - v.alpha):.4g}%"
        body.append(
            [
                str(row.bits),
                str(row.k),
                str(row.best_k),
                f"{row.test_mean:.3f}",
                interval,
                level,
                str(v.n),
                word,
                "" if row.k == row.best_k else format_number(v.tost_p, 3),
                "" if row.k == row.best_k else format_number(v.mde, 3),
                "" if row.k == row.best_k else str(v.seeds_for_delta or ""),
            ]
        )
    return markdown_table(header, body)
