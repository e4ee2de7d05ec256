"""An MLflow store that stops answering: every call of the sweep rides the outage out up to `--store-retry-s`, past
it the sweep stops for `--resume` (exit 75, one line); unit tests of the retrying client, and a real `mlflow server`
on 127.0.0.1 stopped and restarted under a sweep."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from ray_helpers import end_session_processes, short_temp_dir

from benchmarks.servers import free_port, mlflow_server, moto_s3_server
from hashtune.tracking import StoreClient, StoreUnavailable, is_transient

REFUSED = MlflowException(
    "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool(host="
    "'127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError(...: [Errno 111] Connection refused))"
)
TIMED_OUT = MlflowException(
    "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/create failed with timeout exception"
)


class _Flaky:
    """A stand-in MLflow client whose calls fail with `errors` (in order) before answering."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls = list(errors), 0

    def get_run(self, run_id):
        return self._answer(run_id)

    def create_run(self, experiment_id):
        return self._answer(experiment_id)

    def _answer(self, value):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return value


def _client(errors: list[Exception], retry_s: float = 60.0) -> tuple[StoreClient, list[float]]:
    clock, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    client = StoreClient("http://127.0.0.1:1", retry_s, sleep=sleep, clock=lambda: clock[0])
    client._client = _Flaky(errors)
    return client, slept


def test_a_call_rides_out_an_outage_with_doubling_waits():
    client, slept = _client([REFUSED] * 4)
    assert client.get_run("r") == "r" and client._client.calls == 5
    assert slept == [0.5, 1.0, 2.0, 4.0]


def test_past_the_bound_one_line_names_the_store_and_the_wait():
    client, slept = _client([REFUSED] * 100, retry_s=10.0)
    with pytest.raises(StoreUnavailable) as raised:
        client.get_run("r")
    assert sum(slept) == pytest.approx(10.0) and slept[-1] == pytest.approx(10.0 - 7.5)  # the last wait ends at it
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("the MLflow store http://127.0.0.1:1 did not answer for 10 s (API request to ")


