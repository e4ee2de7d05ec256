"""Adaptive replication: an ablation adds seeds, round by round, to the arms whose claim is not settled yet.

A grid space with variants may say::

    replicates: {min: 3, max: 20, step: 3, delta: 0.02, alpha: 0.05}

Every arm (a variant at a grid point) first runs seeds 0 .. min-1. After each round, each arm is compared
with the reference arm (the first variant, at the same grid point) on the seeds both finished: its
paired difference is **settled** when its CI excludes 0 (holds or reversed) or TOST puts it inside
±delta (equivalent); an unsettled arm gets `step` more seeds, up to `max`. The reference arm runs the
union of the seeds its variants need.

Error control: the planned looks are L = 1 + ceil((max - min) / step) and every look tests at alpha / L
(a Bonferroni split of alpha over the looks), so the chance that any look at an arm calls a difference,
or an equivalence, that is not there is at most alpha, however early the schedule stops. It is
conservative (a group-sequential boundary spends alpha less wastefully), and exact in what it promises.

The schedule is a Tune `Searcher`: its state is saved with Tune's, so `--resume` continues the round it
was in; a seed is a grid point with one label, so a trial Tune lost is found again in MLflow by that
label and replayed, never trained twice (see `hashtune.sweep.trial`).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable
from typing import Any

from ray.tune.search import Searcher

from hashtune.metric_names import TEST_MAP
from hashtune.report.stats import ClaimVerdict, claim_verdict
from hashtune.sweep.space import GridPoint
from hashtune.sweep.space_settings import Replicates
from hashtune.sweep.stores import TrialTracking
from hashtune.tracking import TAG

__all__ = [
    "Replicates",
    "Arm",
    "arm_verdicts",
    "next_round",
    "ReplicationSearcher",
    "CLAIM_METRIC",
    "STATUS_TAG",
]

CLAIM_METRIC = TEST_MAP
"""What the arms are compared on: the metric of the study's ablation table (TransHash Tab. 2 reports test mAP)."""
STATUS_TAG = f"{TAG}replicates"
"""On the parent run: `round N` while the schedule runs, `done` once every arm is settled or at `max`."""

Arm = tuple[str, str]
"""(variant, the grid point's other values, e.g. `k_groups=2`; empty without params)."""


def arm_verdicts(values: dict[Arm, dict[int, float]], reference: str, plan: Replicates) -> dict[Arm, ClaimVerdict]:
    """Each non-reference arm's verdict on its paired difference (arm - reference) at the per-look level."""
    verdicts = {}
    for (variant, rest), per_seed in values.items():
        base = values.get((reference, rest))
        if variant == reference or base is None:
            continue
        shared = sorted(set(per_seed) & set(base))
        verdicts[variant, rest] = claim_verdict(
            [per_seed[s] - base[s] for s in shared], delta=plan.delta, alpha=plan.alpha_per_look
        )
    return verdicts


def next_round(
    attempted: dict[Arm, int], values: dict[Arm, dict[int, float]], reference: str, plan: Replicates
) -> dict[Arm, list[int]]:
    """The seeds each arm runs next (empty: the schedule is done).

    `attempted[arm]` counts the seeds the arm has run (0 .. n-1, finished or failed); `values` holds the
    finished ones' `CLAIM_METRIC`. Below `min`, an arm is filled up to `min`; an unsettled variant arm
    gets `step` more, up to `max`; the reference arm runs as many as the most its variants will have.
    """
    verdicts = arm_verdicts(values, reference, plan)
    target = {}
    for arm, n in attempted.items():
        if n < plan.min:
            target[arm] = plan.min
        elif arm[0] != reference and verdicts.get(arm) is not None and verdicts[arm].verdict == "inconclusive":
            target[arm] = min(n + plan.step, plan.max)
        else:
            target[arm] = n
    for (variant, rest), n in attempted.items():
        if variant == reference:
            needed = [t for (v, r), t in target.items() if r == rest]
            target[variant, rest] = max([n, *needed])
    return {arm: list(range(attempted[arm], target[arm])) for arm in attempted if target[arm] > attempted[arm]}


