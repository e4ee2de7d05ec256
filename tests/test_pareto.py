"""The Pareto front against the non-dominated set a plain double loop finds, for 2 and 3 objectives, with ties."""

import csv
import io
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from hashtune.errors import InputError
from hashtune.report.pareto import pareto_front


def _brute_force(values: list[list[float]], modes: list[str]) -> list[int]:
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]

    def dominates(a, b) -> bool:
        better_or_equal = all(s * x >= s * y for s, x, y in zip(signs, a, b))
        return better_or_equal and any(s * x > s * y for s, x, y in zip(signs, a, b))

    return [i for i, row in enumerate(values) if not any(dominates(other, row) for other in values)]


@pytest.mark.parametrize("modes", [["max", "min"], ["max", "min", "min"], ["min", "min"], ["max", "max", "min"]])
@pytest.mark.parametrize("seed", range(5))
def test_the_front_is_the_non_dominated_set_of_a_double_loop(modes, seed):
    rng = np.random.default_rng(seed)
    # few distinct values per objective: many ties, and rows equal on every objective
    values = rng.integers(0, 4, size=(40, len(modes))).astype(float).tolist()
    assert pareto_front(values, modes) == _brute_force(values, modes)


def test_rows_equal_on_every_objective_are_all_on_the_front_and_a_dominated_one_is_not():
    values = [[0.9, 32.0], [0.9, 32.0], [0.8, 16.0], [0.8, 32.0], [0.95, 64.0]]
    assert pareto_front(values, ["max", "min"]) == [0, 1, 2, 4]


def test_known_three_objective_front():
    # (mAP, bits, encode ms): 16 bits at the same mAP and speed dominates 32 bits
    values = [[0.90, 32, 1.0], [0.90, 16, 1.0], [0.92, 64, 2.0], [0.85, 8, 0.5], [0.85, 8, 0.6]]
    assert pareto_front(values, ["max", "min", "min"]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("values", "modes", "message"),
    [
        ([[1.0, 2.0]], ["max", "best"], "modes must each be one of max, min"),
        ([[1.0]], ["max", "min"], "every row needs 2 objective values"),
        ([[1.0]], ["max"], "a front needs at least two objectives"),
    ],
)
def test_bad_objectives_are_one_clear_error(values, modes, message):
    with pytest.raises(InputError, match=message):
        pareto_front(values, modes)


def test_every_row_of_a_front_is_undominated_and_every_other_is_dominated_exhaustively():
    values = [list(row) for row in itertools.product([0.0, 1.0, 2.0], repeat=2)]
    assert pareto_front(values, ["max", "max"]) == [8]
    assert pareto_front(values, ["max", "min"]) == [6]


def test_a_multi_objective_space_is_checked_before_anything_runs(tmp_path):
    from hashtune.sweep.space import SpaceError, load_space

    space = load_space("pareto")
    assert space.objectives == (("val/best_mAP", "max"), ("code/bits", "min"), ("cost/encode_ms", "min"))
    assert (space.metric, space.mode, space.search) == ("val/best_mAP", "max", "nsga2")
    head = "search: tpe\nnum_samples: 4\nparams: {model.bits: {choice: [16, 32]}}\n"
    for body, message in (
        ("metric: [val/best_mAP, code/bits]\nmode: max\n", "mode must list as many (max or min)"),
        ("metric: [val/best_mAP, code/bits]\nmode: [max]\n", "metric lists 2 objectives; mode must list as many"),
        ("metric: [val/best_mAP, test/mAP]\nmode: [max, max]\n", "objective 'test/mAP' is not a val/*, code/*"),
        ("metric: [code/bits, val/best_mAP]\nmode: [min, max]\n", "the first objective is the accuracy one"),
        ("metric: [val/best_mAP, code/bits]\nmode: [max, least]\n", "mode of code/bits must be max or min"),
        ("metric: val/best_mAP\nmode: [max, min]\n", "mode is a list but metric names one metric"),
        (
            "metric: [val/best_mAP, code/bits]\nmode: [max, min]\nscheduler: {type: asha, grace_period: 1}\n",
            "ASHA stops trials on one metric: add scheduler.metric",
        ),
        (
            "metric: [val/best_mAP, code/bits]\nmode: [max, min]\nscheduler: {type: asha, metric: val/mAP}\n",
            "scheduler.metric 'val/mAP' is not one of the objectives",
        ),
        ("scheduler: {type: asha, grace_period: 1, metric: val/mAP}\n", "scheduler.metric is for spaces with several"),
    ):
        path = tmp_path / "space.yaml"
        path.write_text(head + body)
        with pytest.raises(SpaceError) as refused:
            load_space(str(path))
        assert message in str(refused.value) and "\n" not in str(refused.value), (body, str(refused.value))
    path.write_text(head.replace("tpe", "nsga2") + "metric: [val/best_mAP, code/bits]\nmode: [max, min]\n")
    assert load_space(str(path)).search == "nsga2"


def test_export_picks_the_best_run_under_a_constraint(tmp_path, capsys):
    from mlflow import MlflowClient

    from hashtune.retrieval.export import main as export_main
    from hashtune.tracking import TAG, best_finished_run, parse_pick

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("front")
    for bits, accuracy in ((64, 0.95), (32, 0.93), (16, 0.90), (32, 0.97)):
        run = client.create_run(experiment)
        client.set_tag(run.info.run_id, f"{TAG}status", "finished" if accuracy != 0.97 else "failed")
        client.log_metric(run.info.run_id, "val/best_mAP", accuracy)
        client.log_metric(run.info.run_id, "code/bits", bits)
    picked = best_finished_run(client, "front", "val/best_mAP", (parse_pick("code/bits<=32"),))
    assert picked.data.metrics == {"val/best_mAP": 0.93, "code/bits": 32.0}
    assert best_finished_run(client, "front", "val/best_mAP").data.metrics["code/bits"] == 64.0
    with pytest.raises(InputError, match=r"--pick 'bits<<3' is not METRIC OP NUMBER"):
        parse_pick("bits<<3")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--experiment", "front", "--mlflow-uri", uri, "--out", str(tmp_path / "b")]
    assert export_main([*argv, "--pick", "code/bits<=8"]) == 2
    assert "has no finished trial run with val/best_mAP with code/bits <= 8" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("ray-pareto")
