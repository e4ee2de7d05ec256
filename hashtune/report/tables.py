"""The studies' tables, as pure functions of `TrialRun`s: ablation (TransHash Tab. 2), its claims checked in words,
and the seed-variance split (the sensitivity tables are `hashtune.report.sensitivity`).

Every table reads `test/mAP` of finished runs only (trials ASHA stopped early have no test metrics).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

from hashtune.config import SEED_KEYS, to_flat_dict
from hashtune.metric_names import TEST_MAP
from hashtune.report.runs import TrialRun
from hashtune.report.stats import (
    ClaimVerdict,
    MeanCI,
    PairedDifference,
    claim_verdict,
    mean_ci,
    paired_difference,
    variance_components,
)

__all__ = [
    "METRIC",
    "AblationCell",
    "AblationTable",
    "ablation_table",
    "paper_directions",
    "ClaimRow",
    "claim_rows",
    "claims_markdown",
    "variance_table",
    "is_crossed",
    "replicate_key",
    "varying_params",
    "markdown_table",
    "csv_table",
    "format_number",
]

METRIC = TEST_MAP
LEARNED = "test/mAP_learned"
# What each paper claims about a variant relative to the full model (TransHash Tab. 2; He & Wei 2023)
CLAIMS = {
    "w/o C": ("full > w/o C", "the Cauchy likelihood beats the sigmoid one", +1),
    "w/o P": ("full > w/o P", "the local (part) branch helps", +1),
    "w/o Q": ("full > w/o Q", "the quantization loss helps", +1),
    "w/o cls": ("full > w/o cls", "the classification loss helps", +1),
    "asymmetric": ("asymmetric > full", "the asymmetric strategy beats pairwise training", -1),
}


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, one line per row, cells as str() gives them; ends with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]) + "\n"


def csv_table(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def format_number(value: float, digits: int = 4) -> str:
    """`value` to `digits` decimals; blank for None or NaN."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


@dataclass(frozen=True)
class AblationCell:
    variant: str
    bits: int
    per_seed: dict[int | str, float]  # by seed, or by "data/train" seeds in a crossed design
    summary: MeanCI
    versus_reference: PairedDifference | None  # this row minus its reference row, paired by seed
    cpu_seconds: float = 0.0  # what its runs cost, all seeds together (`cost/cpu_seconds`)


@dataclass(frozen=True)
class AblationTable:
    """Rows = variants, columns = bits; cells = mean ± 95% t-CI of test/mAP over seeds.

    A row is a variant, plus the values of any other parameter that varies within it (`full k_groups=2`),
    so replicates are only ever seeds; each row's reference is the reference variant with the same values.
    """

    variants: list[str]  # row labels
    bits: list[int]
    cells: dict[tuple[str, int], AblationCell]
    reference: str | None
    row_variant: dict[str, str] = field(default_factory=dict)
    row_reference: dict[str, str | None] = field(default_factory=dict)

    def best_variant(self, bits: int) -> str:
        present = [v for v in self.variants if (v, bits) in self.cells]
        return max(present, key=lambda v: self.cells[v, bits].summary.mean)

    def to_markdown(self) -> str:
        header = ["variant"] + [f"{b} bits" for b in self.bits]
        if self.reference:
            header += [f"Δ vs {self.reference} ({b} bits), paired over seeds" for b in self.bits]
        rows = []
        for variant in self.variants:
            row = [variant]
            for b in self.bits:
                cell = self.cells.get((variant, b))
                text = cell.summary.format() if cell else ""
                row.append(f"**{text}**" if cell and self.best_variant(b) == variant else text)
            if self.reference:
                row += [self._difference_text(variant, b) for b in self.bits]
            row.append(f"{sum(cell.cpu_seconds for (v, _), cell in self.cells.items() if v == variant) / 3600:.3f}")
            rows.append(row)
        return markdown_table(header + ["CPU-hours (all seeds)"], rows)

    def _difference_text(self, variant: str, bits: int) -> str:
        cell = self.cells.get((variant, bits))
        if cell is None or cell.versus_reference is None:
            return ""
        d = cell.versus_reference
        interval = "" if math.isnan(d.difference.half_width) else f" ± {d.difference.half_width:.3f}"
        p_value = "" if math.isnan(d.p_value) else f", p={d.p_value:.3f}"
        return f"{d.difference.mean:+.3f}{interval}{p_value} ({d.wins}/{d.n} seeds higher)"

    def to_csv(self) -> str:
        header = [
            "variant",
            "bits",
            "n",
            "mean",
            "ci95_low",
            "ci95_high",
            "seeds",
            "values",
            "diff_vs_reference",
            "diff_ci95_low",
            "diff_ci95_high",
            "paired_t_p",
            "seeds_higher",
            "pairs",
        ]
        rows = []
        for (variant, b), cell in sorted(
            self.cells.items(), key=lambda item: (self.variants.index(item[0][0]), item[0][1])
        ):
            s, d = cell.summary, cell.versus_reference
            seeds = sorted(cell.per_seed)
            difference = (
                [
                    format_number(d.difference.mean),
                    format_number(d.difference.low),
                    format_number(d.difference.high),
                    format_number(d.p_value),
                    d.wins,
                    d.n,
                ]
                if d
                else [""] * 6
            )
            rows.append(
                [
                    variant,
                    b,
                    s.n,
                    format_number(s.mean),
                    format_number(s.low),
                    format_number(s.high),
                    " ".join(map(str, seeds)),
                    " ".join(format_number(cell.per_seed[seed]) for seed in seeds),
                    *difference,
                ]
            )
        return csv_table(header, rows)


