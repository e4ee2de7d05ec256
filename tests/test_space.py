"""Search-space files: every shipped space validates; bad spaces fail before Ray starts, in one line."""

import dataclasses
import json
import logging

import optuna
import pytest

from hashtune.config import Config, to_flat_dict
from hashtune.paths import shipped_spaces
from hashtune.sweep.cli import main as sweep_main
from hashtune.sweep.space import SpaceError, load_space
from hashtune.sweep.tuner import OptunaSpace, _fidelity_aware_optuna_search
from hashtune.train.bits import is_feasible

SHIPPED = sorted(shipped_spaces())


def test_required_spaces_are_shipped():
    assert {"ablations", "sensitivity", "tune", "smoke", "cifar10"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_validates(name):
    space = load_space(name)
    keys = set(to_flat_dict(Config()))
    assert set(space.params) <= keys and set(space.fixed) <= keys
    for overrides in space.variants.values():
        assert set(overrides) <= keys
    assert space.metric.startswith("val/")


def test_ablation_grid_is_six_variants_times_three_seeds():
    space = load_space("ablations")
    feasible, infeasible = space.grid_points(Config())
    assert len(feasible) == 18 and not infeasible
    assert {p.variant for p in feasible} == {"full", "w/o P", "w/o Q", "w/o C", "w/o cls", "asymmetric"}
    assert {p.overrides["train.seed"] for p in feasible} == {0, 1, 2}


def test_sensitivity_grid_marks_infeasible_points():
    feasible, infeasible = load_space("sensitivity_k").grid_points(Config())
    bad = {(p.overrides["model.bits"], p.overrides["model.k_groups"]) for p in infeasible}
    assert (16, 3) in bad and (32, 5) in bad and (48, 6) not in bad and (64, 6) not in bad
    assert len(feasible) + len(infeasible) == 6 * 4 * 2


def test_grid_points_are_records_and_a_resolver_saved_with_dict_points_loads_as_records(tmp_path):
    import pickle

    from hashtune.sweep.trial import TrialResolver

    crossed = _write(
        tmp_path, "variants: {full: {}, w/o Q: {loss.quant_weight: 0.0}}\nseeds: {data: [0], train: [1]}\n"
    )
    for space in (load_space("ablations"), load_space("sensitivity_k"), load_space(crossed)):
        resolver = TrialResolver(Config(), space)
        # what Tune's state holds for a sweep started before points were records (the MLflow logger's resolver)
        saved = pickle.loads(pickle.dumps(resolver))
        resolver.points = {
            label: {"label": point.label, "variant": point.variant, "overrides": point.overrides}
            for label, point in resolver.points.items()
        }
        assert pickle.loads(pickle.dumps(resolver)).points == saved.points
    point = load_space("sensitivity_k").grid_points(Config())[0][0]
    assert point.label == "k_groups=1 bits=16 seed=0" and point.arm == ("", "k_groups=1 bits=16")


def test_a_record_of_settings_saved_as_given_mappings_compares_unchanged_on_resume():
    """Sweeps started before scheduler/sampler were dataclasses recorded only the keys given: a key now recorded
    as null is a setting at its default, not a change that would refuse their --resume."""
    from hashtune.sweep.space_record import changed_keys, space_record

    for name in ("tune", "pareto", "smoke"):
        record = space_record(load_space(name), Config())
        saved = json.loads(json.dumps(record))
        for key in ("scheduler", "sampler"):
            if saved["space"][key] is not None:
                saved["space"][key] = {k: v for k, v in saved["space"][key].items() if v is not None}
        assert changed_keys(saved, record) == [], name
    assert load_space("tune").scheduler.grace(300) == 50 and load_space("smoke").scheduler.grace(12) == 2


def _write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("serach: grid\nparams: {model.bits: {grid: [16]}}\n", r"unknown key\(s\) \['serach'\]"),
        ("params: {model.bitz: {grid: [16]}}\n", r"params.model.bitz: unknown config key 'model.bitz'"),
        ("params: {model.bits: {grid: []}}\n", r"params.model.bits: grid needs a non-empty list"),
        ("params: {loss.gamma: {uniform: [5, 1]}}\nsearch: tpe\n", r"uniform needs \[low, high\] with low < high"),
        ("params: {loss.gamma: {loguniform: [0, 1]}}\nsearch: tpe\n", r"loguniform needs low > 0"),
        ("params: {model.bits: {grid: [sixteen]}}\n", r"model.bits: expected int, got str 'sixteen'"),
        (
            "params: {model.k_groups: {grid: [5, 6]}, model.bits: {grid: [16]}}\n",
            r"every one of the 2 grid points has an infeasible",
        ),
        (
            "search: tpe\nparams: {model.k_groups: {int: [5, 6]}, model.bits: {choice: [16, 32]}}\n",
            r"no model.bits in \[16, 32\] works",
        ),
        ("metric: test/mAP\nparams: {model.bits: {grid: [16]}}\n", r"would select on non-validation data"),
        ("search: tpe\nseeds: [0, 1]\nparams: {loss.gamma: {uniform: [1, 5]}}\n", r"a tpe search takes one seed"),
        ("variants: {broken: {loss.prob: gauss}}\n", r"variants.broken: loss.prob: expected one of cauchy, sigmoid"),
        ("params: [1, 2\n", r"not valid YAML"),
        (
            "search: tpe\nfixed: {train.epochs: 20}\nscheduler: {type: asha, grace_period: 50}\nparams: {loss.gamma: "
            "{uniform: [1, 5]}}\n",
            r"grace_period must be an integer in \[1, train.epochs=20\], got 50",
        ),
        (
            "search: tpe\nscheduler: {type: asha, reduction_factor: 1}\nparams: {loss.gamma: {uniform: [1, 5]}}\n",
            r"reduction_factor must be a number > 1, got 1",
        ),
        (
            "search: tpe\nscheduler: {type: asha, brackets: 0}\nparams: {loss.gamma: {uniform: [1, 5]}}\n",
            r"scheduler: brackets must be an integer >= 1, got 0",
        ),
        (
            "sampler: {multivariate: true}\nparams: {model.bits: {grid: [16]}}\n",
            r"sampler options are for search: tpe or nsga2, got search: grid",
        ),
        (
            "search: tpe\nsampler: {group: true}\nparams: {loss.gamma: {uniform: [1, 5]}}\n",
            r"group: true needs multivariate: true",
        ),
        (
            "search: tpe\nsampler: {multivariate: yes please}\nparams: {loss.gamma: {uniform: [1, 5]}}\n",
            r"sampler.multivariate must be true or false",
        ),
        (
            "search: tpe\nsampler: {seed: 3}\nparams: {loss.gamma: {uniform: [1, 5]}}\n",
            r"sampler must be a mapping of multivariate, group, n_startup_trials",
        ),
        (
            "params: {model.k_groups: {grid: [1, 2], when: {model.dual_stream: true}}}\n",
            r"params.model.k_groups.when must be a mapping .* in a tpe or random space",
        ),
        (
            "search: tpe\nparams: {model.k_groups: {int: [1, 4], when: {model.dual_stream: true}}}\n",
            r"params.model.k_groups.when: model.dual_stream: True must name another searched key with an unconditional "
            r"choice domain",
        ),
        (
            "search: tpe\nparams: {model.dual_stream: {choice: [true]}, model.k_groups: {int: [1, 4], when: "
            "{model.dual_stream: false}}}\n",
            r"params.model.k_groups.when: model.dual_stream: False must name",
        ),
    ],
)
def test_bad_spaces_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message) as error:
        load_space(_write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_cli_rejects_bad_space_before_starting_ray(tmp_path, capsys):
    import ray

    assert (
        sweep_main(["--space", _write(tmp_path, "params: {model.bitz: {grid: [1]}}\n"), "--results-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("hashtune.sweep: error: ") and "model.bitz" in err and "\n" not in err
    assert sweep_main(["--space", "nonesuch", "--results-dir", str(tmp_path)]) == 2
    assert "unknown space 'nonesuch'; shipped spaces: ablations" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists()


def test_optuna_space_samples_only_feasible_groups():
    space = load_space("sensitivity")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = OptunaSpace(space.params, Config(), space.fixed)
    for _ in range(60):
        trial = study.ask()
        define(trial)
        config = Config().replace({**space.fixed, **trial.params})
        assert is_feasible(config), trial.params
        study.tell(trial, 0.0)
    assert {t.params["model.bits"] for t in study.trials} == {16, 32, 48, 64}


def test_early_stopped_trials_are_told_to_optuna_as_pruned():
    searcher = _fidelity_aware_optuna_search(
        space=OptunaSpace(load_space("sensitivity").params, Config(), {}),
        metric="val/mAP",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for trial_id in ("a", "b"):
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_complete("a", {"val/mAP": 0.4, "epoch": 50})
    searcher.on_trial_complete("b", {"val/mAP": 0.8, "epoch": 150, "final": 1.0})
    states = [trial.state for trial in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert searcher._ot_study.best_value == 0.8


def test_the_best_trial_is_chosen_on_the_weights_that_are_reported():
    """The last epoch's val/mAP can rank trials differently from the best-val weights that test/mAP measures."""
    from types import SimpleNamespace

    from hashtune.sweep.summary import summarize

    class NoRuns:  # an MLflow client whose store holds no runs
        def search_runs(self, *args, **kwargs):
            return _EmptyPage()

    class _EmptyPage(list):
        token = None

    def trial(trial_id, last, best, test):
        metrics = {"trial_id": trial_id, "final": 1.0, "val/mAP": last, "val/best_mAP": best, "test/mAP": test}
        return SimpleNamespace(error=None, metrics=metrics, checkpoint=None)

    results = [trial("a", last=0.80, best=0.81, test=0.79), trial("b", last=0.70, best=0.90, test=0.88)]
    space = load_space("ablations")
    assert space.metric == "val/best_mAP"
    best = summarize(results, space, NoRuns(), "1")["best"]
    assert best["trial_id"] == "b" and best["selected_by"] == "val/best_mAP" and best["test/mAP"] == 0.88


def test_a_resumed_sweep_continues_its_wall_clock_budget(tmp_path):
    """`time_budget_s` counts the sweep's time over every --resume (on its parent run), not each driver's own."""
    import pickle

    from mlflow import MlflowClient

    from hashtune.sweep.stores import TrialTracking
    from hashtune.sweep.summary import ELAPSED_METRIC
    from hashtune.sweep.tuner import sweep_stopper

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("clock")
    parent = client.create_run(experiment_id).info.run_id
    space = tmp_path / "clock.yaml"
    space.write_text("time_budget_s: 60\nvariants: {full: {}}\n")
    stopper = sweep_stopper(
        load_space(str(space)), TrialTracking(client.tracking_uri, experiment_id, parent), every_s=0.0
    )
    assert stopper.stop_all() is False  # a new sweep: its budget is ahead of it
    client.log_metric(parent, ELAPSED_METRIC, 59.5)  # the first driver spent 59.5 s, then was killed
    resumed = pickle.loads(pickle.dumps(stopper))  # how Tune restores it on --resume
    assert resumed.stop_all() is False
    client.log_metric(parent, ELAPSED_METRIC, 61.0)
    assert pickle.loads(pickle.dumps(stopper)).stop_all() is True  # a fresh 60 s would have started over
    assert max(m.value for m in client.get_metric_history(parent, ELAPSED_METRIC)) >= 61.0


def test_resume_sees_a_setting_added_at_its_null_default_as_unchanged():
    from hashtune.sweep.space_record import changed_keys

    saved = {"space": {"name": "ablations", "seeds": [0, 1]}, "overrides": {}}
    assert (
        changed_keys(saved, {"space": {"name": "ablations", "seeds": [0, 1], "replicates": None}, "overrides": {}})
        == []
    )
    assert changed_keys(
        saved, {"space": {"name": "ablations", "seeds": [0, 1], "replicates": {"min": 3}}, "overrides": {}}
    ) == ["space.replicates.min"]
    assert changed_keys(saved, {"space": {"name": "ablations", "seeds": [0, 2]}, "overrides": {}}) == ["space.seeds"]


def _record(base: Config, **space) -> dict:
    from hashtune.sweep.space_record import space_record

    return space_record(dataclasses.replace(load_space("smoke"), **space), base)


def test_a_resumed_sweep_runs_the_config_it_started_with_when_the_defaults_moved(monkeypatch, caplog):
    from hashtune.sweep.resume import resumed_base
    from hashtune.sweep.stores import SweepError

    monkeypatch.setattr(logging.getLogger("hashtune"), "propagate", True)  # a CLI run before may have turned it off
    caplog.set_level(logging.INFO, logger="hashtune")
    started_with = Config().replace({"model.k_groups": 2, "train.lr": 1e-3})
    saved = _record(started_with)
    assert saved["config"] == to_flat_dict(started_with) and saved["overrides"]["train.lr"] == 1e-3
    today = Config().replace({"model.k_groups": 3, "train.lr": 3e-3})  # the defaults moved since
    resumed = resumed_base(saved, _record(today), today, explicit=set(), name="abl")
    assert resumed == started_with
    assert "defaults changed since: model.k_groups, train.lr" in caplog.text
    assert resumed_base(None, _record(today), today, explicit=set(), name="abl") == today  # a new sweep: today's config
    with pytest.raises(SweepError, match=r"changed since it started \(config.train.lr\)"):  # given again, otherwise
        resumed_base(saved, _record(today), today, explicit={"train.lr"}, name="abl")
    with pytest.raises(
        SweepError, match=r"config.model.k_groups, config.train.lr"
    ):  # --base: every key is the tuned one
        resumed_base(saved, _record(today), today, explicit=None, name="abl")
    with pytest.raises(SweepError, match=r"changed since it started \(space.seeds\)"):
        resumed_base(saved, _record(started_with, seeds=(0, 1, 2)), started_with, explicit=set(), name="abl")


def test_a_config_key_added_since_a_sweep_started_takes_its_default_and_old_records_compare_overrides():
    from hashtune.sweep.resume import resumed_base
    from hashtune.sweep.stores import SweepError

    saved = _record(Config())
    del saved["config"]["loss.cls_weight"]  # a sweep recorded before that key existed
    assert resumed_base(saved, _record(Config()), Config(), explicit=None, name="abl") == Config()
    old_format = {key: value for key, value in _record(Config().replace({"train.lr": 1e-3})).items() if key != "config"}
    with pytest.raises(SweepError, match=r"overrides.train.lr"):
        resumed_base(old_format, _record(Config()), Config(), explicit=set(), name="abl")


def test_a_conditional_key_is_sampled_only_where_its_condition_holds_by_multivariate_grouped_tpe():
    import warnings

    space = load_space("tune_conditional")
    assert space.sampler.kwargs() == {"multivariate": True, "group": True} and space.params["model.k_groups"].when == {
        "model.dual_stream": True
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4, **space.sampler.kwargs()),
            direction="maximize",
        )
        define = OptunaSpace(space.params, Config(), space.fixed)
        for _ in range(16):
            trial = study.ask()
            define(trial)
            study.tell(trial, trial.params["train.lr"])
    branches = [(t.params["model.dual_stream"], "model.k_groups" in t.params) for t in study.trials]
    assert all(on == has_k for on, has_k in branches)  # K exists exactly where the local branch does
    assert {on for on, _ in branches} == {True, False}
    assert load_space("tune").sampler is None  # TPE's defaults, and no `sampler` in records of older sweeps
