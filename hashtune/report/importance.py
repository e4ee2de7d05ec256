"""Parameter importance with Optuna's own evaluators, on a study rebuilt from the MLflow runs.

The runs, not Optuna's RDB study, are the source: grid sweeps have no Optuna study at all, and
`create_trial` + `add_trials` makes every sweep (grid, TPE, random) answerable the same way. Only
finished runs enter (early-stopped trials were measured at a lower fidelity); the objective is the
selection metric (`val/mAP` by default), so importance never peeks at the test queries.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hashtune.config import to_flat_dict
from hashtune.metric_names import SELECTION_METRIC
from hashtune.report.runs import TrialRun
from hashtune.report.tables import varying_params

__all__ = [
    "EVALUATORS",
    "FANOVA_MAX_TRIALS",
    "infer_distribution",
    "rebuild_study",
    "parameter_importances",
    "sample_trials",
]

EVALUATORS = {
    "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
    "PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
}
MIN_TRIALS = 4
FANOVA_MAX_TRIALS = 300
"""fANOVA's marginal variances take time superlinear in the trials (1 s at 100, 4 s at 300, 63 s at 1,000 on this
2-core machine): past this many finished runs it ranks a seeded random sample of them. PED-ANOVA reads them all."""


def infer_distribution(values: list[Any]) -> BaseDistribution:
    """The narrowest Optuna distribution holding every observed value (floats log-scaled over >= 1 decade)."""
    if all(isinstance(v, float) for v in values):
        low, high = min(values), max(values)
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return IntDistribution(min(values), max(values))
    return CategoricalDistribution(sorted(set(values), key=str))


def rebuild_study(runs: list[TrialRun], metric: str = SELECTION_METRIC, direction: str = "maximize") -> optuna.Study:
    """An in-memory Optuna study with one COMPLETE trial per finished run, over the parameters that vary.

    Config keys whose values agree in every run are one parameter named `key1=key2` (the seed replicates).
    """
    finished = [run for run in runs if run.status == "finished" and metric in run.metrics]
    flats = [to_flat_dict(run.config) for run in finished]
    columns: dict[tuple, list[str]] = {}  # keys that always agree (data.seed, train.seed) are one parameter
    for key in varying_params(finished):
        columns.setdefault(tuple(str(flat[key]) for flat in flats), []).append(key)
    names = {"=".join(keys): keys[0] for keys in columns.values()}
    distributions = {
        name: infer_distribution(sorted({flat[key] for flat in flats}, key=str)) for name, key in names.items()
    }
    study = optuna.create_study(direction=direction, study_name="rebuilt-from-mlflow")
    trials = []
    for run, flat in zip(finished, flats):
        trials.append(
            optuna.trial.create_trial(
                value=run.metrics[metric],
                params={name: flat[key] for name, key in names.items()},
                distributions=distributions,
                user_attrs={"mlflow_run_id": run.run_id, "variant": run.variant},
            )
        )
    study.add_trials(trials)
    return study


def parameter_importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """`{evaluator: {param: normalised importance}}` for fANOVA and PED-ANOVA; empty when there is too little to rank.

    Needs at least `MIN_TRIALS` trials and two varying parameters (with one, its importance is 1 by definition).
    """
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    params = set().union(*(trial.distributions for trial in trials)) if trials else set()
    if len(trials) < MIN_TRIALS or len(params) < 2:
        return {}
    importances = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, make in EVALUATORS.items():
            ranked = sample_trials(study, FANOVA_MAX_TRIALS) if name == "fANOVA" else study
            importances[name] = optuna.importance.get_param_importances(ranked, evaluator=make())
    return importances


def sample_trials(study: optuna.Study, limit: int, seed: int = 0) -> optuna.Study:
    """`study` itself when it has at most `limit` complete trials, else a study of a seeded random `limit` of them."""
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if len(trials) <= limit:
        return study
    keep = sorted(np.random.default_rng(seed).choice(len(trials), size=limit, replace=False))
    sample = optuna.create_study(direction=study.direction, study_name=f"{study.study_name}-sample")
    sample.add_trials([trials[index] for index in keep])
    return sample
