"""Image sources: where the pixels and labels of a dataset come from. Nothing is ever downloaded.

* `digits`: scikit-learn's bundled `load_digits` (1,797 real 8x8 grayscale images, 10 classes).
* `cifar10`: the standard `cifar-10-batches-py` folder (`data_batch_1..5`, `test_batch`) under
  `data.root`, read from its python pickles.
* `listfile`: DeepHash-pytorch's list-file convention for NUS-WIDE-21 and ImageNet-100: `train.txt`,
  `test.txt` and `database.txt` under `data.root`, one `relative/path.jpg 0 1 0 ...` line per image
  (a multi-hot label row); paths are relative to `data.root`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashtune.config import CHOICES
from hashtune.errors import DataError, DataNotFoundError

__all__ = ["ImageSource", "load_source", "SOURCES"]

SOURCES = CHOICES["data.name"]
"""The datasets `data.name` names (the config validates against the same tuple)."""
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
LIST_FILES = ("train.txt", "test.txt", "database.txt")


@dataclass(frozen=True)
class ImageSource:
    """All the images of a dataset and their multi-hot labels.

    Exactly one of `pixels` (uint8, (n, H, W, C), held in memory) and `paths` (image files) is set.
    `predefined` holds index arrays for splits that the dataset itself fixes (list files).
    """

    name: str
    labels: np.ndarray
    pixels: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    predefined: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    @property
    def multi_label(self) -> bool:
        return bool((self.labels.sum(axis=1) > 1).any())

    @property
    def channels(self) -> int:
        return self.pixels.shape[3] if self.pixels is not None else 3


def _one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.zeros((len(classes), num_classes), dtype=np.float32)
    labels[np.arange(len(classes)), classes] = 1.0
    return labels


def load_digits_source() -> ImageSource:
    """scikit-learn's bundled digits, 0..16 intensities scaled to uint8 0..255."""
    images, classes = _bundled_digits()
    pixels = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSource(name="digits", labels=_one_hot(classes, 10), pixels=pixels)


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images (float 0..16) and classes `sklearn.datasets.load_digits` returns, read from the same bundled file
    (`sklearn/datasets/data/digits.csv.gz`, 64 pixels then the class per row) without importing scikit-learn.

    Importing it (scipy.stats and pandas with it) was most of a trial process's data loading: 0.8 to 1.8 CPU-seconds
    for 1,797 tiny images, paid by every trial and Ray Train worker (measured here 2026-12-03). Where the file is not
    where scikit-learn keeps it, `load_digits` itself reads it.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    bundled = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if bundled is None or not bundled.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(bundled) as handle:
        rows = np.loadtxt(handle, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(error).__name__}: {error})") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels)


def load_cifar10_source(root: str | Path) -> ImageSource:
    """All 60,000 CIFAR-10 images (train batches then the test batch) from `root`.

    `root` may be the `cifar-10-batches-py` folder itself or its parent.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [name for name in CIFAR_BATCHES if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"data.root={str(root)!r} lacks CIFAR-10 batches {missing}; expected the cifar-10-batches-py folder "
            f"with {', '.join(CIFAR_BATCHES)}"
        )
    batches = [_read_cifar_batch(folder / name) for name in CIFAR_BATCHES]
    pixels = np.concatenate([pixels for pixels, _ in batches])
    classes = np.concatenate([classes for _, classes in batches])
    return ImageSource(name="cifar10", labels=_one_hot(classes, 10), pixels=pixels)


def _read_list_file(path: Path) -> list[tuple[str, np.ndarray]]:
    rows, width = [], None
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        relative, *values = line.split()
        if width is None:
            width = len(values)
        if len(values) != width or not all(value in ("0", "1") for value in values):
            raise DataError(
                f"{path}:{line_number}: label row of width {len(values)} ({' '.join(values[:8])}...) where "
                f"{width} values in {{0, 1}} were expected"
            )
        rows.append((relative, np.asarray(values, dtype=np.float32)))
    if not rows:
        raise DataError(f"{path} holds no images; expected lines like 'relative/path.jpg 0 1 0 ...'")
    return rows


def load_listfile_source(root: str | Path) -> ImageSource:
    """Images named by `train.txt`, `test.txt` and `database.txt` under `root` (DeepHash-pytorch format).

    The pool is the union of the three lists by path; `predefined` gives each list's indices into it.
    Training images missing from `database.txt` are added to the database (train is inside it).
    """
    root = Path(root)
    missing = [name for name in LIST_FILES if not (root / name).is_file()]
    if missing:
        raise DataNotFoundError(f"data.root={str(root)!r} lacks list files {missing}; expected {', '.join(LIST_FILES)}")
    lists = {name.removesuffix(".txt"): _read_list_file(root / name) for name in LIST_FILES}
    widths = {name: len(rows[0][1]) for name, rows in lists.items()}
    if len(set(widths.values())) != 1:
        raise DataError(f"list files under {root} disagree on the label width: {widths}")
    position: dict[str, int] = {}
    paths: list[str] = []
    labels: list[np.ndarray] = []
    predefined: dict[str, list[int]] = {}
    for name, rows in lists.items():
        predefined[name] = []
        for relative, label in rows:
            if relative not in position:
                position[relative] = len(paths)
                paths.append(str(root / relative))
                labels.append(label)
            predefined[name].append(position[relative])
    database = np.union1d(predefined["database"], predefined["train"])
    return ImageSource(
        name="listfile",
        labels=np.stack(labels),
        paths=tuple(paths),
        predefined={
            "train": np.asarray(predefined["train"]),
            "test": np.asarray(predefined["test"]),
            "database": database,
        },
    )


def load_source(name: str, root: str | Path = "") -> ImageSource:
    """Load a dataset by its `data.name`."""
    if name == "digits":
        return load_digits_source()
    if name not in SOURCES:
        raise DataError(f"data.name={name!r} is not a dataset; expected one of {SOURCES}")
    if not root or not Path(root).is_dir():
        raise DataNotFoundError(
            f"data.root={str(root)!r} is not a directory; data.name={name} reads its files from there"
        )
    return load_listfile_source(root) if name == "listfile" else load_cifar10_source(root)  # the cifar10* protocols
