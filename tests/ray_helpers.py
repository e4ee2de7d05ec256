"""Starting and inspecting local Ray for tests: loopback only, temp dirs, always shut down."""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import ray


@contextlib.contextmanager
def local_ray(num_cpus: int = 2):
    """A local Ray whose dashboard (Train V2's State API) listens on 127.0.0.1 only."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(
        num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", _temp_dir=temp_dir, log_to_driver=False,
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
    return list_actors(filters=filters, detail=True, limit=1000)
