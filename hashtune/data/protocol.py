"""Retrieval protocols: seeded train / val-query / test-query / database index sets, as the literature names them.

Rules every protocol keeps: no query (val or test) is in the database; val and test queries are
disjoint, and val queries are never training images. Only `val_query` may drive model selection and
early stopping; `test_query` is reported, never selected on. The database is stored in an order
shuffled with the split seed, so ranking's index tie-break is a seeded random order (training images
no longer come first at equal distance).

| protocol | train / val / test per class | database | cut-off | the papers' name |
|---|---|---|---|---|
| `digits` | 50 / 20 / 30 | every non-query image, train included (about 1,297) | all | hashtune's embedded protocol |
| `cifar10` | 500 / 100 / 100 | every other image, train excluded: 53,000 (54,000 less 1,000 val queries) | all |
CIFAR-10 mAP@54000 (DCH, TransHash; DeepHash-pytorch `cifar10`) |
| `cifar10-1` | 500 / 100 / 100 | everything but the queries, train included: 58,000 (59,000 less 1,000 val) | all |
DeepHash-pytorch `cifar10-1` (mAP@59000) |
| `cifar10-2` | 5,000 / 100 / 1,000 | the training images: 49,000 (50,000 less 1,000 val, removed from train too) | all
| DeepHash-pytorch `cifar10-2` (mAP@50000) |
| `listfile` | `train.txt` / drawn / `test.txt` | `database.txt` (+ train), less the val queries | `data.protocol` |
NUS-WIDE-21 @5000, ImageNet-100 @1000, MS-COCO @5000 |

CIFAR-10 protocols draw from all 60,000 images (train batches and test batch together), as
DeepHash-pytorch does. Val queries come out of the database pool outside train (for `cifar10-2`, whose
database is the train set, out of both); `data.val_per_class=0` keeps the paper's exact database and
has no val queries (selection then falls back to the last epoch). List-file val queries are as many as
the test queries (at most half the database outside train) unless `data.val_per_class=0`.

Splits use numpy's PCG64 generator, so the same seed gives the same split on any machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashtune.data.sources import ImageSource
from hashtune.errors import DataError
from hashtune.paths import atomic_file

__all__ = ["ProtocolSpec", "PROTOCOLS", "LIST_PROTOCOLS", "Splits", "build_splits", "protocol_topk"]

SPLIT_NAMES = ("train", "val_query", "test_query", "database")
DATABASES = ("rest", "rest_without_train", "train")


@dataclass(frozen=True)
class ProtocolSpec:
    """Per-class counts of a single-label protocol and what its database is.

    `database`: `rest` (every non-query image, train included), `rest_without_train`, or `train`.
    """

    train_per_class: int
    val_per_class: int
    test_per_class: int
    database: str = "rest"
    topk: int | None = None
    literature: str = ""


PROTOCOLS = {
    "digits": ProtocolSpec(50, 20, 30, "rest", None, "hashtune's embedded digits protocol"),
    "cifar10": ProtocolSpec(500, 100, 100, "rest_without_train", None, "CIFAR-10 mAP@54000 (DCH, TransHash)"),
    "cifar10-1": ProtocolSpec(500, 100, 100, "rest", None, "DeepHash-pytorch cifar10-1 (mAP@59000)"),
    "cifar10-2": ProtocolSpec(5000, 100, 1000, "train", None, "DeepHash-pytorch cifar10-2 (mAP@50000)"),
}
LIST_PROTOCOLS = {"": None, "nuswide21": 5000, "imagenet100": 1000, "coco": 5000}
"""`data.protocol` of list-file data -> its mAP cut-off (NUS-WIDE-21 @5000, ImageNet-100 @1000, MS-COCO @5000)."""


def protocol_topk(name: str, protocol: str = "") -> int | None:
    """The mAP cut-off the literature reports for a protocol (None: the whole database)."""
    return LIST_PROTOCOLS[protocol] if name == "listfile" else PROTOCOLS[name].topk


@dataclass(frozen=True)
class Splits:
    """Index arrays into an `ImageSource`: train and queries sorted, the database in a seeded shuffled order."""

    train: np.ndarray
    val_query: np.ndarray
    test_query: np.ndarray
    database: np.ndarray

    def __post_init__(self) -> None:
        database = set(self.database.tolist())
        for name in ("val_query", "test_query"):
            if database & set(getattr(self, name).tolist()):
                raise DataError(f"split violates the protocol: {name} images are in the database")
        if set(self.val_query.tolist()) & (set(self.test_query.tolist()) | set(self.train.tolist())):
            raise DataError("split violates the protocol: val queries overlap the test queries or the training images")

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
        with atomic_file(path, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in SPLIT_NAMES})

    @classmethod
    def from_arrays(cls, arrays) -> Splits:
        """Splits from a mapping of the four index arrays (numpy arrays or CPU tensors, e.g. a checkpoint's)."""
        return cls(**{name: np.asarray(arrays[name]) for name in SPLIT_NAMES})

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        with np.load(path) as arrays:
            return cls.from_arrays(arrays)


def _val_count(spec: ProtocolSpec, val_per_class: int | None) -> int:
    return spec.val_per_class if val_per_class is None else val_per_class


def _single_label_splits(source: ImageSource, spec: ProtocolSpec, rng: np.random.Generator, n_val: int) -> Splits:
    classes = source.labels.argmax(axis=1)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    needed = spec.test_per_class + spec.train_per_class + (n_val if spec.database != "train" else 0)
    for label in range(source.num_classes):
        members = rng.permutation(np.flatnonzero(classes == label))
        if len(members) < needed:
            raise DataError(f"{source.name} class {label} has {len(members)} images; its protocol needs {needed}")
        test, train, rest = np.split(members, [spec.test_per_class, spec.test_per_class + spec.train_per_class])
        if spec.database == "train":  # val out of the train set, removed from train and database alike
            val, train = train[:n_val], train[n_val:]
            database = train
        else:  # val out of the database pool outside train
            val, rest = rest[:n_val], rest[n_val:]
            database = rest if spec.database == "rest_without_train" else np.concatenate([train, rest])
        for name, part in (("train", train), ("val_query", val), ("test_query", test), ("database", database)):
            parts[name].append(part)
    arrays = {name: np.sort(np.concatenate(values)) for name, values in parts.items()}
    return Splits(**arrays | {"database": rng.permutation(arrays["database"])})


def _predefined_splits(source: ImageSource, rng: np.random.Generator, val_per_class: int | None) -> Splits:
    train, test, database = (source.predefined[name] for name in ("train", "test", "database"))
    candidates = np.setdiff1d(database, train)
    n_val = 0 if val_per_class == 0 else min(len(test), len(candidates) // 2)
    val = rng.choice(candidates, size=n_val, replace=False)
    return Splits(
        train=np.sort(train),
        val_query=np.sort(val),
        test_query=np.sort(np.setdiff1d(test, database)),
        database=rng.permutation(np.setdiff1d(database, val)),
    )


def build_splits(
    source: ImageSource, seed: int, protocol: str | None = None, *, val_per_class: int | None = None
) -> Splits:
    """The protocol's splits of `source` for `seed` (see the module docstring).

    Args:
        protocol: the protocol's name (default: the source's, e.g. `digits`); `cifar10-1` and
            `cifar10-2` read the `cifar10` source.
        val_per_class: val queries per class instead of the protocol's; 0 keeps the paper's exact database.
    """
    rng = np.random.default_rng(seed)
    if source.predefined:
        return _predefined_splits(source, rng, val_per_class)
    protocol = protocol or source.name
    if protocol not in PROTOCOLS:
        raise DataError(f"no retrieval protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))} and list files")
    spec = PROTOCOLS[protocol]
    return _single_label_splits(source, spec, rng, _val_count(spec, val_per_class))
