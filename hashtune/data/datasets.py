"""Torch datasets over a split of an `ImageSource`, and the transforms they apply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from hashtune.data.protocol import SPLIT_NAMES, Splits, build_splits, protocol_topk
from hashtune.data.sources import ImageSource, load_source
from hashtune.errors import DataError

__all__ = ["HashingDataset", "Preprocessing", "RetrievalData", "build_transform", "build_retrieval_data", "native_size"]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: normalisation, resize interpolation and centre-crop fraction.

    The default is what hashtune uses for models trained from scratch; pretrained backbones take
    theirs from timm (`hashtune.train.model.preprocessing`).
    """

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float = 224 / 256

    def as_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


def build_transform(
    *,
    channels: int,
    native_size: int | None,
    img_size: int,
    train: bool,
    preprocessing: Preprocessing = Preprocessing(),
) -> v2.Compose:
    """Resize + random crop + flip for training RGB data, resize + centre crop for evaluation.

    Images already at `img_size` (digits at 8 px) are only normalised: a crop would cut digits and a flip would turn
    them
    into other symbols.
    """
    p = preprocessing
    steps: list = [v2.ToImage()]
    if native_size != img_size:
        interpolation = v2.InterpolationMode(p.interpolation)
        steps.append(v2.Resize(round(img_size / p.crop_pct), interpolation=interpolation, antialias=True))
        steps.append(v2.RandomCrop(img_size) if train else v2.CenterCrop(img_size))
        if train and channels == 3:
            steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(p.mean[:channels]), std=list(p.std[:channels])),
    ]
    return v2.Compose(steps)


class HashingDataset(Dataset):
    """One split of a source; items are `(image, multi_hot_label, position_in_split)`.

    The third element is the item's position in this split (0..len-1): the asymmetric strategy uses it
    to find the item's row of the learned codes, and distributed evaluation to restore dataset order.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, transform: v2.Compose) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.labels = torch.from_numpy(source.labels[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, index: int):
        if self.source.pixels is not None:
            return torch.from_numpy(self.source.pixels[index]).permute(2, 0, 1)
        path = self.source.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {path}: {error}") from None

    def __getitem__(self, position: int):
        image = self.transform(self._image(int(self.indices[position])))
        return image, self.labels[position], position


@dataclass(frozen=True)
class RetrievalData:
    """The four datasets of a retrieval protocol and what the model needs to know about them."""

    train: HashingDataset
    train_eval: HashingDataset
    val_query: HashingDataset
    test_query: HashingDataset
    database: HashingDataset
    splits: Splits
    num_classes: int
    multi_label: bool
    channels: int
    topk: int | None = None
    """The protocol's mAP cut-off (None: the whole database)."""


def native_size(source: ImageSource) -> int | None:
    return source.pixels.shape[1] if source.pixels is not None else None


def build_retrieval_data(
    *,
    name: str,
    root: str | Path = "",
    seed: int,
    img_size: int,
    preprocessing: Preprocessing = Preprocessing(),
    splits: Splits | None = None,
    val_per_class: int | None = None,
    protocol: str = "",
) -> RetrievalData:
    """Load `name` and build its protocol's datasets (or use given `splits`, e.g. from a resumed run).

    `train` applies training augmentation; `train_eval` holds the same images with the evaluation
    transform (the asymmetric strategy encodes them).
    """
    source = load_source(name, root)
    if splits is None:
        splits = build_splits(source, seed, None if name == "listfile" else name, val_per_class=val_per_class)
    common = dict(
        channels=source.channels, native_size=native_size(source), img_size=img_size, preprocessing=preprocessing
    )
    train_transform = build_transform(train=True, **common)
    eval_transform = build_transform(train=False, **common)
    datasets = {split: HashingDataset(source, getattr(splits, split), eval_transform) for split in SPLIT_NAMES}
    return RetrievalData(
        train=HashingDataset(source, splits.train, train_transform),
        train_eval=datasets["train"],
        val_query=datasets["val_query"],
        test_query=datasets["test_query"],
        database=datasets["database"],
        splits=splits,
        num_classes=source.num_classes,
        multi_label=source.multi_label,
        channels=source.channels,
        topk=protocol_topk(name, protocol),
    )