def _within_variant_keys(runs: list[TrialRun]) -> list[str]:
    """Config keys (seeds aside) that vary among runs of the same variant and bits."""
    groups: dict[tuple[str, int], list[TrialRun]] = defaultdict(list)
    for run in runs:
        groups[run.variant, run.bits].append(run)
    keys = set().union(*(varying_params(group) for group in groups.values()))
    return sorted(keys - set(SEED_KEYS))


def is_crossed(runs: list[TrialRun]) -> bool:
    """Whether the runs cross data seeds with training seeds (then a replicate is the pair, not one seed)."""
    return len({run.config.data.seed for run in runs}) > 1 and any(
        run.config.data.seed != run.config.train.seed for run in runs
    )


def replicate_key(run: TrialRun, crossed: bool) -> int | str:
    """What pairs runs across variants: the training seed, or `"data/train"` in a crossed design."""
    return f"{run.config.data.seed}/{run.config.train.seed}" if crossed else run.config.train.seed


def ablation_table(runs: list[TrialRun], reference: str = "full") -> AblationTable | None:
    """The ablation table of the finished runs that carry a variant tag; None when none do.

    A seed run twice in the same row (a re-run trial) counts once, with its latest run.
    """
    tagged = [run for run in runs if run.status == "finished" and run.variant]
    if not tagged:
        return None
    extra = _within_variant_keys(tagged)
    crossed = is_crossed(tagged)
    per_cell: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    cost: dict[tuple[str, int], float] = defaultdict(float)
    row_variant, row_suffix = {}, {}
    for run in tagged:
        flat = to_flat_dict(run.config)
        suffix = " ".join(f"{key.split('.')[-1]}={flat[key]}" for key in extra)
        label = f"{run.variant} {suffix}".strip()
        row_variant[label], row_suffix[label] = run.variant, suffix
        per_cell[label, run.bits][replicate_key(run, crossed)] = run.metrics[METRIC]
        cost[label, run.bits] += run.metrics.get("cost/cpu_seconds", 0.0)
        if LEARNED in run.metrics:  # the asymmetric strategy retrieved as ADSH evaluates: its own row
            learned = f"{label} (learned database codes)"
            row_variant[learned], row_suffix[learned] = run.variant, suffix
            per_cell[learned, run.bits][replicate_key(run, crossed)] = run.metrics[LEARNED]
    order = list(CLAIMS)
    rows = sorted(
        row_variant,
        key=lambda r: (
            row_suffix[r],
            row_variant[r] != reference,
            order.index(row_variant[r]) if row_variant[r] in order else len(order),
            r,
        ),
    )
    row_reference = {
        row: (f"{reference} {row_suffix[row]}".strip() if row_variant[row] != reference else None) for row in rows
    }
    row_reference = {row: ref if ref in row_variant else None for row, ref in row_reference.items()}
    bits = sorted({b for _, b in per_cell})
    cells = {}
    for (row, b), per_seed in per_cell.items():
        ref = row_reference[row]
        versus = paired_difference(per_seed, per_cell[ref, b]) if ref is not None and (ref, b) in per_cell else None
        cells[row, b] = AblationCell(
            row_variant[row], b, per_seed, mean_ci(list(per_seed.values())), versus, cost[row, b]
        )
    has_reference = reference in row_variant.values()
    return AblationTable(rows, bits, cells, reference if has_reference else None, row_variant, row_reference)


@dataclass(frozen=True)
class ClaimRow:
    """One paper claim at one code length (and row suffix): its paired, claim-oriented verdict."""

    claim: str
    meaning: str
    bits: int
    where: str
    verdict: ClaimVerdict


