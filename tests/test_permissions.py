"""What hashtune creates is not writable by other users: stores, locks, run folders, checkpoints, and the folder a
local Ray lives in (`results/reliability.md`, Permissions)."""

import os
import stat
from pathlib import Path

import pytest

from hashtune.paths import no_world_write
from hashtune.train.local_ray import LocalRayError, private_ray_temp_dir


def _world_writable(root: Path) -> list[str]:
    paths = [root, *root.rglob("*")]
    return [f"{path} {stat.filemode(path.lstat().st_mode)}" for path in paths if path.lstat().st_mode & stat.S_IWOTH]


@pytest.fixture
def permissive_umask():
    """A shell's umask of 000 (everything created world-writable unless hashtune says otherwise)."""
    previous = os.umask(0o000)
    yield
    os.umask(previous)


def test_a_local_ray_lives_in_a_folder_only_its_user_enters(tmp_path):
    assert private_ray_temp_dir({"RAY_TMPDIR": "/tmp"}, parent=str(tmp_path)) is None  # the user's choice stands
    assert private_ray_temp_dir({"TMPDIR": "/var/tmp"}, parent=str(tmp_path)) is None
    private = tmp_path / f"hashtune-ray-{os.getuid()}"
    assert private_ray_temp_dir({}, parent=str(tmp_path)) == f"{private}/ray"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # Ray's 0777 session folders below it are out of others' reach
    private.chmod(0o777)
    private_ray_temp_dir({}, parent=str(tmp_path))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # loosened since: tightened again
    private.rmdir()
    private.symlink_to(tmp_path)  # a folder someone else planted is refused, not used
    with pytest.raises(LocalRayError, match="is not a folder of yours"):
        private_ray_temp_dir({}, parent=str(tmp_path))


def test_stores_and_locks_are_not_world_writable_under_any_umask(tmp_path, permissive_umask):
    from hashtune.sweep.options import SweepOptions
    from hashtune.sweep.space import load_space
    from hashtune.sweep.stores import open_tracking, resolve_stores, sweep_lock

    assert no_world_write() & 0o002  # what every command does first
    stores = resolve_stores(SweepOptions("smoke", results_dir=tmp_path / "results"), load_space("smoke"))
    open_tracking(stores)
    with sweep_lock(stores):
        pass
    assert (tmp_path / "results" / "mlflow.db").is_file() and (tmp_path / "results" / "locks").is_dir()
    assert _world_writable(tmp_path / "results") == []


def test_a_run_folder_and_its_checkpoint_are_not_world_writable(tmp_path, permissive_umask):
    from hashtune.train.cli import main as train_main

    out = tmp_path / "run"
    tiny = [
        "model.depth=1",
        "model.embed_dim=16",
        "model.num_heads=2",
        "train.epochs=1",
        "train.eval_every=1",
        "train.warmup_epochs=0",
    ]
    assert train_main(["--out", str(out), "--no-progress", *tiny]) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    assert _world_writable(out) == []


def test_ray_address_in_the_environment_is_connected_to_not_replaced_by_a_local_ray(monkeypatch):
    """A local Ray starts with `ray.init(address="local")` (it must ignore the `RAY_ADDRESS` it gives its daemons), so
    `init_ray` itself honours a user's `RAY_ADDRESS`, as `ray.init()` does."""
    import ray

    from hashtune.train.local_ray import init_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert init_ray() and calls == [{"address": "10.0.0.5:6379", "log_to_driver": False}]
    assert init_ray("auto") and calls[-1]["address"] == "auto"  # an address given wins
