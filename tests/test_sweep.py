"""End-to-end sweeps in this process on one local Ray (127.0.0.1, temp dirs): MLflow runs, failures, budgets,
TorchTrainer + ASHA.

The drivers killed and signalled, and a sweep counted call by call, run in their own processes:
`test_sweep_processes.py`.
"""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray_helpers import local_ray

from hashtune.sweep.cli import main as sweep_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-sweep")]

TINY = (
    "  train.eval_every: 1\n  train.warmup_epochs: 0\n  model.depth: 1\n  model.embed_dim: 16\n  model.num_heads: 2\n"
)


@pytest.fixture(scope="module", autouse=True)
def shared_ray():
    """One local Ray for the module's sweeps (`init_ray` finds it started and leaves it running): a start each saved."""
    with local_ray(num_cpus=2):
        yield


def _client(results: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def _children(results: Path, experiment: str) -> list:
    client = _client(results)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [r for r in client.search_runs([experiment_id]) if r.data.tags.get("hashtune.role") != "sweep"]


FRESH_PROCESS_FIT = """
import json, sys, tempfile
from hashtune.config import config_from_params
from hashtune.sweep.trial import pin_threads
from hashtune.train.trainer import fit
pin_threads(1)
with tempfile.TemporaryDirectory() as folder:
    print(json.dumps(fit(config_from_params(json.loads(sys.argv[1])), run_dir=folder)))
"""


def test_smoke_space_leaves_two_child_runs_under_one_parent(tmp_path, capsys):
    # one trial at a time: the second runs in the process the first used (Tune's reuse_actors)
    assert sweep_main(["--space", "smoke", "--results-dir", str(tmp_path), "--max-concurrent", "1"]) == 0
    client = _client(tmp_path)
    experiment_id = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags.get("hashtune.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("hashtune.role") != "sweep"]
    assert len(parents) == 1 and len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["hashtune.status"] == "finished"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["model.depth"] == "1" and "loss.gamma" in run.data.params
        assert {"val/mAP", "test/mAP", "test/precision_at_100", "train/loss"} <= run.data.metrics.keys()
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "config.yaml",
            "pr_curve.png",
            "pr_curve.csv",
            "history.csv",
        }
        assert {
            "cost/cpu_seconds",
            "cost/gpu_seconds",
            "cost/wall_seconds",
            "cost/images_seen",
        } <= run.data.metrics.keys()
    assert {r.data.params["model.k_groups"] for r in children} == {"1", "2"}
    # the trial in the reused process gives what the same config gives in a fresh process, to the last digit
    pids = {
        json.loads(path.read_text().splitlines()[-1])["pid"]
        for path in (tmp_path / "ray" / "smoke").glob("trial_*/result.json")
    }
    assert len(pids) == 1, "the two trials ran in different processes: no reuse to check"
    second = max(children, key=lambda run: run.info.start_time)
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_FIT, json.dumps(second.data.params)],
        capture_output=True,
        text=True,
        check=True,
    )
    fresh_metrics = json.loads(fresh.stdout.strip().splitlines()[-1])
    for key in ("train/loss", "val/mAP", "val/best_mAP", "test/mAP", "test/mAP_ties_average", "test/precision_at_100"):
        assert second.data.metrics[key] == fresh_metrics[key], key
    assert second.data.tags["hashtune.torch_threads"] == "1" and second.data.tags["hashtune.cpu_model"]
    parent_metrics = client.get_run(parents[0].info.run_id).data.metrics
    for key in ("cost/cpu_seconds", "cost/wall_seconds", "cost/images_seen"):  # the parent carries the sums
        assert (
            parent_metrics[key] == pytest.approx(sum(r.data.metrics[key] for r in children)) and parent_metrics[key] > 0
        )
    # the sweep ends with its study: in results/<experiment>/ and on the parent run
    assert {"README.md", "sensitivity_k.md", "search_progress.png", "pr_curves.png"} <= {
        p.name for p in (tmp_path / "smoke").iterdir()
    }
    assert "report/README.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert sweep_main(["--space", "smoke", "--results-dir", str(tmp_path)]) == 2  # exists: no silent overwrite
    # `make sweep` again (--resume auto): the finished sweep is continued, nothing re-run or duplicated
    assert sweep_main(["--space", "smoke", "--resume", "auto", "--results-dir", str(tmp_path)]) == 0
    assert len(_children(tmp_path, "smoke")) == 2
    # --resume of an edited sweep is refused before anything changes: the finished parent stays FINISHED
    capsys.readouterr()
    assert sweep_main(["--space", "smoke", "--resume", "--results-dir", str(tmp_path), "train.epochs=2"]) == 2
    assert "changed since it started (config.train.epochs)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"