RELATIVE = {"holds": "higher", "reversed": "lower"}
"""The schedule compares arm - reference; the study orients each claim (`hashtune.report.tables.CLAIMS`)."""


class ReplicationSearcher(Searcher):
    """Tune `Searcher` that runs the adaptive schedule over a grid's points (see the module docstring).

    Args:
        points: every grid point the schedule may run (each arm at seeds `plan.seeds`).
        plan: the schedule.
        reference: the reference variant.
        tracking: the sweep's MLflow parent run, which shows the schedule (tag `hashtune.replicates`,
            metric `replicates/round`, artifact `replicates.json`).
    """

    def __init__(
        self,
        *,
        points: Iterable[GridPoint],
        plan: Replicates,
        reference: str,
        tracking: TrialTracking | None,
        metric: str,
        mode: str,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.plan, self.reference, self.tracking = plan, reference, tracking
        self.labels = {(point.arm, point.train_seed): point.label for point in points}
        arms = sorted({arm for arm, _ in self.labels})
        self.attempted: dict[Arm, int] = dict.fromkeys(arms, 0)
        self.values: dict[Arm, dict[int, float]] = {arm: {} for arm in arms}
        self.queue: list[tuple[Arm, int]] = []
        self.pending: dict[str, tuple[Arm, int]] = {}
        self.rounds, self.budget_spent = 0, False

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.queue and not self.pending:
            self._plan()
        if not self.queue:
            return None if self.pending else Searcher.FINISHED
        arm, seed = self.queue.pop(0)
        self.pending[trial_id] = arm, seed
        return {"point": self.labels[arm, seed]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.pending:
            return
        arm, seed = self.pending.pop(trial_id)
        result = result or {}
        if result.get("budget/skipped"):
            self.budget_spent = True
        elif not error and result.get("final") == 1.0 and math.isfinite(result.get(CLAIM_METRIC, math.nan)):
            self.values[arm][seed] = float(result[CLAIM_METRIC])

    def _plan(self) -> None:
        new = {} if self.budget_spent else next_round(self.attempted, self.values, self.reference, self.plan)
        for arm, seeds in new.items():
            self.attempted[arm] += len(seeds)
        # seed-major, so the pairs of a seed finish together
        self.queue = sorted(
            ((arm, seed) for arm, seeds in new.items() for seed in seeds), key=lambda item: (item[1], item[0])
        )
        if new:
            self.rounds += 1
        self._show(done=not new)

    def summary(self) -> dict[str, Any]:
        """Per arm: seeds run and finished; other arms also: higher | lower | equivalent | inconclusive than the
        reference at the per-look level, the mean difference, pairs, settled, at max."""
        verdicts = arm_verdicts(self.values, self.reference, self.plan)
        arms = {}
        for arm, n in self.attempted.items():
            entry: dict[str, Any] = {"seeds_run": n, "seeds_finished": len(self.values[arm])}
            if arm in verdicts:
                verdict = verdicts[arm]
                entry |= {
                    "vs_reference": RELATIVE.get(verdict.verdict, verdict.verdict),
                    "difference": verdict.difference.mean,
                    "pairs": verdict.n,
                    "settled": verdict.verdict != "inconclusive",
                    "at_max": n >= self.plan.max,
                }
            arms[" ".join(part for part in arm if part)] = entry
        return {
            "rounds": self.rounds,
            "looks": self.plan.looks,
            "alpha_per_look": self.plan.alpha_per_look,
            "budget_spent": self.budget_spent,
            "arms": arms,
        }

    def _show(self, done: bool) -> None:
        if self.tracking is None:
            return
        client = self.tracking.client()
        parent = self.tracking.parent_run_id
        client.log_metric(parent, "replicates/round", self.rounds, step=self.rounds)
        client.log_dict(parent, self.summary(), "replicates.json")
        client.set_tag(parent, STATUS_TAG, "done" if done else f"round {self.rounds}")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