def test_a_multi_objective_sweep_reports_the_front_a_double_loop_finds(tmp_path, monkeypatch):
    import optuna
    from fake_trials import trade_off
    from mlflow import MlflowClient
    from ray_helpers import short_temp_dir

    from hashtune.sweep.cli import main as sweep_main
    from hashtune.sweep.driver import SweepHooks

    monkeypatch.setenv("RAY_TMPDIR", short_temp_dir())
    # the trials import fake_trials in Ray's workers, which start from the local Ray this sweep starts
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    space = tmp_path / "front.yaml"
    space.write_text(
        "search: nsga2\nmetric: [val/best_mAP, code/bits, cost/encode_ms]\nmode: [max, min, min]\n"
        "num_samples: 10\nsampler: {population_size: 4}\nmax_concurrent: 2\n"
        "params:\n  model.bits: {choice: [8, 16, 32, 64]}\n  model.depth: {choice: [1, 2]}\n"
    )
    argv = ["--space", str(space), "--results-dir", str(tmp_path)]
    assert sweep_main(argv, hooks=SweepHooks(trial_function=trade_off)) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [
        run
        for run in client.search_runs([client.get_experiment_by_name("front").experiment_id])
        if run.data.tags.get("hashtune.status") == "finished"
    ]
    names = ["val/best_mAP", "code/bits", "cost/encode_ms"]
    by_config = {(r.data.params["model.bits"], r.data.params["model.depth"]): r.data.metrics for r in runs}
    configs = sorted(by_config)  # a configuration sampled twice is one point of the front (its runs' mean)
    values = [[by_config[config][name] for name in names] for config in configs]
    expected = {configs[i] for i in _brute_force(values, ["max", "min", "min"])}
    with open(tmp_path / "front" / "pareto.csv") as table:
        listed = {(row["model.bits"], row["model.depth"]) for row in csv.DictReader(table)}
    assert listed == expected and len(runs) == 10
    assert (tmp_path / "front" / "pareto.png").stat().st_size > 0
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(next(tmp_path.rglob("*.journal"))))
    )
    study = optuna.load_study(study_name=optuna.get_all_study_names(journal)[0], storage=journal)
    assert len(study.directions) == 3
    assert all(len(trial.values) == 3 for trial in study.trials if trial.state.name == "COMPLETE")
    # --resume reads Tune's state back (the NSGA-II searcher pickled in it) and runs nothing twice
    assert sweep_main([*argv, "--resume"], hooks=SweepHooks(trial_function=trade_off)) == 0
    experiment = client.get_experiment_by_name("front").experiment_id
    assert len([run for run in client.search_runs([experiment]) if run.data.tags.get("hashtune.role") != "sweep"]) == 10


def test_the_nsga2_sampler_survives_a_pickle_round_trip_and_keeps_sampling():
    import pickle

    import optuna

    from hashtune.sweep.samplers import PicklableNSGAIISampler

    sampler = pickle.loads(pickle.dumps(PicklableNSGAIISampler(seed=0, population_size=4)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), n_trials=10)
    assert len(study.best_trials) >= 1 and sampler._thread_lock.acquire(blocking=False)


def test_replicated_configurations_are_one_point_with_their_seed_mean_and_sd():
    from hashtune.config import Config
    from hashtune.report.pareto_study import pareto_csv, pareto_markdown, pareto_study
    from hashtune.report.runs import TrialRun

    def run(bits: int, seed: int, accuracy: float) -> TrialRun:
        config = Config().replace({"model.bits": bits, "train.seed": seed, "data.seed": seed})
        metrics = {"val/best_mAP": accuracy, "code/bits": float(bits), "test/mAP": accuracy}
        return TrialRun(
            f"bits={bits} seed={seed}", f"bits={bits} seed={seed}", "", seed, "finished", config, metrics, 0
        )

    runs = [run(16, 0, 0.70), run(16, 1, 0.74), run(32, 0, 0.80), run(32, 1, 0.84), run(64, 0, 0.81), run(64, 1, 0.79)]
    study = pareto_study(runs, (("val/best_mAP", "max"), ("code/bits", "min")))
    assert [(point.name, point.runs, point.seeds) for point in study.candidates] == [
        ("bits=16", 2, 2),
        ("bits=32", 2, 2),
        ("bits=64", 2, 2),
    ]
    assert [point.bits for point in study.front] == [16, 32]  # 64 bits' mean 0.80 is under 32 bits' 0.82
    thirty_two = study.front[1]
    assert thirty_two.metrics["val/best_mAP"] == pytest.approx(0.82)
    assert thirty_two.sd["val/best_mAP"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
    text = pareto_markdown(study)
    assert "| bits=32 | 2 | 2 | 0.82 ± 0.028 |" in text and "seed means ± SD" in text
    rows = list(csv.DictReader(io.StringIO(pareto_csv(study))))
    assert float(rows[1]["val/best_mAP"]) == pytest.approx(0.82)
    assert float(rows[1]["val/best_mAP sd"]) == pytest.approx(np.std([0.80, 0.84], ddof=1))
