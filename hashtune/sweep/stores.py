"""Where a sweep keeps its state, and the guards around it: one sweep per name at a time, the MLflow store
created under a lock, and what a storage outage looks like in a trial's error."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from hashtune.errors import TRY_AGAIN_EXIT, HashtuneError
from hashtune.paths import check_name
from hashtune.sweep.options import SweepOptions
from hashtune.sweep.space import SearchSpace
from hashtune.tracking import STORE_RETRY_S, StoreClient, resolve_tracking

__all__ = [
    "SweepError",
    "StorageUnavailable",
    "storage_outage",
    "SweepStores",
    "TrialTracking",
    "resolve_stores",
    "sweep_lock",
    "open_tracking",
    "STORAGE_OUTAGE_SIGNS",
]


@dataclass(frozen=True)
class TrialTracking:
    """Where the trials of a sweep are recorded in MLflow (picklable: trials and the Tune callback carry it)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    store_retry_s: float = STORE_RETRY_S
    """How long its MLflow calls wait out a store that does not answer (a sweep restored by --resume keeps the
    bound in its Tune state for its logger)."""

    def client(self) -> StoreClient:
        """An MLflow client of the store that rides out an outage of up to `store_retry_s`."""
        return StoreClient(self.uri, self.store_retry_s)


class SweepError(HashtuneError, RuntimeError):
    """A sweep that cannot start or resume as asked; the message says what to do instead."""


class StorageUnavailable(HashtuneError, ConnectionError):
    """The sweep's storage (an s3:// bucket) stopped answering while a trial wrote its checkpoint: the sweep stops
    for --resume (exit 75) instead of counting the trial failed."""

    exit_code = TRY_AGAIN_EXIT

    def __init__(self, storage: str, cause: str) -> None:
        super().__init__(f"its storage {storage} did not answer ({cause[:200]})")
        self.storage, self.cause = storage, cause

    def __reduce__(self):
        return type(self), (self.storage, self.cause)


STORAGE_OUTAGE_SIGNS = ("AWS Error NETWORK_CONNECTION", "Could not connect to server")
"""What a trial's error says when the storage did not answer (pyarrow's S3 client, after its own retries)."""


def storage_outage(message: str) -> str | None:
    """The line of a trial's error text that says its storage did not answer, or None."""
    return next((line.strip() for line in message.splitlines() if any(s in line for s in STORAGE_OUTAGE_SIGNS)), None)


@dataclass(frozen=True)
class SweepStores:
    """The Tune experiment folder, the MLflow store, the Optuna study and the lock of one named sweep."""

    name: str
    results_dir: Path
    storage: str
    mlflow_uri: str | None

    @property
    def experiment_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def optuna_journal(self) -> Path:
        """The sweep's Optuna study: a journal file (an append per trial, read back once by `--resume`)."""
        return self.results_dir / "optuna" / f"{self.name}.journal"

    @property
    def lock_path(self) -> Path:
        return self.results_dir / "locks" / f"{self.name}.lock"


def resolve_stores(options: SweepOptions, space: SearchSpace) -> SweepStores:
    """The sweep's stores from its options (defaults under `results_dir`); writes nothing."""
    name = check_name(options.name or space.name, "--name" if options.name else "the space's file name (pass --name)")
    results_dir = Path(options.results_dir).absolute()
    return SweepStores(name, results_dir, options.storage or str(results_dir / "ray"), options.mlflow_uri)


@contextlib.contextmanager
def sweep_lock(stores: SweepStores) -> Iterator[None]:
    """Hold the sweep's lock: a second sweep of the same name is refused with the holder's PID.

    The lock is an OS file lock (`filelock`), so a holder that dies, even by SIGKILL, releases it.
    """
    stores.lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(stores.lock_path), stores.lock_path.with_suffix(".pid")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = holder.read_text().strip() if holder.is_file() else "unknown"
        raise SweepError(
            f"sweep {stores.name!r} is already running (pid {pid}); wait for it to end or pick another --name"
        ) from None
    try:
        holder.write_text(f"{os.getpid()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def open_tracking(stores: SweepStores) -> tuple[str, str | None]:
    """(tracking URI, artifact location), creating a local SQLite store under a lock so that two sweeps
    starting at once on a new store never race its schema migration."""
    if stores.mlflow_uri is not None and not stores.mlflow_uri.startswith("sqlite:///"):
        return resolve_tracking(stores.mlflow_uri, stores.results_dir)  # a server: nothing to create here
    store_lock = stores.results_dir / "locks" / "mlflow-store.lock"
    store_lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(store_lock):
        return resolve_tracking(stores.mlflow_uri, stores.results_dir)
