"""A full disk: every file hashtune writes is whole or absent (temp + rename), ENOSPC is one line naming the folder
and the bytes, and a run continues with --resume once space is freed (a real tmpfs where mounting is allowed)."""

import errno
import shutil
import subprocess

import pytest

from hashtune.paths import DISK_FULL_EXIT, DiskFullError, atomic_file, atomic_write_text
from hashtune.train.checkpoint import load_checkpoint
from hashtune.train.cli import main as train_main

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.eval_every=1", "train.warmup_epochs=0"]


def test_a_write_that_meets_a_full_disk_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "before\n")
    with pytest.raises(DiskFullError) as raised, atomic_file(path) as handle:
        handle.write("half of it")
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "before\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    message = str(raised.value)
    assert message.startswith(f"no space left on device writing metrics.json in {tmp_path} (10 bytes written ")
    assert "\n" not in message and raised.value.errno == errno.ENOSPC


def test_other_errors_pass_through_and_leave_no_temp_file(tmp_path):
    with pytest.raises(ValueError, match="not a disk"), atomic_file(tmp_path / "a.txt") as handle:
        handle.write("x")
        raise ValueError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_has_the_modes_of_an_ordinary_one(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def _pages(size: int) -> int:
    return -(-size // 4096) * 4096


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed on this machine: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_run_that_fills_the_disk_stops_in_one_line_and_resumes_once_space_is_freed(tmp_path, small_tmpfs, capsys):
    reference = tmp_path / "reference"
    assert train_main(["--out", str(reference), "--no-progress", *TINY, "train.epochs=2"]) == 0
    sizes = {path.name: _pages(path.stat().st_size) for path in reference.iterdir()}
    # room for the first epoch's checkpoint but not for the second's temp file beside it
    room = sizes["config.yaml"] + sizes["splits.npz"] + 2 * sizes["history.csv"] + sizes["checkpoint.pt"] * 3 // 2
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_tmpfs).free - _pages(room)))
    run = small_tmpfs / "run"
    capsys.readouterr()

    assert train_main(["--out", str(run), "--no-progress", *TINY, "train.epochs=2"]) == DISK_FULL_EXIT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"hashtune.train: error: no space left on device writing checkpoint.pt in {run} ("
    ), lines
    assert load_checkpoint(run)["epoch"] == 1  # the first epoch's, whole: the second never replaced it
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]

    ballast.unlink()
    assert train_main(["--resume", str(run), "--no-progress"]) == 0
    assert (run / "metrics.json").is_file() and load_checkpoint(run)["epoch"] == 2


def test_the_errors_a_trial_may_raise_survive_pickling(tmp_path):
    """Ray sends a trial's exception to the driver pickled: each keeps its message and fields."""
    import pickle

    from hashtune.sweep.stores import StorageUnavailable
    from hashtune.tracking import StoreUnavailable

    for error in (
        DiskFullError(tmp_path / "checkpoint.pt", 10),
        StoreUnavailable("http://127.0.0.1:1", 3.0, ValueError("API request to x failed with exception y")),
        StorageUnavailable("s3://b/p", "AWS Error NETWORK_CONNECTION"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
