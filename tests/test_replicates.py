"""Adaptive replication: the schedule as a pure function, the Tune searcher on fake arms, and a real sweep
(fake trial function, real Ray/Tune/MLflow) killed and resumed without running a seed twice."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from ray.tune.search import Searcher

from hashtune.report.stats import claim_verdict
from hashtune.sweep.replicates import ReplicationSearcher, arm_verdicts, next_round
from hashtune.sweep.space import GridPoint, Replicates, SpaceError, load_space

PLAN = Replicates(min=3, max=9, step=3, delta=0.02, alpha=0.05)
FULL, CLEAR, SAME, NOISY = ("full", ""), ("w/o Q", ""), ("same", ""), ("noisy", "")


def test_the_alpha_is_split_over_the_planned_looks():
    assert PLAN.looks == 3 and PLAN.alpha_per_look == pytest.approx(0.05 / 3)
    assert Replicates(min=3, max=20, step=3).looks == 7  # 3, 6, ..., 18, then 20


def _values(arms: dict, n: dict) -> dict:
    """Per arm, seeds 0..n-1 drawn from N(mean, sd) (fixed seeds)."""
    rng = np.random.default_rng(0)
    return {
        arm: {s: float(mean + sd * rng.standard_normal()) for s in range(n[arm])} for arm, (mean, sd) in arms.items()
    }


ARMS = {FULL: (0.80, 0.002), CLEAR: (0.70, 0.002), SAME: (0.80, 0.002), NOISY: (0.81, 0.05)}


def test_the_first_round_fills_every_arm_to_min():
    attempted = dict.fromkeys(ARMS, 0)
    assert next_round(attempted, {arm: {} for arm in ARMS}, "full", PLAN) == {arm: [0, 1, 2] for arm in ARMS}


def test_only_unsettled_arms_get_more_seeds_and_the_reference_runs_their_union():
    n = dict.fromkeys(ARMS, 3)
    values = _values(ARMS, n)
    verdicts = arm_verdicts(values, "full", PLAN)
    assert verdicts[CLEAR].verdict == "reversed" and verdicts[SAME].verdict == "equivalent"  # settled at 3 seeds
    assert verdicts[NOISY].verdict == "inconclusive"
    assert next_round(n, values, "full", PLAN) == {NOISY: [3, 4, 5], FULL: [3, 4, 5]}


SPREAD = [0.1, -0.1, 0.05, -0.05, 0.1, -0.1, 0.02, -0.02, 0.0]  # mean 0, sd 0.07: neither a difference nor within ±0.02


def _unsettled(n: int) -> dict:
    return {FULL: dict.fromkeys(range(n), 0.80), NOISY: {s: 0.80 + SPREAD[s] for s in range(n)}}


def test_the_schedule_stops_at_max():
    values = _unsettled(9)
    assert arm_verdicts(values, "full", PLAN)[NOISY].verdict == "inconclusive"
    assert next_round({FULL: 9, NOISY: 9}, values, "full", PLAN) == {}
    # step is capped at max
    assert next_round({FULL: 6, NOISY: 6}, _unsettled(6), "full", Replicates(min=3, max=8, step=3)) == {
        NOISY: [6, 7],
        FULL: [6, 7],
    }


def test_a_failed_seed_counts_as_run_and_is_not_run_again():
    values = _unsettled(3)
    del values[NOISY][1]  # seed 1 failed: the arm goes on from seed 3, with the pairs it has
    assert next_round({FULL: 3, NOISY: 3}, values, "full", PLAN) == {NOISY: [3, 4, 5], FULL: [3, 4, 5]}


def test_verdicts_use_the_per_look_level():
    differences = [0.03, 0.05, 0.04]
    assert claim_verdict(differences, delta=0.02, alpha=0.05).verdict == "holds"
    values = {FULL: {0: 0.80, 1: 0.80, 2: 0.80}, CLEAR: {s: 0.80 + d for s, d in enumerate(differences)}}
    assert (
        arm_verdicts(values, "full", PLAN)[CLEAR].verdict
        == claim_verdict(differences, delta=0.02, alpha=0.05 / 3).verdict
        == "inconclusive"
    )


def _points(arms, plan):
    return [
        GridPoint(variant=variant, at="", seed=seed, overrides={"train.seed": seed, "data.seed": seed})
        for variant, _ in arms
        for seed in plan.seeds
    ]


def _drive(searcher: Searcher, measure, concurrent: int = 2) -> list[tuple[str, int]]:
    """Tune's loop in miniature: ask for up to `concurrent` trials, complete the oldest, until FINISHED."""
    ran, running, counter = [], [], 0
    while True:
        while len(running) < concurrent:
            suggestion = searcher.suggest(f"t{counter}")
            if suggestion in (None, Searcher.FINISHED):
                break
            running.append((f"t{counter}", suggestion["point"]))
            counter += 1
        if not running:
            assert suggestion == Searcher.FINISHED
            return ran
        trial_id, label = running.pop(0)
        variant, seed = label.rsplit(" seed=", 1)
        ran.append((variant, int(seed)))
        searcher.on_trial_complete(trial_id, {"final": 1.0, "test/mAP": measure(variant, int(seed))})


