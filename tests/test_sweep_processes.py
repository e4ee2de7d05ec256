"""Sweeps in their own processes on local Ray (127.0.0.1, temp dirs): a driver killed at the worst moment, Ctrl-C and
SIGTERM, the store calls of a sweep counted, and the local Ray's listeners and signal masks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray_helpers import end_session_processes, short_temp_dir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-sweep_processes")]

TINY = (
    "  train.eval_every: 1\n  train.warmup_epochs: 0\n  model.depth: 1\n  model.embed_dim: 16\n  model.num_heads: 2\n"
)


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


HOOKED = [sys.executable, str(Path(__file__).parent / "sweep_with_hooks.py")]
"""`python -m hashtune.sweep` with test hooks (a sweep whose Tune state holds a test callback is resumed through it)."""


def _sweep_command(space: Path, results: Path, *extra: str, hooked: bool = False) -> list[str]:
    entry = HOOKED if hooked else [sys.executable, "-m", "hashtune.sweep"]
    return [*entry, "--space", str(space), "--results-dir", str(results), *extra]


def _start_and_signal_after_trials(
    space: Path, results: Path, signum: int, *extra: str, hooked: bool = False
) -> subprocess.Popen:
    """Start a sweep and signal its process group once a trial of this launch has its MLflow run FINISHED (polled).

    Counted from the launch's start, not in all: an earlier launch may have finished more trials than it was
    signalled after (its graceful stop lets a trial end), and a signal sent at once would reach a driver that has
    not yet started Tune nor installed its handlers. The store is read only after Tune wrote a new final result,
    when the driver has long opened it: a reader opening a SQLite store that is being created would race MLflow's
    schema migration.
    """
    finals_before = _final_results(results)
    runs_before = len(_finished_runs(results, space.stem)) if (results / "mlflow.db").is_file() else 0
    driver = subprocess.Popen(
        _sweep_command(space, results, *extra, hooked=hooked),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 400
    while time.time() < deadline and _final_results(results) <= finals_before:
        time.sleep(0.2)
    while time.time() < deadline and len(_finished_runs(results, space.stem)) <= runs_before:
        time.sleep(0.2)
    os.killpg(driver.pid, signum)  # the driver and the local Ray it started, like a terminal's Ctrl-C
    return driver


def _final_results(results: Path) -> int:
    """How many trials' `result.json` hold a final result (a replayed trial writes its final again: counted once)."""
    return sum('"final": 1.0' in path.read_text() for path in (results / "ray").rglob("result.json"))


def _finished_runs(results: Path, experiment: str) -> list:
    try:
        return [r for r in _children(results, experiment) if r.info.status == "FINISHED"]
    except Exception:
        return []


def _steps(results: Path, run, key: str = "train/loss") -> list[int]:
    return [m.step for m in _client(results).get_metric_history(run.info.run_id, key)]


def _parent(results: Path, experiment: str):
    client = _client(results)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return next(r for r in runs if r.data.tags.get("hashtune.role") == "sweep")


