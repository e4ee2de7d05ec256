"""End-to-end sweeps on local Ray (127.0.0.1, temp dirs): MLflow runs, failures, resume, TorchTrainer + ASHA."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hashtune.sweep.cli import main as sweep_main
from ray_helpers import end_session_processes, short_temp_dir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

TINY = "  train.eval_every: 1\n  model.depth: 1\n  model.embed_dim: 16\n  model.num_heads: 2\n"


@pytest.fixture(autouse=True)
def ray_temp_dir(monkeypatch, tmp_path_factory):
    temp_dir = short_temp_dir()
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    yield temp_dir
    end_session_processes(temp_dir)  # whatever a killed or timed-out driver left behind


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
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "pr_curve.png", "pr_curve.csv", "history.csv"}
        assert {"cost/cpu_seconds", "cost/gpu_seconds", "cost/wall_seconds", "cost/images_seen"} <= run.data.metrics.keys()
    assert {r.data.params["model.k_groups"] for r in children} == {"1", "2"}
    # the trial in the reused process gives what the same config gives in a fresh process, to the last digit
    pids = {json.loads(path.read_text().splitlines()[-1])["pid"] for path in (tmp_path / "ray" / "smoke").glob("trial_*/result.json")}
    assert len(pids) == 1, "the two trials ran in different processes: no reuse to check"
    second = max(children, key=lambda run: run.info.start_time)
    fresh = subprocess.run([sys.executable, "-c", FRESH_PROCESS_FIT, json.dumps(second.data.params)], capture_output=True, text=True, check=True)
    fresh_metrics = json.loads(fresh.stdout.strip().splitlines()[-1])
    for key in ("train/loss", "val/mAP", "val/best_mAP", "test/mAP", "test/mAP_ties_average", "test/precision_at_100"):
        assert second.data.metrics[key] == fresh_metrics[key], key
    assert second.data.tags["hashtune.torch_threads"] == "1" and second.data.tags["hashtune.cpu_model"]
    parent_metrics = client.get_run(parents[0].info.run_id).data.metrics
    for key in ("cost/cpu_seconds", "cost/wall_seconds", "cost/images_seen"):  # the parent carries the sums
        assert parent_metrics[key] == pytest.approx(sum(r.data.metrics[key] for r in children)) and parent_metrics[key] > 0
    # the sweep ends with its study: in results/<experiment>/ and on the parent run
    assert {"README.md", "sensitivity_k.md", "search_progress.png", "pr_curves.png"} <= {p.name for p in (tmp_path / "smoke").iterdir()}
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
        "search: grid\nmax_concurrent: 2\nfixed:\n  train.epochs: 1\n" + TINY
        + "variants:\n  ok: {}\n  broken: {data.name: cifar10, data.root: /nonexistent/cifar}\n"
        + "  nan: {train.optimizer: sgd, train.lr: 1.0e+12, train.grad_clip: 0.0, train.warmup_epochs: 0, train.epochs: 3}\n"
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
    assert "Trial runs: 2 failed, 1 finished." in (tmp_path / "failing" / "README.md").read_text()  # the study counts them


def _sweep_command(space: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hashtune.sweep", "--space", str(space), "--results-dir", str(results), *extra]


def _start_and_signal_after_trials(space: Path, results: Path, signum: int, trials: int, *extra: str) -> subprocess.Popen:
    """Start a sweep and signal its process group once `trials` trials' MLflow runs read FINISHED (polled, no sleeps).

    The store is read only after Tune wrote that many final results, when the driver has long created it: a
    reader opening a SQLite store that is being created would race MLflow's schema migration.
    """
    driver = subprocess.Popen(_sweep_command(space, results, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and sum('"final": 1.0' in path.read_text() for path in (results / "ray").rglob("result.json")) < trials:
        time.sleep(0.2)
    while time.time() < deadline and len(_finished_runs(results, space.stem)) < trials:
        time.sleep(0.2)
    os.killpg(driver.pid, signum)  # the driver and the local Ray it started, like a terminal's Ctrl-C
    return driver


def _finished_runs(results: Path, experiment: str) -> list:
    try:
        return [r for r in _children(results, experiment) if r.info.status == "FINISHED"]
    except Exception:  # noqa: BLE001 - the store or the experiment does not exist yet
        return []


def _steps(results: Path, run, key: str = "train/loss") -> list[int]:
    return [m.step for m in _client(results).get_metric_history(run.info.run_id, key)]


def test_driver_killed_after_a_run_closed_resumes_without_rerunning_or_duplicating(tmp_path):
    """The race of a driver killed between a trial's MLflow run closing and Tune saving that fact, made certain
    by a test-only switch that kills the driver's process group at exactly that point."""
    from hashtune.sweep.mlflow_logger import FAULT_ENV

    space = tmp_path / "resume.yaml"
    space.write_text("search: grid\nmax_concurrent: 1\nfixed:\n  train.epochs: 3\n" + TINY + "params:\n  model.k_groups: {grid: [1, 2, 3]}\n")
    killed = subprocess.run(_sweep_command(space, tmp_path), capture_output=True, text=True, timeout=400,
                            env=os.environ | {FAULT_ENV: "kill-driver-after-run-closed"}, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    end_session_processes(os.environ["RAY_TMPDIR"])  # its Ray agents outlive it (see ray_helpers); a crash ends them
    finished_before = {r.data.tags["hashtune.trial_id"]: r for r in _finished_runs(tmp_path, "resume")}
    assert len(finished_before) == 1, "the switch kills the driver right after the first run closes"
    (trial_id, first), = finished_before.items()
    resumed = subprocess.run(_sweep_command(space, tmp_path, "--resume"), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    children = _children(tmp_path, "resume")
    assert len(children) == 3 and len({r.data.tags["hashtune.trial_id"] for r in children}) == 3
    assert all(r.info.status == "FINISHED" and r.data.tags["hashtune.status"] == "finished" for r in children)
    again = next(r for r in children if r.data.tags["hashtune.trial_id"] == trial_id)
    assert again.data.tags.get("hashtune.replayed") == "1", "the finished trial was trained again instead of replayed"
    for run in children:  # every (metric, step) logged once
        assert _steps(tmp_path, run) == [1, 2, 3]
        assert _steps(tmp_path, run, "test/mAP") == [3]
    assert again.data.metrics["test/mAP"] == first.data.metrics["test/mAP"]
    assert "Trial runs: 3 finished." in (tmp_path / "resume" / "README.md").read_text()  # the study counts each run once
    for trial in (tmp_path / "ray" / "resume").glob("trial_*"):  # the best checkpoint and the latest, no more
        assert len(list(trial.glob("checkpoint_*"))) <= 2


def _parent(results: Path, experiment: str):
    client = _client(results)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return next(r for r in runs if r.data.tags.get("hashtune.role") == "sweep")


def test_ctrl_c_then_sigterm_to_the_process_group_each_save_the_sweep_and_resume_runs_nothing_twice(tmp_path):
    """A sweep interrupted twice, by a terminal's Ctrl-C and then, resumed, by a SIGTERM to its process group
    (what a scheduler or `kill -- -PGID` sends): each exits with its shell status and a one-line resume hint."""
    space = tmp_path / "stop.yaml"  # four trials, one at a time: each signal leaves two not yet finished
    space.write_text("search: grid\nmax_concurrent: 1\nfixed:\n  train.epochs: 3\n" + TINY + "params:\n  model.k_groups: {grid: [1, 2, 3, 4]}\n")
    driver = _start_and_signal_after_trials(space, tmp_path, signal.SIGINT, 1)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 130, stderr[-2000:]
    assert "--name stop --resume" in stderr.strip().splitlines()[-1]
    parent = _parent(tmp_path, "stop")
    assert parent.info.status == "KILLED" and parent.data.tags["hashtune.status"] == "interrupted"
    children = _children(tmp_path, "stop")
    assert all(r.info.status != "RUNNING" for r in children) and any(r.data.tags["hashtune.status"] == "finished" for r in children)

    driver = _start_and_signal_after_trials(space, tmp_path, signal.SIGTERM, 2, "--resume")
    _, stderr = driver.communicate(timeout=180)
    end_session_processes(os.environ["RAY_TMPDIR"])
    assert driver.returncode == 143, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("hashtune.sweep: sweep 'stop' interrupted by SIGTERM") and "--name stop --resume" in last
    assert _parent(tmp_path, "stop").info.status == "KILLED" and all(r.info.status != "RUNNING" for r in _children(tmp_path, "stop"))

    resumed = subprocess.run(_sweep_command(space, tmp_path, "--resume"), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    children = _children(tmp_path, "stop")
    assert len(children) == 4 and all(r.data.tags["hashtune.status"] == "finished" for r in children)
    for run in children:  # every epoch logged once over the three launches
        assert _steps(tmp_path, run) == [1, 2, 3]


def test_asha_stopped_sweep_through_torch_trainer(tmp_path, capsys):
    space = tmp_path / "asha.yaml"
    # a learning arm first, then one that cannot learn (lr 1e-9): ASHA's first rung (cutoff: the first arm's value,
    # the only one recorded) stops it, whatever the defaults are (a random search left that to sampled learning rates)
    space.write_text(
        "search: grid\nmax_concurrent: 1\nworkers: 1\nseeds: [0]\n"
        "scheduler: {type: asha, grace_period: 1, reduction_factor: 2}\nfixed:\n  train.epochs: 4\n  train.warmup_epochs: 0\n" + TINY
        + "variants:\n  learns: {train.lr: 1.0e-2}\n  frozen: {train.lr: 1.0e-9}\n"
    )
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"trials": 2' in out and '"failed": 0' in out
    children = _children(tmp_path, "asha")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["hashtune.status"] for r in children} <= {"finished", "stopped_early"}
    assert {r.data.tags["hashtune.variant"]: r.data.tags["hashtune.status"] for r in children}["frozen"] == "stopped_early"


def _blocks_sigterm(pid: int) -> bool:
    blocked = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_local_ray_listens_on_loopback_and_its_daemons_leave_sigterm_to_the_driver():
    """What hashtune can choose: the HTTP dashboard (Train V2's State API) binds 127.0.0.1. Ray 2.60's gRPC
    servers bind every interface whatever init() is told (see results/reliability.md). The raylet and GCS
    block SIGTERM (a group SIGTERM would otherwise end the raylet and, with it, the driver, status 1)."""
    import psutil
    import ray

    from hashtune.train.local_ray import init_ray

    assert init_ray(num_cpus=1)
    try:
        port = int(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
        listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listeners and {c.laddr.ip for c in listeners} == {"127.0.0.1"}
        daemons = {p.name(): p.pid for p in psutil.Process().children(recursive=True) if p.name() in ("raylet", "gcs_server")}
        assert daemons.keys() == {"raylet", "gcs_server"} and all(_blocks_sigterm(pid) for pid in daemons.values())
        assert not _blocks_sigterm(os.getpid())  # the driver's own mask is restored
    finally:
        ray.shutdown()


def test_a_budget_smaller_than_two_trials_stops_launching_and_survives_resume(tmp_path, capsys):
    space = tmp_path / "budget.yaml"  # the budget given on the command line, as a space's `budget:`
    space.write_text("search: grid\nmax_concurrent: 1\nfixed:\n  train.epochs: 1\n" + TINY + "params:\n  model.k_groups: {grid: [1, 2, 3]}\n")
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--budget", "{cpu_hours: 0.0001}"]) == 0
    ended = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hashtune.sweep: budget:")]
    assert ended and "budget spent: " in ended[-1] and "2 trial(s) not trained; running trials finished" in ended[-1]
    statuses = sorted(r.data.tags["hashtune.status"] for r in _children(tmp_path, "budget"))
    assert statuses == ["finished", "skipped_budget", "skipped_budget"]  # 0.36 CPU-s: the first trial spends it
    client = _client(tmp_path)
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("budget").experiment_id]) if r.data.tags.get("hashtune.role") == "sweep")
    assert parent.data.metrics["sweep/skipped_budget"] == 2 and parent.data.metrics["cost/cpu_seconds"] > 0.36
    capsys.readouterr()
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--resume", "--budget", "{cpu_hours: 1}"]) == 2
    assert "changed since it started (space.budget.hours)" in capsys.readouterr().err.strip().splitlines()[-1]
    # resumed without --budget (as its resume line says): the budget it started with, and the spend, are kept
    assert sweep_main(["--space", str(space), "--results-dir", str(tmp_path), "--resume"]) == 0
    assert "continuing with the budget sweep 'budget' started with: 0.0001 CPU-hours" in capsys.readouterr().out
    assert sorted(r.data.tags["hashtune.status"] for r in _children(tmp_path, "budget")) == statuses