def _fake_measure(variant: str, seed: int) -> float:
    mean, sd = ARMS[variant, ""]
    return mean + sd * np.random.default_rng([seed, sum(map(ord, variant))]).standard_normal()


def test_the_searcher_settles_clear_and_equivalent_arms_early_and_replicates_the_rest(tmp_path):
    searcher = ReplicationSearcher(
        points=_points(ARMS, PLAN), plan=PLAN, reference="full", tracking=None, metric="val/best_mAP", mode="max"
    )
    ran = _drive(searcher, _fake_measure)
    assert len(ran) == len(set(ran)), "a seed ran twice"
    seeds = {variant: sorted(s for v, s in ran if v == variant) for variant, _ in ARMS}
    assert seeds["w/o Q"] == seeds["same"] == [0, 1, 2]
    assert seeds["noisy"] == seeds["full"] == list(range(9))
    summary = searcher.summary()
    assert (
        summary["rounds"] == 3
        and summary["arms"]["w/o Q"]["vs_reference"] == "lower"
        and summary["arms"]["same"]["vs_reference"] == "equivalent"
    )
    assert summary["arms"]["noisy"]["at_max"] and not summary["arms"]["noisy"]["settled"]
    # Tune saves the searcher with its state: a restored copy continues the same schedule
    half = ReplicationSearcher(
        points=_points(ARMS, PLAN), plan=PLAN, reference="full", tracking=None, metric="val/best_mAP", mode="max"
    )
    first = [half.suggest(f"a{i}") for i in range(3)]
    half.save(str(tmp_path / "state.pkl"))
    restored = ReplicationSearcher(
        points=[], plan=PLAN, reference="full", tracking=None, metric="val/best_mAP", mode="max"
    )
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.pending == half.pending and restored.queue == half.queue and first[0] == {"point": "full seed=0"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("replicates: {min: 3}\nvariants: {full: {}}\n", "replicates needs search: grid and at least two variants"),
        (
            "replicates: {min: 1}\nvariants: {full: {}, b: {loss.gamma: 2.0}}\n",
            "replicates: min must be an integer >= 2, got 1",
        ),
        (
            "replicates: {min: 5, max: 4}\nvariants: {full: {}, b: {loss.gamma: 2.0}}\n",
            "replicates needs 2 <= min <= max",
        ),
        ("replicates: {alpha: 1.5}\nvariants: {full: {}, b: {loss.gamma: 2.0}}\n", "0 < alpha < 1"),
        (
            "replicates: {mn: 3}\nvariants: {full: {}, b: {loss.gamma: 2.0}}\n",
            "replicates must be a mapping of min, max, step, delta, alpha",
        ),
        ("replicates: {}\nseeds: [0, 1]\nvariants: {full: {}, b: {loss.gamma: 2.0}}\n", "replicates chooses the seeds"),
    ],
)
def test_bad_replicates_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace("<", "<")) as error:
        load_space(str(path))
    assert "\n" not in str(error.value)


FAKE_ARMS = {"full": [0.80, 0.002], "w/o Q": [0.70, 0.002], "same": [0.80, 0.002], "noisy": [0.81, 0.05]}