def test_a_wrong_request_is_not_retried():
    client, slept = _client([MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'r' not found")])
    with pytest.raises(MlflowException, match="not found"):
        client.get_run("r")
    assert slept == [] and client._client.calls == 1


def test_a_create_the_store_may_have_received_is_never_sent_twice():
    client, slept = _client([REFUSED, TIMED_OUT])
    with pytest.raises(StoreUnavailable):
        client.create_run("0")  # refused: sent again; timed out: it may exist, and a resume finds it by its tag
    assert client._client.calls == 2 and slept == [0.5]


def test_transient_errors_are_those_of_a_store_that_does_not_answer():
    assert is_transient(REFUSED) and is_transient(TIMED_OUT) and is_transient(requests.exceptions.ConnectionError())
    assert not is_transient(MlflowException("INVALID_PARAMETER_VALUE: bad key"))
    assert not is_transient(ValueError("API request to nowhere"))


# ---- a real server under a sweep --------------------------------------------------------------------------------

SPACE = (
    "search: grid\nmax_concurrent: 1\nseeds: [0]\nfixed:\n  model.bits: 48\n  train.epochs: 1\n"
    "  train.warmup_epochs: 0\nparams:\n  model.k_groups: {grid: [1, 2, 3]}\n"
)


def _until(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _children(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [run for run in runs if run.data.tags.get("hashtune.role") != "sweep"]


def _runs_by_status(uri: str, experiment: str) -> list[str]:
    if uri.startswith("sqlite:///"):  # read a local store only once the driver has made it (never race its migration)
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_file():
            return []
        with FileLock(database.parent / "locks" / "mlflow-store.lock"):
            pass
    try:
        return sorted(run.info.status for run in _children(uri, experiment))
    except MlflowException:
        return []


@pytest.mark.slow
@pytest.mark.xdist_group("ray-store_outage")
def test_a_sweep_rides_out_a_stopped_server_or_stops_for_resume_with_every_run_once(tmp_path, monkeypatch):
    ray_dir = short_temp_dir("so")
    space = tmp_path / "outage.yaml"
    space.write_text(SPACE)
    store = tmp_path / "store"
    server = mlflow_server(f"sqlite:///{store / 'mlflow.db'}", artifacts=str(store / "artifacts")).start()
    env = os.environ | {
        "RAY_TMPDIR": ray_dir,
        "FAKE_TRIAL": "fake_trials:gated",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }

    def launch(name: str, retry_s: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}{len(extra)}.err"
        command = [sys.executable, str(Path(__file__).parent / "sweep_with_hooks.py"), "--space", str(space)]
        command += ["--name", name]
        command += ["--results-dir", str(tmp_path / "results"), "--mlflow-uri", server.url]
        command += ["--store-retry-s", retry_s, *extra]
        gate = {"FAKE_GATE": str(tmp_path / f"{name}.gate")}
        with log.open("w") as stderr:
            driver = subprocess.Popen(command, env=env | gate, stdout=subprocess.DEVNULL, stderr=stderr)
        return driver, log

    try:
        # 1. stopped while the sweep waits on its second trial, started again once the driver has seen it down
        driver, log = launch("rides", "300")
        # the second trial's run made (its create is never interrupted by the stop) and the first one closed
        _until(lambda: _runs_by_status(server.url, "rides") == ["FINISHED", "RUNNING"], "the second trial's run")
        server.stop()
        (tmp_path / "rides.gate").touch()
        _until(lambda: "did not answer" in log.read_text(), "the driver to meet the stopped store")
        server.start()
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]

        # 2. down for longer than --store-retry-s: the sweep stops, one line; --resume once the store is back
        driver, log = launch("stops", "2")
        _until(lambda: _runs_by_status(server.url, "stops") == ["FINISHED", "RUNNING"], "the second trial's run")
        server.stop()
        (tmp_path / "stops.gate").touch()
        assert driver.wait(timeout=300) == 75
        (last,) = [text for text in log.read_text().splitlines() if text.startswith("hashtune.sweep: sweep 'stops'")]
        assert last.startswith(f"hashtune.sweep: sweep 'stops' stopped: the MLflow store {server.url} did not answer")
        assert "Continue it with: python -m hashtune.sweep --space" in last and "--resume" in last
        server.start()
        resumed, log = launch("stops", "300", "--resume")
        assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        server.stop()
        end_session_processes(ray_dir)

    server.start()
    try:
        for name in ("rides", "stops"):
            runs = _children(server.url, name)
            client = MlflowClient(server.url)
            assert sorted(run.data.tags["hashtune.point"] for run in runs) == sorted(
                {run.data.tags["hashtune.point"] for run in runs}
            ), f"{name}: a point ran twice"
            assert len(runs) == 3 and all(run.info.status == "FINISHED" for run in runs), name
            for run in runs:
                assert [m.step for m in client.get_metric_history(run.info.run_id, "val/best_mAP")] == [1], name
    finally:
        server.stop()


# ---- the sweep's S3 storage stopping under it -------------------------------------------------------------------


class _Switch:
    """A TCP forwarder on 127.0.0.1 to `port`: `down()` stops listening and cuts every open connection (a storage
    that does not answer), `up()` listens again on the same port."""

    def __init__(self, port: int) -> None:
        self.target, self.port, self.listener, self.open = port, free_port(), None, []
        self.lock = threading.Lock()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            self.listener.close()
            for connection in self.open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.slow
@pytest.mark.xdist_group("ray-store_outage")
def test_a_sweep_whose_s3_storage_stops_answering_stops_for_resume_with_every_run_once(tmp_path):
    moto = moto_s3_server().start()
    switch = _Switch(moto.port)
    switch.up()
    ray_dir = short_temp_dir("s3o")
    aws = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = os.environ | aws | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{switch.port}", "RAY_TMPDIR": ray_dir}
    space = tmp_path / "s3out.yaml"
    space.write_text(
        "search: grid\nmax_concurrent: 1\nseeds: [0]\nfixed:\n  train.epochs: 2\n  train.eval_every: 1\n"
        "  train.warmup_epochs: 0\n  model.depth: 1\n  model.embed_dim: 16\n  model.num_heads: 2\n  model.bits: 48\n"
        "params:\n  model.k_groups: {grid: [1, 2, 3]}\n"
    )
    results, store = tmp_path / "results", f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    command = [sys.executable, "-m", "hashtune.sweep", "--space", str(space), "--results-dir", str(results)]
    command += ["--storage", "s3://outage/sweeps"]
    try:
        import boto3

        boto3.client("s3", endpoint_url=moto.url, **_boto(aws)).create_bucket(Bucket="outage")
        log = tmp_path / "stopped.err"
        with log.open("w") as stderr:
            driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _until(lambda: _runs_by_status(store, "s3out") == ["FINISHED", "RUNNING"], "the second trial's run")
        switch.down()
        assert driver.wait(timeout=400) == 75, log.read_text()[-3000:]
        # one line of ours (arrow's C++ client may add its own at exit, after it)
        (line,) = [text for text in log.read_text().splitlines() if text.startswith("hashtune.sweep: sweep 's3out'")]
        assert line.startswith("hashtune.sweep: sweep 's3out' stopped: its storage s3://outage/sweeps/s3out did")
        assert "AWS Error NETWORK_CONNECTION" in line and "--resume" in line
        end_session_processes(ray_dir)

        switch.up()
        resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        with contextlib.suppress(OSError):
            switch.down()
        moto.stop()
        end_session_processes(ray_dir)
    runs = _children(store, "s3out")
    points = [run.data.tags["hashtune.point"] for run in runs]
    assert len(runs) == 3 and len(set(points)) == 3 and all(run.info.status == "FINISHED" for run in runs)
    client = MlflowClient(store)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]


def _boto(aws: dict) -> dict:
    return {
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


def test_a_trial_error_names_a_storage_outage_only_when_the_s3_client_says_so():
    from hashtune.sweep.stores import storage_outage

    aws = "OSError: When testing for existence of bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket operation"
    assert storage_outage(f"Traceback (most recent call last):\n  ...\n{aws}\n") == aws
    assert storage_outage(f"{REFUSED}\nValueError: bad config") is None  # an MLflow store's refusal: not the storage