def test_no_store_read_of_a_trial_grows_with_the_sweep(tmp_path):
    """An instant TPE + ASHA sweep of 8 trials, launched as `benchmarks/bench_scale.py` launches a row: no MLflow
    store call of the driver or of a trial's process returns more than one run, and a trial makes one call in its
    process (its run, found by its trial id). A step that re-read the store per trial (an O(N^2) sweep) would fail it."""
    from benchmarks import bench_scale

    row = bench_scale.Row("instant", "hashtune", 8)
    (tmp_path / "space.yaml").write_text(bench_scale.space_yaml(row))
    launch = [sys.executable, "-m", "benchmarks.bench_scale", "--launch", json.dumps({"scenario": "instant", "arm": "hashtune", "trials": 8}),
              "--folder", str(tmp_path)]
    subprocess.run(launch, check=True, capture_output=True, timeout=300)
    (measured,) = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    driver, trials = measured["mlflow"]["driver"], measured["mlflow"]["trial"]
    assert measured["complete"] and measured["suggestions"] == 8 and driver["create_run"] == 1 + 8
    assert driver["most_rows"] <= 1 and trials["most_rows"] <= 1, measured["mlflow"]
    assert trials["search_runs"] == 8 and trials["calls"] <= 8 + measured["trial_processes"]  # MLflow's first call in a process
    finished = [r for r in _children(tmp_path, row.slug) if r.data.tags["hashtune.status"] == "finished"]
    assert len(finished) == 8 and all(r.data.tags["hashtune.torch_threads"] == "1" for r in finished)
