"""Image retrieval with an exported bundle: encode images to packed binary codes, search by Hamming distance.

    retriever = Retriever.load("bundles/digits32")
    result = retriever.search(["query.png"], k=10)      # or images as a tensor, or packed uint8 codes
    result.ids, result.distances, result.labels          # (n_queries, k) each; labels (n_queries, k, classes)
    retriever.search_radius(codes, radius=2)            # everything within Hamming radius 2, per query
    retriever.add(images, ids=[...], labels=...)        # grow the database (in memory)

Search is the bundle's faiss binary index (`hashtune.retrieval.index`): `flat` (`IndexBinaryFlat`, exact
Hamming distances, popcount kernels, the default), `ivf` or `hnsw` (approximate, for large databases);
hashtune only maps faiss's row numbers to the bundle's ids and labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hashtune.config import load_config
from hashtune.data import Preprocessing, build_transform
from hashtune.errors import InputError
from hashtune.metrics import pack_codes, retrieval_metrics, unpack_codes
from hashtune.retrieval.bundle import BundleError, verify_bundle
from hashtune.retrieval.index import build_index, index_type
from hashtune.retrieval.thumbnails import load_thumbnails

__all__ = ["Retriever", "SearchResult", "evaluate_bundle", "image_to_tensor", "neighbour_records", "query_answers"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's RGB -> L


def _pil_to_array(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)  # PIL reads 16-bit PNGs as I;16 or I (values 0..65535)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))  # 8-bit: exactly as training reads it


MAX_IMAGE_PIXELS = 40_000_000
"""The largest image file decoded (a 6,000 x 6,000 photo is 36 M): a few-KB PNG may claim 30,000 x 30,000."""


def _check_pixels(image, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"image {image} is {width} x {height} = {width * height:,} pixels; at most {MAX_IMAGE_PIXELS:,} are "
            "decoded "
            "(resize it first)"
        )


def image_to_tensor(image, channels: int) -> torch.Tensor:
    """An image file, PIL image or (H, W[, C]) array -> (channels, H, W): uint8 as is, deeper images in [0, 1].

    uint8 stays uint8 (the transform scales it, as in training); uint16 (16-bit PNGs) is divided by
    65535 and floats are taken as [0, 1] and clipped. Grey is repeated to RGB and RGB reduced to grey
    with PIL's luma weights.
    """
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:  # reads the header only: the size is known before decoding
                _check_pixels(image, *opened.size)
                array = _pil_to_array(opened, channels)
        except Image.DecompressionBombError as error:  # PIL's own refusal, past twice its limit: a size in the message
            raise InputError(f"image {image} is refused before decoding: {error}") from None
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(f"cannot read image {image}: {error}") from None
    else:
        array = _pil_to_array(image, channels) if isinstance(image, Image.Image) else np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(f"an image is (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype.kind == "f":
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    elif array.dtype != np.uint8:
        raise InputError(f"cannot read an image array of dtype {array.dtype}; give uint8, uint16 or float in [0, 1]")
    pixels = (
        torch.from_numpy(np.array(array, order="C")).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)[:3]
    )
    if pixels.shape[0] == channels:
        return pixels
    if channels == 3:
        return pixels[:1].expand(3, -1, -1).clone()
    grey = (pixels.float() * _LUMA[:, None, None]).sum(0, keepdim=True) if pixels.shape[0] == 3 else pixels[:1].float()
    return grey.round().to(torch.uint8) if pixels.dtype == torch.uint8 else grey


class SearchResult:
    """Neighbours of each query, nearest first: ids and distances (n, k), labels (n, k, classes).

    `ids` and `labels` are looked up on first access, so a search that only needs rows and distances
    costs faiss's search alone.
    """

    def __init__(self, rows: np.ndarray, distances: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> None:
        self.rows, self.distances = rows, distances
        self._all_ids, self._all_labels = ids, labels

    @cached_property
    def ids(self) -> np.ndarray:
        return self._all_ids[self.rows]

    @cached_property
    def labels(self) -> np.ndarray:
        return self._all_labels[self.rows]


def neighbour_records(result: SearchResult, row: int) -> list[dict]:
    """Query `row`'s neighbours as `hashtune.retrieve --json` prints them: id, distance, class indices."""
    return [
        {
            "id": identifier.item() if hasattr(identifier, "item") else identifier,
            "distance": int(distance),
            "labels": np.flatnonzero(labels).tolist(),
        }
        for identifier, distance, labels in zip(result.ids[row], result.distances[row], result.labels[row])
    ]


