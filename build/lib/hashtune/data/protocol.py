"""Retrieval protocols: seeded train / val-query / test-query / database index sets.

Rules every protocol keeps: train is inside the database; no query (val or test) is in the database;
val and test queries are disjoint. Only `val_query` may drive model selection and early stopping;
`test_query` is reported, never selected on.

* digits: per class 50 train, 30 test queries, 20 val queries; the database is everything that is
  not a query (about 1,297 images, train included).
* cifar10 (the usual "cifar10" protocol of DeepHash-pytorch, DCH and TransHash): per class 100 test
  queries, 100 val queries drawn from outside the test queries, and a 5,400-image database drawn from
  the remaining 5,800, whose first 500 are the training images: 54,000 in the database.
* listfile: `train.txt`, `test.txt` and `database.txt` fix train, test queries and database. The val
  queries (as many as test queries, at most half the database outside train) are drawn from the
  database outside train and removed from it, so they never retrieve themselves.

Splits use numpy's PCG64 generator, so the same seed gives the same split on any machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtune.data.sources import ImageSource

__all__ = ["ProtocolSpec", "PROTOCOLS", "Splits", "build_splits"]

SPLIT_NAMES = ("train", "val_query", "test_query", "database")


@dataclass(frozen=True)
class ProtocolSpec:
    """Per-class counts of a single-label protocol; `database_per_class=None` takes every non-query image."""

    train_per_class: int
    val_per_class: int
    test_per_class: int
    database_per_class: int | None = None


PROTOCOLS = {
    "digits": ProtocolSpec(train_per_class=50, val_per_class=20, test_per_class=30),
    "cifar10": ProtocolSpec(train_per_class=500, val_per_class=100, test_per_class=100, database_per_class=5400),
}


@dataclass(frozen=True)
class Splits:
    """Index arrays into an `ImageSource`, sorted ascending."""

    train: np.ndarray
    val_query: np.ndarray
    test_query: np.ndarray
    database: np.ndarray

    def __post_init__(self) -> None:
        database = set(self.database.tolist())
        if not set(self.train.tolist()) <= database:
            raise ValueError("split violates the protocol: some training images are not in the database")
        for name in ("val_query", "test_query"):
            if database & set(getattr(self, name).tolist()):
                raise ValueError(f"split violates the protocol: {name} images are in the database")
        if set(self.val_query.tolist()) & set(self.test_query.tolist()):
            raise ValueError("split violates the protocol: val and test queries overlap")

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def fingerprint(self) -> str:
        """A short hash of the four index sets, logged so two runs can be seen to share a split."""
        digest = hashlib.sha256()
        for name in SPLIT_NAMES:
            digest.update(name.encode())
            digest.update(np.asarray(getattr(self, name), dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the four index arrays to an `.npz` file."""
        with Path(path).open("wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in SPLIT_NAMES})

    @classmethod
    def from_arrays(cls, arrays) -> "Splits":
        """Splits from a mapping of the four index arrays (numpy arrays or CPU tensors, e.g. a checkpoint's)."""
        return cls(**{name: np.asarray(arrays[name]) for name in SPLIT_NAMES})

    @classmethod
    def load(cls, path: str | Path) -> "Splits":
        with np.load(path) as arrays:
            return cls.from_arrays(arrays)


def _single_label_splits(source: ImageSource, spec: ProtocolSpec, rng: np.random.Generator) -> Splits:
    classes = source.labels.argmax(axis=1)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    needed = spec.test_per_class + spec.val_per_class + max(spec.train_per_class, spec.database_per_class or 0)
    for label in range(source.num_classes):
        members = rng.permutation(np.flatnonzero(classes == label))
        if len(members) < needed:
            raise ValueError(f"{source.name} class {label} has {len(members)} images; its protocol needs {needed}")
        test_end = spec.test_per_class
        val_end = test_end + spec.val_per_class
        rest = members[val_end:]
        database = rest if spec.database_per_class is None else rest[: spec.database_per_class]
        parts["test_query"].append(members[:test_end])
        parts["val_query"].append(members[test_end:val_end])
        parts["train"].append(database[: spec.train_per_class])
        parts["database"].append(database)
    return Splits(**{name: np.sort(np.concatenate(arrays)) for name, arrays in parts.items()})


def _predefined_splits(source: ImageSource, rng: np.random.Generator) -> Splits:
    train, test, database = (source.predefined[name] for name in ("train", "test", "database"))
    candidates = np.setdiff1d(database, train)
    n_val = min(len(test), len(candidates) // 2)
    val = rng.choice(candidates, size=n_val, replace=False)
    return Splits(
        train=np.sort(train),
        val_query=np.sort(val),
        test_query=np.sort(np.setdiff1d(test, database)),
        database=np.setdiff1d(database, val),
    )


def build_splits(source: ImageSource, seed: int) -> Splits:
    """The protocol's splits of `source` for `seed` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if source.predefined:
        return _predefined_splits(source, rng)
    if source.name not in PROTOCOLS:
        raise ValueError(f"no retrieval protocol for {source.name!r}; known: {sorted(PROTOCOLS)} and list files")
    return _single_label_splits(source, PROTOCOLS[source.name], rng)
