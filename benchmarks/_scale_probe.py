"""What one launch of a sweep costs, measured from outside the code under test (bench_scale's probes).

* `count_mlflow_calls(role)`: every outermost call of MLflow's SQLAlchemy tracking store, with its seconds
  and the runs it returned, appended as a line to the file `$BENCH_MLFLOW_LOG` (the driver calls it;
  `count_mlflow_calls_in_trial` is
  Ray's `worker_process_setup_hook`, so trial processes count theirs too).
* `ray_process_cpu()`: CPU seconds of this machine's Ray processes, trial processes (`ray::...`) apart from
  Ray's daemons (raylet, GCS, dashboard and agents), to difference around a launch.
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
    "time_calls",
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


def ray_process_cpu() -> dict[int, tuple[str, float]]:
    """`{pid: (kind, cpu seconds)}` of the Ray processes alive now; kind `trial` (a `ray::` worker) or `daemon`."""
    import psutil

    processes = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        command = process.info["cmdline"] or []
        if command and command[0].startswith("ray::"):
            kind = "trial"
        elif process.info["name"] in ("raylet", "gcs_server") or any("site-packages/ray/" in part for part in command):
            kind = "daemon"
        else:
            continue
        times = process.info["cpu_times"]
        if times is not None:
            processes[process.pid] = (kind, times.user + times.system)
    return processes


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each kind spent between two `ray_process_cpu()` snapshots (processes started meanwhile in full)."""
    spent = {"trial": 0.0, "daemon": 0.0, "trial_processes": 0}
    for pid, (kind, seconds) in after.items():
        earlier = before.get(pid)
        spent[kind] += seconds - (earlier[1] if earlier else 0.0)
        if kind == "trial" and earlier is None:
            spent["trial_processes"] += 1
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