def test_a_sweep_killed_then_interrupted_twice_resumes_without_rerunning_or_duplicating_a_trial(tmp_path):
    """One multi-objective NSGA-II sweep of five trials, one at a time, through four launches (Optuna's journal and
    the sampler pickled in Tune's state go through every stop):

    1. its driver killed (SIGKILL to its process group) between a trial's MLflow run closing and Tune saving that
       the trial ended, made certain by a test-only switch that kills it at exactly that point;
    2. resumed, then a terminal's Ctrl-C; 3. resumed, then a SIGTERM to its process group (what a scheduler or
       `kill -- -PGID` sends): each exits with its shell status and a one-line resume hint, runs KILLED;
    4. resumed to the end: the trial whose run closed before the kill was replayed, not trained again, and every
       (metric, epoch) of every trial is logged once over the four launches.
    """
    space = tmp_path / "stop.yaml"  # 48 bits: K up to 6 is feasible; each signal leaves a trial or more unfinished
    space.write_text(
        "search: nsga2\nmetric: [val/best_mAP, cost/encode_ms]\nmode: [max, min]\nnum_samples: 5\nmax_concurrent: 1\n"
        "fixed:\n  train.epochs: 3\n  model.bits: 48\n"
        + TINY
        + "params:\n  model.k_groups: {choice: [1, 2, 3, 4, 5]}\n"
    )
    killed = subprocess.run(
        _sweep_command(space, tmp_path, hooked=True),
        capture_output=True,
        text=True,
        timeout=400,
        env=os.environ | {"KILL_AFTER_RUN_CLOSED": str(tmp_path / "killed")},
        start_new_session=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    end_session_processes(os.environ["RAY_TMPDIR"])  # its Ray agents outlive it (see ray_helpers); a crash ends them
    finished_before = {r.data.tags["hashtune.trial_id"]: r for r in _finished_runs(tmp_path, "stop")}
    assert len(finished_before) == 1, "the switch kills the driver right after the first run closes"
    ((trial_id, first),) = finished_before.items()

    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):  # each once a trial of its launch finished
        driver = _start_and_signal_after_trials(space, tmp_path, signum, "--resume", hooked=True)
        _, stderr = driver.communicate(timeout=180)
        end_session_processes(os.environ["RAY_TMPDIR"])
        assert driver.returncode == code, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        assert (
            last.startswith(f"hashtune.sweep: sweep 'stop' interrupted by {signal.Signals(signum).name}")
            and "--name stop --resume" in last
        )
        parent = _parent(tmp_path, "stop")
        assert parent.info.status == "KILLED" and parent.data.tags["hashtune.status"] == "interrupted"
        assert all(r.info.status != "RUNNING" for r in _children(tmp_path, "stop"))

    resumed = subprocess.run(
        _sweep_command(space, tmp_path, "--resume", hooked=True), capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    children = _children(tmp_path, "stop")
    assert len(children) == 5 and len({r.data.tags["hashtune.trial_id"] for r in children}) == 5
    assert all(r.info.status == "FINISHED" and r.data.tags["hashtune.status"] == "finished" for r in children)
    again = next(r for r in children if r.data.tags["hashtune.trial_id"] == trial_id)
    assert again.data.tags.get("hashtune.replayed") == "1", "the finished trial was trained again instead of replayed"
    assert again.data.metrics["test/mAP"] == first.data.metrics["test/mAP"]
    assert again.data.metrics["cost/encode_ms"] == first.data.metrics["cost/encode_ms"]
    # Optuna told each of the five trials once, with both objectives
    journal = JournalStorage(JournalFileBackend(str(next(tmp_path.rglob("*.journal")))))
    study = optuna.load_study(study_name="stop", storage=journal)
    told = [trial for trial in study.trials if trial.state.is_finished()]
    assert len(told) == 5 and all(trial.values is not None and len(trial.values) == 2 for trial in told)
    for run in children:  # every (metric, step) logged once over the four launches
        assert _steps(tmp_path, run) == [1, 2, 3]
        assert _steps(tmp_path, run, "test/mAP") == [3]
    assert "Trial runs: 5 finished." in (tmp_path / "stop" / "README.md").read_text()  # the study counts each run once
    for trial in (tmp_path / "ray" / "stop").glob("trial_*"):  # the best checkpoint and the latest, no more
        assert len(list(trial.glob("checkpoint_*"))) <= 2


def _blocks_sigterm(pid: int) -> bool:
    blocked = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigBlk:"))
    return bool(int(blocked.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_local_ray_listens_on_loopback_names_its_own_gcs_and_leaves_sigterm_to_the_driver():
    """What hashtune can choose: the HTTP dashboard (Train V2's State API) binds 127.0.0.1. Ray 2.60's gRPC
    servers bind every interface whatever init() is told (see results/reliability.md). The raylet and GCS
    block SIGTERM (a group SIGTERM would otherwise end the raylet and, with it, the driver, status 1). The cluster's
    processes find their own GCS when Ray's State API is asked with no address (as Train V2's placement-group
    cleaner asks it), however many Rays the machine runs; the driver's environment is left as it was."""
    import psutil
    import ray

    from hashtune.train.local_ray import init_ray

    address_before = os.environ.get("RAY_ADDRESS")
    assert init_ray(num_cpus=1)
    try:
        port = int(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
        listeners = [
            c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listeners and {c.laddr.ip for c in listeners} == {"127.0.0.1"}
        daemons = {
            p.name(): p.pid for p in psutil.Process().children(recursive=True) if p.name() in ("raylet", "gcs_server")
        }
        assert daemons.keys() == {"raylet", "gcs_server"} and all(_blocks_sigterm(pid) for pid in daemons.values())
        assert not _blocks_sigterm(os.getpid())  # the driver's own mask is restored

        @ray.remote(num_cpus=0)
        def state_api_address() -> tuple[str | None, str]:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            # unset, the State API looks for the machine's Ray and raises "Found multiple active Ray instances"
            return os.environ.get("RAY_ADDRESS"), canonicalize_bootstrap_address_or_die(None)

        told, found = ray.get(state_api_address.remote())
        gcs_address = ray.get_runtime_context().gcs_address
        assert told and told.rsplit(":", 1)[1] == gcs_address.rsplit(":", 1)[1] and found == gcs_address
        assert os.environ.get("RAY_ADDRESS") == address_before
    finally:
        ray.shutdown()


def test_no_store_read_of_a_trial_grows_with_the_sweep(tmp_path):
    """An instant TPE + ASHA sweep of 8 trials, launched as `benchmarks/bench_scale.py` launches a row: no MLflow
    store call of the driver or of a trial's process returns more than one run, and a trial makes one call in its
    process (its run, found by its trial id). A step that re-read the store per trial (an O(N^2) sweep) would fail
    it."""
    from benchmarks import bench_scale

    row = bench_scale.Row("instant", "hashtune", 8)
    (tmp_path / "space.yaml").write_text(bench_scale.space_yaml(row))
    launch = [
        sys.executable,
        "-m",
        "benchmarks.bench_scale",
        "--launch",
        json.dumps({"scenario": "instant", "arm": "hashtune", "trials": 8}),
        "--folder",
        str(tmp_path),
    ]
    subprocess.run(launch, check=True, capture_output=True, timeout=300)
    (measured,) = [json.loads(line) for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
    driver, trials = measured["mlflow"]["driver"], measured["mlflow"]["trial"]
    assert measured["complete"] and measured["suggestions"] == 8 and driver["create_run"] == 1 + 8
    assert driver["most_rows"] <= 1 and trials["most_rows"] <= 1, measured["mlflow"]
    assert (
        trials["search_runs"] == 8 and trials["calls"] <= 8 + measured["trial_processes"]
    )  # MLflow's first call in a process
    finished = [r for r in _children(tmp_path, row.slug) if r.data.tags["hashtune.status"] == "finished"]
    assert len(finished) == 8 and all(r.data.tags["hashtune.torch_threads"] == "1" for r in finished)