def claim_rows(table: AblationTable, *, delta: float = 0.02, alpha: float = 0.05) -> list[ClaimRow]:
    """Every claim the table can test: differences paired by seed, oriented so > 0 means the claim holds."""
    if table.reference is None:
        return []
    rows = []
    for row in table.variants:
        variant, reference = table.row_variant.get(row, row), table.row_reference.get(row)
        if variant not in CLAIMS or reference is None:
            continue
        claim, meaning, sign = CLAIMS[variant]
        for b in table.bits:
            cell, base = table.cells.get((row, b)), table.cells.get((reference, b))
            if cell is None or base is None:
                continue
            shared = sorted(set(cell.per_seed) & set(base.per_seed))
            differences = [-sign * (cell.per_seed[seed] - base.per_seed[seed]) for seed in shared]
            rows.append(
                ClaimRow(
                    claim, meaning, b, row[len(variant) :].strip(), claim_verdict(differences, delta=delta, alpha=alpha)
                )
            )
    return rows


def paper_directions(table: AblationTable, *, delta: float = 0.02, alpha: float = 0.05) -> list[str]:
    """One sentence per claim: what the seeds support, in one of four words (never "does not hold")."""
    sentences = []
    for row in claim_rows(table, delta=delta, alpha=alpha):
        v = row.verdict
        interval = "" if math.isnan(v.difference.half_width) else f" ± {v.difference.half_width:.3f}"
        power = "" if math.isnan(v.mde) else f"; detectable at 80% power: {v.mde:.3f}"
        needed = f"; seeds for a ±{delta:g} interval: {v.seeds_for_delta}" if v.seeds_for_delta else ""
        where = f", {row.where}" if row.where else ""
        sentences.append(
            f"{row.claim} ({row.meaning}) at {row.bits} bits{where}: **{v.verdict}** "
            f"({v.difference.mean:+.3f}{interval} mAP in the claim's direction, n={v.n}{power}{needed})."
        )
    return sentences


def claims_markdown(rows: list[ClaimRow], delta: float) -> str:
    header = [
        "claim",
        "bits",
        "Δ in the claim's direction (CI)",
        "n",
        "verdict",
        "TOST p (±delta)",
        "MDE at 80% power",
        f"seeds for ±{delta:g}",
    ]
    body = [
        [
            f"{r.claim}{f' ({r.where})' if r.where else ''}",
            str(r.bits),
            f"{r.verdict.difference.mean:+.3f} [{format_number(r.verdict.difference.low, 3)}, "
            f"{format_number(r.verdict.difference.high, 3)}]",
            str(r.verdict.n),
            r.verdict.verdict,
            format_number(r.verdict.tost_p, 3),
            format_number(r.verdict.mde, 3),
            str(r.verdict.seeds_for_delta or ""),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def varying_params(runs: list[TrialRun]) -> dict[str, list]:
    """Config keys whose value differs between the given runs, with their sorted distinct values."""
    values: dict[str, set] = defaultdict(set)
    for run in runs:
        for key, value in to_flat_dict(run.config).items():
            values[key].add(value)
    return {
        key: sorted(found, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
        for key, found in values.items()
        if len(found) > 1
    }


def variance_table(runs: list[TrialRun]) -> str | None:
    """Per (variant, bits) of a crossed seed design: how much of the seed noise the data split causes and how
    much the training seed (`variance_components`); None when no cell crosses >= 2 data and >= 2 train seeds."""
    cells: dict[tuple[str, int], dict[tuple[int, int], float]] = defaultdict(dict)
    for run in runs:
        if run.status == "finished" and METRIC in run.metrics:
            cells[run.variant, run.bits][run.config.data.seed, run.config.train.seed] = run.metrics[METRIC]
    rows = []
    for (variant, bits), values in sorted(cells.items()):
        split = variance_components(values)
        if split is None:
            continue
        total = split.data + split.train + split.residual
        share = (lambda part: f"{100 * part / total:.0f}%") if total > 0 else (lambda part: "-")
        rows.append(
            [
                variant or "-",
                str(bits),
                f"{split.n_data} x {split.n_train}",
                f"{split.data**0.5:.4f} ({share(split.data)})",
                f"{split.train**0.5:.4f} ({share(split.train)})",
                f"{split.residual**0.5:.4f} ({share(split.residual)})",
            ]
        )
    if not rows:
        return None
    header = [
        "variant",
        "bits",
        "data x train seeds",
        "sd from the data split (share)",
        "sd from the training seed (share)",
        "sd left (interaction + noise)",
    ]
    return markdown_table(header, rows)
