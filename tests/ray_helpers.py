"""Starting and inspecting local Ray for tests: loopback only, temp dirs, always shut down."""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import ray

from hashtune.train.local_ray import start_local_ray


def short_temp_dir(prefix: str = "rs") -> str:
    """A fresh folder directly under /tmp: Ray's Unix socket paths live under its temp dir and may not pass 107 bytes
    (pytest's own tmp_path, e.g. /tmp/pytest-of-root/pytest-102/..., is too long once its counter grows)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@contextlib.contextmanager
def local_ray(num_cpus: int = 2):
    """A local Ray whose dashboard (Train V2's State API) listens on 127.0.0.1 only."""
    temp_dir = short_temp_dir("rt")
    start_local_ray(  # the other pytest worker may run a local Ray of its own
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def train_workers(state: str | None = None) -> list:
    """Ray Train worker actors (optionally only those in `state`), from the State API."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
    # this process's cluster: with another local Ray on the machine (a test beside this one), the State API would
    # refuse to guess between them
    address = ray.get_runtime_context().gcs_address
    return list_actors(address=address, filters=filters, detail=True, limit=1000)


def end_session_processes(temp_dir: str, timeout: float = 30.0) -> int:
    """SIGKILL every process whose command line names `temp_dir` (a test's RAY_TMPDIR) and wait until they are gone.

    A SIGKILLed driver's dashboard and runtime-env agents outlive it for minutes (Ray 2.60 does not fate-share them),
    holding the agent's fixed port 52365; the next local Ray then cannot start its agent. A crashed machine ends them
    all; a test that kills a driver ends them itself. Returns how many it ended.
    """
    import signal

    import psutil

    ended = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in process.info["cmdline"] or ()):
                process.send_signal(signal.SIGKILL)
                ended.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(ended, timeout=timeout)
    return len(ended)