def query_answers(
    retriever: Retriever, codes: np.ndarray, *, k: int = 10, radius: int | None = None
) -> tuple[list[list[dict]], list[np.ndarray]]:
    """Each query's neighbour records (`neighbour_records`) and database rows: the k nearest, or all within `radius`."""
    if radius is not None:
        found = [(result, 0) for result in retriever.search_radius(codes, radius)]
    else:
        result = retriever.search(codes, k)
        found = [(result, row) for row in range(len(codes))]
    return [neighbour_records(result, row) for result, row in found], [result.rows[row] for result, row in found]


class Retriever:
    """An exported encoder, its preprocessing, and a faiss binary index over the database codes."""

    def __init__(
        self,
        *,
        encoder: torch.nn.Module | None,
        preprocess: dict | None,
        index,
        ids: np.ndarray,
        labels: np.ndarray,
        bits: int,
        manifest: dict,
        thumbnails: np.ndarray | None = None,
    ) -> None:
        self.encoder, self.preprocess_spec, self.index = encoder, preprocess, index
        self.ids, self.labels, self.bits, self.manifest = ids, labels, bits, manifest
        self.thumbnails = thumbnails  # (n, S, S, C) uint8 for the first n database rows, or None
        self.code_bytes = (bits + 7) // 8
        self._transforms = (
            None
            if preprocess is None
            else {
                resize: build_transform(
                    channels=preprocess["channels"],
                    native_size=None if resize else preprocess["img_size"],
                    img_size=preprocess["img_size"],
                    train=False,
                    preprocessing=Preprocessing(
                        **{
                            key: tuple(value) if isinstance(value, list) else value
                            for key, value in preprocess.items()
                            if key in Preprocessing.__dataclass_fields__
                        }
                    ),
                )
                for resize in (False, True)
            }
        )

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        bits: int,
        ids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        index: str = "flat",
        index_options: dict | None = None,
    ) -> Retriever:
        """A code-only retriever over packed codes (no encoder: queries must be packed codes too)."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        index = build_index(codes, index, index_options)
        ids = np.arange(len(codes)) if ids is None else np.asarray(ids)
        labels = np.zeros((len(codes), 0), np.uint8) if labels is None else np.asarray(labels, np.uint8)
        return cls(encoder=None, preprocess=None, index=index, ids=ids, labels=labels, bits=bits, manifest={})

    @classmethod
    def load(cls, bundle: str | Path) -> Retriever:
        """Load a bundle after verifying its checksums and versions (`BundleError` otherwise)."""
        import faiss

        folder = Path(bundle)
        manifest = verify_bundle(folder)
        index = faiss.read_index_binary(str(folder / "index.faiss"))
        expected = manifest.get("index", {"type": "flat"})["type"]
        if index_type(index) != expected or index.ntotal != manifest["num_database"]:
            raise BundleError(
                f"{folder}: index.faiss is a {index_type(index)} index of {index.ntotal} codes, the manifest says "
                f"{expected} of {manifest['num_database']}; re-export the bundle"
            )
        return cls(
            encoder=torch.export.load(folder / "encoder.pt2").module(),
            preprocess=json.loads((folder / "preprocess.json").read_text()),
            index=index,
            ids=np.load(folder / "database_ids.npy", allow_pickle=False),
            labels=np.load(folder / "database_labels.npy", allow_pickle=False),
            bits=int(manifest["bits"]),
            manifest=manifest,
            thumbnails=load_thumbnails(folder, manifest),
        )

    def __len__(self) -> int:
        return self.index.ntotal

    def preprocess(self, images) -> torch.Tensor:
        """Image files, PIL images or arrays (uint8, uint16, float in [0, 1]) -> the encoder's input batch.

        Each image is brought to the bundle's channels and scaled by its own bit depth (16-bit PNGs
        included, see `image_to_tensor`), resized and centre-cropped when its size differs from the model's, then
        normalised as
        in training. A float tensor of shape (n, C, H, W) is taken as already preprocessed.
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images
        if self._transforms is None:
            raise InputError("this retriever has no encoder (built from codes): give packed uint8 codes")
        size, channels = self.preprocess_spec["img_size"], self.preprocess_spec["channels"]
        batch = []
        for image in images:
            pixels = image_to_tensor(image, channels)
            batch.append(self._transforms[tuple(pixels.shape[1:]) != (size, size)](pixels))
        return torch.stack(batch)

    def encode(self, images) -> np.ndarray:
        """Packed binary codes, uint8 (n, ceil(bits/8)), of preprocessed tensors or raw images."""
        if self.encoder is None:
            raise InputError("this retriever has no encoder (built from codes): give packed uint8 codes")
        with torch.inference_mode():
            return pack_codes(self.encoder(self.preprocess(images)))

    def _codes(self, queries) -> np.ndarray:
        if isinstance(queries, np.ndarray) and queries.dtype == np.uint8 and queries.ndim == 2:
            if queries.shape[1] != self.code_bytes:
                raise InputError(
                    f"packed codes must have {self.code_bytes} bytes per row for {self.bits} bits, got "
                    f"{queries.shape[1]}"
                )
            return np.ascontiguousarray(queries)
        return self.encode(queries)

    def search(self, queries, k: int = 10) -> SearchResult:
        """The k nearest database items of each query (images or packed codes) by Hamming distance."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        codes = self._codes(queries)
        distances, rows = self.index.search(codes, min(k, len(self)))
        return SearchResult(rows, distances, self.ids, self.labels)

    def search_radius(self, queries, radius: int) -> list[SearchResult]:
        """Every database item within Hamming distance `radius` (inclusive) of each query, nearest first."""
        if not 0 <= radius <= self.bits:
            raise InputError(f"radius must be in [0, {self.bits}] for {self.bits}-bit codes, got {radius}")
        codes = self._codes(queries)
        if index_type(self.index) == "hnsw":
            raise InputError("radius search needs a flat or ivf index; this bundle's index is hnsw (use k nearest)")
        limits, distances, rows = self.index.range_search(codes, radius + 1)  # faiss keeps distance < threshold
        results = []
        for i in range(len(codes)):
            d, r = distances[limits[i] : limits[i + 1]], rows[limits[i] : limits[i + 1]]
            order = np.lexsort((r, d))
            results.append(SearchResult(r[order][None], d[order][None], self.ids, self.labels))
        return results

    def add(self, images, ids: Sequence, labels: np.ndarray | None = None) -> None:
        """Encode and append images (or packed codes) to the database, in memory; all or nothing.

        `ids` (an int or a str each, none already in the database nor given twice) and `labels` (one row per
        image, the database's label width) are checked before any code is added: a refused call leaves the
        database as it was. Ids of another type than the database's are kept as given (an object array).
        """
        new_ids = self._checked_new_ids(ids)
        width = self.labels.shape[1]
        labels = np.zeros((len(new_ids), width), np.uint8) if labels is None else np.asarray(labels, np.uint8)
        if labels.shape != (len(new_ids), width):
            raise InputError(
                f"labels must have shape ({len(new_ids)}, {width}) for {len(new_ids)} ids, got {labels.shape}"
            )
        codes = self._codes(images)
        if len(codes) != len(new_ids):
            raise InputError(f"got {len(codes)} images but {len(new_ids)} ids")
        self.index.add(codes)
        self.ids = _joined_ids(self.ids, new_ids)
        self.labels = np.concatenate([self.labels, labels])

    def _checked_new_ids(self, ids: Sequence) -> list:
        new_ids = [value.item() if isinstance(value, np.generic) else value for value in ids]
        wrong = next((value for value in new_ids if isinstance(value, bool) or not isinstance(value, (int, str))), None)
        if wrong is not None:
            raise InputError(f"an id is an int or a str, got {type(wrong).__name__} {wrong!r}")
        repeated = next((value for index, value in enumerate(new_ids) if value in new_ids[:index]), None)
        if repeated is not None:
            raise InputError(f"id {repeated!r} is given twice in one add; ids name database items one each")
        taken = set(self.ids.tolist())
        clash = next((value for value in new_ids if value in taken), None)
        if clash is not None:
            raise InputError(f"id {clash!r} is already in the database; give ids not yet used")
        return new_ids


def _joined_ids(database_ids: np.ndarray, new_ids: list) -> np.ndarray:
    """The database ids with `new_ids` appended: ints stay int64 and strings str; a mix becomes an object array."""
    if not new_ids:
        return database_ids
    added = np.asarray(new_ids)
    if len(database_ids) and added.dtype.kind != database_ids.dtype.kind:
        return np.concatenate([database_ids.astype(object), added.astype(object)])
    return np.concatenate([database_ids, added])


def evaluate_bundle(bundle: str | Path) -> float:
    """The test mAP recomputed from the bundle's stored query and database codes (no network involved)."""
    folder = Path(bundle)
    manifest = verify_bundle(folder)
    config = load_config(folder / "config.yaml")
    evaluation = manifest.get(
        "evaluation", {"topk": config.eval.topk, "ties": "index"}
    )  # bundles before protocol cut-offs
    bits = int(manifest["bits"])
    arrays = {
        name: np.load(folder / f"{name}.npy", allow_pickle=False)
        for name in ("query_codes", "query_labels", "database_codes", "database_labels")
    }
    metrics = retrieval_metrics(
        torch.from_numpy(unpack_codes(arrays["query_codes"], bits)),
        torch.from_numpy(unpack_codes(arrays["database_codes"], bits)),
        torch.from_numpy(arrays["query_labels"].astype(np.float32)),
        torch.from_numpy(arrays["database_labels"].astype(np.float32)),
        topk=evaluation["topk"],
        ties=evaluation["ties"],
    )
    return metrics.map