@pytest.mark.slow
@pytest.mark.xdist_group("ray-replicates")
def test_a_replicated_sweep_killed_after_a_run_closed_resumes_its_schedule_without_running_a_seed_twice(tmp_path):
    from ray_helpers import end_session_processes, short_temp_dir

    space = tmp_path / "rep.yaml"
    space.write_text(
        "search: grid\nmax_concurrent: 2\nreplicates: {min: 3, max: 6, step: 3, delta: 0.02}\nfixed:\n  train.epochs: "
        "2\n  train.warmup_epochs: 0\n"
        "variants:\n  full: {}\n  w/o Q: {loss.quant_weight: 0.0}\n  same: {loss.gamma: 2.0}\n  noisy: "
        "{loss.cls_weight: 0.5}\n"
    )
    ray_dir = short_temp_dir("rr")
    env = os.environ | {
        "RAY_TMPDIR": str(ray_dir),
        "FAKE_TRIAL": "fake_trials:noisy_arms",
        "FAKE_ARMS": json.dumps(FAKE_ARMS),
        "FAKE_LOG": str(tmp_path / "executions.log"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    hooked = [sys.executable, str(Path(__file__).parent / "sweep_with_hooks.py")]
    command = [*hooked, "--space", str(space), "--results-dir", str(tmp_path)]
    try:
        killed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            env=env | {"KILL_AFTER_RUN_CLOSED": str(tmp_path / "killed")},
            start_new_session=True,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        end_session_processes(str(ray_dir))
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment_id = client.get_experiment_by_name("rep").experiment_id
        # the kill follows the first run's close; the other trial's final result may have marked its run completed too
        closed = [
            r.info.run_name.split(" [")[0]
            for r in client.search_runs([experiment_id])
            if r.data.tags.get("hashtune.completed") == "1"
        ]
        assert 1 <= len(closed) <= 2
        resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    finally:
        end_session_processes(str(ray_dir))
    runs = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("hashtune.role") != "sweep"]
    labels = [r.info.run_name.split(" [")[0] for r in runs]
    assert len(labels) == len(set(labels)), "a seed has two MLflow runs"
    assert sorted(labels) == sorted(
        [f"{v} seed={s}" for v in ("full", "noisy") for s in range(6)]
        + [f"{v} seed={s}" for v in ("w/o Q", "same") for s in range(3)]
    )
    assert all(r.data.tags["hashtune.status"] == "finished" for r in runs)
    executions = (tmp_path / "executions.log").read_text().split("\n")
    for label in closed:
        assert executions.count(label) == 1, f"{label}, whose run completed before the kill, ran again"
    lines = resumed.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the summary, after Tune's tables
    summary = json.loads("\n".join(lines[start : lines.index("}", start) + 1]))
    arms = summary["replicates"]["arms"]
    assert (
        arms["w/o Q"]["vs_reference"] == "lower"
        and arms["same"]["vs_reference"] == "equivalent"
        and arms["noisy"]["seeds_run"] == 6
    )
    parent = next(r for r in client.search_runs([experiment_id]) if r.data.tags.get("hashtune.role") == "sweep")
    assert parent.data.tags["hashtune.replicates"] == "done" and parent.info.status == "FINISHED"
    study = (tmp_path / "rep" / "ablation.md").read_text()  # the study states the design and its per-look level
    assert "alpha / L = 0.05 / 2 = 0.025" in study and "The schedule is done" in study and "97.5% CI" in study


def test_crossed_seeds_make_a_data_by_train_grid(tmp_path):
    path = tmp_path / "crossed.yaml"
    path.write_text("seeds: {data: [0, 1], train: [0, 1, 2]}\nvariants: {full: {}}\n")
    feasible, _ = load_space(str(path)).grid_points(__import__("hashtune.config", fromlist=["Config"]).Config())
    assert [(p.overrides["data.seed"], p.overrides["train.seed"]) for p in feasible] == [
        (d, t) for d in (0, 1) for t in (0, 1, 2)
    ]
    assert feasible[1].label == "full data_seed=0 seed=1"
    path.write_text("search: tpe\nseeds: {data: [0], train: [0]}\nparams: {loss.gamma: {uniform: [1.0, 2.0]}}\n")
    with pytest.raises(SpaceError, match=r"crossed seeds are \{data: \[...\], train: \[...\]\} in a grid space"):
        load_space(str(path))


def test_variance_components_match_the_mean_squares_by_hand():
    from hashtune.report.stats import variance_components

    table = np.array(
        [[0.80, 0.82, 0.81], [0.70, 0.73, 0.70], [0.90, 0.91, 0.93]]
    )  # rows data seeds, columns train seeds
    split = variance_components({(d, t): table[d, t] for d in range(3) for t in range(3)})
    grand, rows, cols = table.mean(), table.mean(axis=1), table.mean(axis=0)
    ms_data = 3 * ((rows - grand) ** 2).sum() / 2
    ms_train = 3 * ((cols - grand) ** 2).sum() / 2
    ms_res = ((table - rows[:, None] - cols[None, :] + grand) ** 2).sum() / 4
    assert split.residual == pytest.approx(ms_res)
    assert split.data == pytest.approx((ms_data - ms_res) / 3) and split.train == pytest.approx(
        max(0.0, (ms_train - ms_res) / 3)
    )
    assert split.data > 10 * split.train  # the data split dominates this table by construction
    assert variance_components({(0, 0): 0.8, (0, 1): 0.8, (1, 0): 0.7}) is None  # no complete 2 x 2


def test_a_plan_pickled_under_its_old_module_loads_on_resume():
    """`Replicates` moved from `hashtune.sweep.replication_plan` into `space_settings`; a sweep saved before pickled
    its searcher's plan under the old name."""
    import pickle

    saved = pickle.dumps(Replicates(min=2, max=6), protocol=0).replace(
        b"hashtune.sweep.space_settings", b"hashtune.sweep.replication_plan"
    )
    assert b"replication_plan" in saved and pickle.loads(saved) == Replicates(min=2, max=6)
