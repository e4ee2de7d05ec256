"""Shared fixtures: small datasets written in the exact on-disk formats hashtune reads."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PYTHONHASHSEED", "0")
# Two pytest workers, each with torch processes of 2 threads (and Ray's beside them) on 2 cores: torch's OpenMP
# threads spin while they wait, burning the core another process needed. Passive waiting changes no result (the
# bit-identical tests run under it); a Ray test beside a trainer test took 73 s instead of 103 s (measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray Train's controller polls its workers every 2 s by default: each state change of a test's tiny run waited for it
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def with_overrides(base: list[str], overrides: list[str]) -> list[str]:
    """`base` overrides with each key that `overrides` gives replaced by its value there (a key may be given once)."""
    given = {pair.split("=")[0] for pair in overrides}
    return [pair for pair in base if pair.split("=")[0] not in given] + list(overrides)


def write_cifar_folder(root: Path, per_batch: int, seed: int = 0) -> Path:
    """A `cifar-10-batches-py` folder with `per_batch` images per batch, classes round-robin."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return folder


def write_listfile_folder(root: Path, n_train=8, n_test=4, n_extra_db=8, classes=3, seed=0) -> Path:
    """PNG images plus train/test/database list files; train is inside database.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = {"train": [], "test": [], "database": []}
    for i in range(n_train + n_test + n_extra_db):
        path = f"images/{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / path)
        label = np.zeros(classes, dtype=int)
        label[i % classes] = 1
        if i % 2 == 0:
            label[(i + 1) % classes] = 1  # every other image carries two labels
        line = f"{path} {' '.join(map(str, label))}"
        if i < n_train:
            rows["train"].append(line)
            rows["database"].append(line)
        elif i < n_train + n_test:
            rows["test"].append(line)
        else:
            rows["database"].append(line)
    for name, lines in rows.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar_folder(tmp_path, per_batch=20).parent


@pytest.fixture
def listfile_root(tmp_path):
    return write_listfile_folder(tmp_path / "lists")
