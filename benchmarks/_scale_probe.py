"""What one launch of a sweep costs, measured from outside the code under test (bench_scale's probes).

* `count_mlflow_calls(role)`: every outermost call of MLflow's SQLAlchemy tracking store, with its seconds
  and the runs it returned, appended as a line to the file `$BENCH_MLFLOW_LOG` (the driver calls it;
  `count_mlflow_calls_in_trial` is
  Ray's `worker_process_setup_hook`, so trial processes count theirs too).
* `ray_process_cpu()`: CPU seconds of this machine's Ray processes, the worker processes that run trials apart
  from Ray's daemons (raylet, GCS, dashboard and agents), to difference around a launch; `CpuSampler` reads it
  every half second from a child process, so a worker that ended before the second snapshot is counted too.
* `trial_process_count()`: how many processes ran this job's trials (Ray's actor table, ended actors too).
* `time_calls(owner, name)`: the durations of a method's calls in this process (Optuna's suggestions, Tune's
  experiment-state saves).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time

__all__ = [
    "MLFLOW_LOG_ENV",
    "count_mlflow_calls",
    "count_mlflow_calls_in_trial",
    "read_mlflow_log",
    "ray_process_cpu",
    "cpu_delta",
    "CpuSampler",
    "time_calls",
    "trial_process_count",
]

MLFLOW_LOG_ENV = "BENCH_MLFLOW_LOG"
NOT_REQUESTS = {"shut_down_async_logging", "flush_async_logging"}
"""Store methods MLflow's client calls that touch no store (its async-logging queue)."""


def count_mlflow_calls(role: str) -> None:
    """Count this process's MLflow store calls into `$BENCH_MLFLOW_LOG` as `role method seconds` lines (once per
    process)."""
    path = os.environ.get(MLFLOW_LOG_ENV)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if not path or getattr(SqlAlchemyStore, "_bench_counted", False):
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    depth = threading.local()

    def counted(name, method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            outer = getattr(depth, "n", 0) == 0  # a store method calling another is one request
            depth.n = getattr(depth, "n", 0) + 1
            start, result = time.perf_counter(), None
            try:
                result = method(*args, **kwargs)
                return result
            finally:
                depth.n -= 1
                if outer:  # the runs a search returned: a per-trial read must not grow with the sweep
                    rows = len(result) if isinstance(result, list) else 1
                    os.write(descriptor, f"{role} {name} {time.perf_counter() - start:.6f} {rows}\n".encode())

        return wrapper

    for name, method in inspect.getmembers(SqlAlchemyStore, inspect.isfunction):
        if not name.startswith("_") and name not in NOT_REQUESTS:
            setattr(SqlAlchemyStore, name, counted(name, method))
    SqlAlchemyStore._bench_counted = True


def count_mlflow_calls_in_trial() -> None:
    """Ray's `worker_process_setup_hook`: a trial process counts its MLflow calls too."""
    count_mlflow_calls("trial")


def read_mlflow_log(path) -> dict[str, dict[str, float]]:
    """`{role: {"calls": n, "seconds": s, "most_rows": r, "<method>": n, ...}}` from a `$BENCH_MLFLOW_LOG` file
    (`most_rows`: the most runs one search returned)."""
    counts: dict[str, dict[str, float]] = {}
    if not os.path.exists(path):
        return counts
    with open(path) as log:
        for line in log:
            role, name, seconds, rows = line.split()
            entry = counts.setdefault(role, {"calls": 0, "seconds": 0.0, "most_rows": 0})
            entry["calls"] += 1
            entry["seconds"] += float(seconds)
            entry[name] = entry.get(name, 0) + 1
            if name.startswith("search"):
                entry["most_rows"] = max(entry["most_rows"], int(rows))
    return counts


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""Daemons a raylet starts under a `ray::` name, like its workers."""


def ray_process_cpu() -> dict[int, tuple[str, float]]:
    """`{pid: (kind, cpu seconds)}` of the Ray processes alive now: kind `trial` (a `ray::` worker) or `daemon`."""
    import psutil

    processes = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        command, times = process.info["cmdline"] or [], process.info["cpu_times"]
        if times is None:
            continue
        if command and command[0].startswith("ray::") and command[0] not in RAY_AGENTS:
            kind = "trial"
        elif process.info["name"] in ("raylet", "gcs_server") or any(
            "site-packages/ray/" in part or part in RAY_AGENTS for part in command
        ):
            kind = "daemon"
        else:
            continue
        processes[process.pid] = (kind, times.user + times.system)
    return processes


class CpuSampler:
    """`ray_process_cpu()` read every `every` seconds by a child process, which keeps each process's latest reading
    in `path`: a Ray process that ends (Tune ends trial processes when it stops; a raylet does not collect its
    workers' CPU) is still counted, less what it spent after its last reading. Its own reads are no Ray process's
    CPU: 0.26 CPU-s over 20 s here, its start included, 68 processes on the machine (1.3% of a core; 2026-12-03)."""

    def __init__(self, path, every: float = 0.5):
        import subprocess
        import sys

        self.path = str(path)
        code = f"from benchmarks._scale_probe import sample_forever; sample_forever({self.path!r}, {every})"
        project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=project
        )
        self.child.stdout.readline()  # its first reading is written

    def stop(self) -> dict[int, tuple[str, float]]:
        """The latest reading of every Ray process seen since the start, the last of them taken now."""
        import json

        self.child.stdin.close()  # the child's signal to write once more and leave
        self.child.wait()
        with open(self.path) as readings:
            return {int(pid): (kind, seconds) for pid, (kind, seconds) in json.load(readings).items()}


def sample_forever(path: str, every: float) -> None:
    """`CpuSampler`'s child: merge a reading into `path` every `every` seconds; once stdin closes (the parent stopped
    it, or ended), one last reading, and leave."""
    import json
    import select
    import sys

    seen: dict[int, tuple[str, float]] = {}
    stopping = False
    while True:
        seen.update(ray_process_cpu())
        with open(path + ".tmp", "w") as readings:
            json.dump(seen, readings)
        os.replace(path + ".tmp", path)
        if stopping:
            return
        if not sys.stdout.closed:  # the first reading is in place
            print("ready", flush=True)
            sys.stdout.close()
        stopping = bool(select.select([sys.stdin], [], [], every)[0])  # nothing is written to it: readable is EOF


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each kind spent between two `ray_process_cpu()` snapshots (processes started meanwhile in full)."""
    spent = {"trial": 0.0, "daemon": 0.0}
    for pid, (kind, seconds) in after.items():
        earlier = before.get(pid)
        spent[kind] += seconds - (earlier[1] if earlier else 0.0)
    return spent


def time_calls(owner, name: str, keep=lambda result: True) -> list[float]:
    """Wrap `owner.name` so that each call whose result `keep` accepts appends its seconds to the list returned."""
    durations: list[float] = []
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        if keep(result):
            durations.append(time.perf_counter() - start)
        return result

    setattr(owner, name, timed)
    return durations


def trial_process_count() -> int:
    """How many processes ran this job's actors: a Tune trial is an actor, and a sweep of these rows starts no other
    (ended actors are in the table too)."""
    import ray
    from ray._private.state import actors  # the GCS's actor table: a cluster without a dashboard has no State API

    table = actors(job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))
    return len({actor["Pid"] for actor in table.values() if actor["Pid"]})
