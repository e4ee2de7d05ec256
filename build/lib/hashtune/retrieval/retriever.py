"""Image retrieval with an exported bundle: encode images to packed binary codes, search by Hamming distance.

    retriever = Retriever.load("bundles/digits32")
    result = retriever.search(["query.png"], k=10)      # or images as a tensor, or packed uint8 codes
    result.ids, result.distances, result.labels          # (n_queries, k) each; labels (n_queries, k, classes)
    retriever.search_radius(codes, radius=2)            # everything within Hamming radius 2, per query
    retriever.add(images, ids=[...], labels=...)        # grow the database (in memory)

Search is faiss's exhaustive binary index (`IndexBinaryFlat`): exact Hamming distances, popcount
kernels; hashtune only maps faiss's row numbers to the bundle's ids and labels.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hashtune.metrics import pack_codes, unpack_codes
from hashtune.retrieval.bundle import verify_bundle
from hashtune.data import Preprocessing, build_transform

__all__ = ["Retriever", "SearchResult", "evaluate_bundle"]


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


class Retriever:
    """An exported encoder, its preprocessing, and a faiss binary index over the database codes."""

    def __init__(self, *, encoder: torch.nn.Module | None, preprocess: dict | None, index, ids: np.ndarray, labels: np.ndarray,
                 bits: int, manifest: dict) -> None:
        self.encoder, self.preprocess_spec, self.index = encoder, preprocess, index
        self.ids, self.labels, self.bits, self.manifest = ids, labels, bits, manifest
        self.code_bytes = (bits + 7) // 8
        self._transform = None if preprocess is None else build_transform(
            channels=preprocess["channels"], native_size=preprocess["native_size"], img_size=preprocess["img_size"], train=False,
            preprocessing=Preprocessing(**{key: tuple(value) if isinstance(value, list) else value
                                           for key, value in preprocess.items() if key in Preprocessing.__dataclass_fields__}),
        )

    @classmethod
    def from_codes(cls, codes: np.ndarray, bits: int, ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> "Retriever":
        """A code-only retriever over packed codes (no encoder: queries must be packed codes too)."""
        import faiss

        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        ids = np.arange(len(codes)) if ids is None else np.asarray(ids)
        labels = np.zeros((len(codes), 0), np.uint8) if labels is None else np.asarray(labels, np.uint8)
        return cls(encoder=None, preprocess=None, index=index, ids=ids, labels=labels, bits=bits, manifest={})

    @classmethod
    def load(cls, bundle: str | Path) -> "Retriever":
        """Load a bundle after verifying its checksums and versions (`BundleError` otherwise)."""
        import faiss

        folder = Path(bundle)
        manifest = verify_bundle(folder)
        return cls(
            encoder=torch.export.load(folder / "encoder.pt2").module(),
            preprocess=json.loads((folder / "preprocess.json").read_text()),
            index=faiss.read_index_binary(str(folder / "index.faiss")),
            ids=np.load(folder / "database_ids.npy", allow_pickle=False),
            labels=np.load(folder / "database_labels.npy", allow_pickle=False),
            bits=int(manifest["bits"]),
            manifest=manifest,
        )

    def __len__(self) -> int:
        return self.index.ntotal

    def preprocess(self, images) -> torch.Tensor:
        """Image files, PIL images or uint8 HWC arrays -> the encoder's input batch; a float tensor passes through."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images
        if self._transform is None:
            raise ValueError("this retriever has no encoder (built from codes): give packed uint8 codes")
        mode = "L" if self.preprocess_spec["channels"] == 1 else "RGB"
        return torch.stack([self._transform(self._read(image, mode)) for image in images])

    @staticmethod
    def _read(image, mode: str):
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    return opened.convert(mode)
            except (OSError, UnidentifiedImageError) as error:
                raise ValueError(f"cannot read image {image}: {error}") from None
        if isinstance(image, Image.Image):
            return image.convert(mode)
        return np.asarray(image)

    def encode(self, images) -> np.ndarray:
        """Packed binary codes, uint8 (n, ceil(bits/8)), of preprocessed tensors or raw images."""
        if self.encoder is None:
            raise ValueError("this retriever has no encoder (built from codes): give packed uint8 codes")
        with torch.inference_mode():
            return pack_codes(self.encoder(self.preprocess(images)))

    def _codes(self, queries) -> np.ndarray:
        if isinstance(queries, np.ndarray) and queries.dtype == np.uint8 and queries.ndim == 2:
            if queries.shape[1] != self.code_bytes:
                raise ValueError(f"packed codes must have {self.code_bytes} bytes per row for {self.bits} bits, got {queries.shape[1]}")
            return np.ascontiguousarray(queries)
        return self.encode(queries)

    def search(self, queries, k: int = 10) -> SearchResult:
        """The k nearest database items of each query (images or packed codes) by Hamming distance."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        codes = self._codes(queries)
        distances, rows = self.index.search(codes, min(k, len(self)))
        return SearchResult(rows, distances, self.ids, self.labels)

    def search_radius(self, queries, radius: int) -> list[SearchResult]:
        """Every database item within Hamming distance `radius` (inclusive) of each query, nearest first."""
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        codes = self._codes(queries)
        limits, distances, rows = self.index.range_search(codes, radius + 1)  # faiss keeps distance < threshold
        results = []
        for i in range(len(codes)):
            d, r = distances[limits[i]:limits[i + 1]], rows[limits[i]:limits[i + 1]]
            order = np.lexsort((r, d))
            results.append(SearchResult(r[order][None], d[order][None], self.ids, self.labels))
        return results

    def add(self, images, ids: Sequence, labels: np.ndarray | None = None) -> None:
        """Encode and append images (or packed codes) to the database, in memory."""
        codes = self._codes(images)
        if len(ids) != len(codes):
            raise ValueError(f"got {len(codes)} images but {len(ids)} ids")
        labels = np.zeros((len(codes), self.labels.shape[1]), np.uint8) if labels is None else np.asarray(labels, np.uint8)
        self.index.add(codes)
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=self.ids.dtype if self.ids.dtype.kind != "U" else str)])
        self.labels = np.concatenate([self.labels, labels])


def evaluate_bundle(bundle: str | Path) -> float:
    """The test mAP recomputed from the bundle's stored query and database codes (no network involved)."""
    from hashtune.config import load_config
    from hashtune.metrics import retrieval_metrics

    folder = Path(bundle)
    manifest = verify_bundle(folder)
    config = load_config(folder / "config.yaml")
    bits = int(manifest["bits"])
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False)
              for name in ("query_codes", "query_labels", "database_codes", "database_labels")}
    metrics = retrieval_metrics(
        torch.from_numpy(unpack_codes(arrays["query_codes"], bits)), torch.from_numpy(unpack_codes(arrays["database_codes"], bits)),
        torch.from_numpy(arrays["query_labels"].astype(np.float32)), torch.from_numpy(arrays["database_labels"].astype(np.float32)),
        topk=config.eval.topk,
    )
    return metrics.map