def test_failing_trial_is_failed_in_tune_and_mlflow_while_others_finish(tmp_path, capsys):
    space = tmp_path / "failing.yaml"
    space.write_text(
        "search: grid\nmax_concurrent: 2\nfixed:\n  train.epochs: 1\n"
        + TINY
        + "variants:\n  ok: {}\n  broken: {data.name: cifar10, data.root: /nonexistent/cifar}\n"
        + "  nan: {train.optimizer: sgd, train.lr: 1.0e+12, train.grad_clip: 0.0, train.warmup_epochs: 0, "
        "train.epochs: 3}\n"
    )
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path)]) == 0
    summary = capsys.readouterr().out
    assert '"failed": 2' in summary and '"finished": 1' in summary
    runs = {r.data.tags["hashtune.variant"]: r for r in _children(tmp_path, "failing")}
    assert runs["ok"].info.status == "FINISHED"
    for variant in ("broken", "nan"):
        assert runs[variant].info.status == "FAILED" and runs[variant].data.tags["hashtune.status"] == "failed"
    assert "data.root='/nonexistent/cifar' is not a directory" in runs["broken"].data.tags["hashtune.error"]
    assert "NonFiniteLossError: train/loss became" in runs["nan"].data.tags["hashtune.error"]
    assert (
        "Trial runs: 2 failed, 1 finished." in (tmp_path / "failing" / "README.md").read_text()
    )  # the study counts them


def test_asha_stopped_sweep_through_torch_trainer(tmp_path, capsys):
    space = tmp_path / "asha.yaml"
    # a learning arm first, then one that cannot learn (lr 1e-9): ASHA's first rung (cutoff: the first arm's value,
    # the only one recorded) stops it, whatever the defaults are (a random search left that to sampled learning rates)
    space.write_text(
        "search: grid\nmax_concurrent: 1\nworkers: 1\nseeds: [0]\n"
        "scheduler: {type: asha, grace_period: 1, reduction_factor: 2}\nfixed:\n  train.epochs: 4\n"
        + TINY
        + "variants:\n  learns: {train.lr: 1.0e-2}\n  frozen: {train.lr: 1.0e-9}\n"
    )
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"trials": 2' in out and '"failed": 0' in out
    children = _children(tmp_path, "asha")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["hashtune.status"] for r in children} <= {"finished", "stopped_early"}
    assert {r.data.tags["hashtune.variant"]: r.data.tags["hashtune.status"] for r in children}[
        "frozen"
    ] == "stopped_early"


def test_a_budget_smaller_than_two_trials_stops_launching_and_survives_resume(tmp_path, capsys):
    space = tmp_path / "budget.yaml"  # the budget given on the command line, as a space's `budget:`
    space.write_text(  # two objectives: a trial the budget skips reports NaN for each, and Optuna is told so
        "search: tpe\nmetric: [val/best_mAP, code/bits]\nmode: [max, min]\nnum_samples: 3\nmax_concurrent: 1\n"
        "fixed:\n  train.epochs: 1\n" + TINY + "params:\n  model.k_groups: {choice: [1, 2, 3]}\n"
    )
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--budget", "{cpu_hours: 0.0001}"]) == 0
    ended = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hashtune.sweep: budget:")]
    assert ended and "budget spent: " in ended[-1] and "2 trial(s) not trained; running trials finished" in ended[-1]
    statuses = sorted(r.data.tags["hashtune.status"] for r in _children(tmp_path, "budget"))
    assert statuses == ["finished", "skipped_budget", "skipped_budget"]  # 0.36 CPU-s: the first trial spends it
    study = optuna.load_study(
        study_name="budget", storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna" / "budget.journal")))
    )
    told = sorted((trial.state.name, len(trial.values or ())) for trial in study.trials)
    assert told == [("COMPLETE", 2), ("PRUNED", 0), ("PRUNED", 0)]  # the skipped trials, never trained: no values
    client = _client(tmp_path)
    parent = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("budget").experiment_id])
        if r.data.tags.get("hashtune.role") == "sweep"
    )
    assert parent.data.metrics["sweep/skipped_budget"] == 2 and parent.data.metrics["cost/cpu_seconds"] > 0.36
    capsys.readouterr()
    assert (
        sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--resume", "--budget", "{cpu_hours: 1}"])
        == 2
    )
    assert "changed since it started (space.budget.hours)" in capsys.readouterr().err.strip().splitlines()[-1]
    # resumed without --budget (as its resume line says): the budget it started with, and the spend, are kept
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--resume"]) == 0
    assert "continuing with the budget sweep 'budget' started with: 0.0001 CPU-hours" in capsys.readouterr().out
    assert sorted(r.data.tags["hashtune.status"] for r in _children(tmp_path, "budget")) == statuses
