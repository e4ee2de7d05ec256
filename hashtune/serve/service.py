"""The retrieval service's work, without Ray or HTTP: a loaded bundle answering search, encode and info.

`ServedBundle.load` verifies the bundle as `Retriever.load` does; `answer` turns packed query codes into
`hashtune.retrieve --json`'s shape, so a served answer and a shell answer can be compared field by field.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hashtune.retrieval.index import index_type
from hashtune.retrieval.retriever import Retriever, query_answers
from hashtune.retrieval.thumbnails import png_bytes

__all__ = ["ServedBundle"]


@dataclass
class ServedBundle:
    """A bundle in service: its retriever and a label naming it (the MLflow model version, else the folder)."""

    retriever: Retriever
    label: str

    @classmethod
    def load(cls, folder: str | Path, label: str | None = None) -> ServedBundle:
        return cls(Retriever.load(folder), label or Path(folder).name)

    @property
    def channels(self) -> int:
        return self.retriever.preprocess_spec["channels"]

    def encode(self, images: list[Image.Image] | torch.Tensor) -> np.ndarray:
        """Decoded images, or a batch `Retriever.preprocess` made, -> packed codes: one encoder call for the batch."""
        return self.retriever.encode(images)

    def answer(
        self, names: list[str], codes: np.ndarray, *, k: int, radius: int | None, thumbnails: bool = False
    ) -> dict:
        """`hashtune.retrieve --json`'s object for these queries; with `thumbnails`, each neighbour's as a data URI."""
        per_query, rows = query_answers(self.retriever, codes, k=k, radius=radius)
        if thumbnails:
            for neighbours, database_rows in zip(per_query, rows):
                for neighbour, row in zip(neighbours, database_rows):
                    neighbour["thumbnail"] = self._thumbnail_uri(int(row))
        return {
            "bundle": self.label,
            "k": None if radius is not None else k,
            "radius": radius,
            "results": [
                {"image": name, "code": code.tobytes().hex(), "neighbours": neighbours}
                for name, code, neighbours in zip(names, codes, per_query)
            ],
        }

    def _thumbnail_uri(self, row: int) -> str | None:
        pictures = self.retriever.thumbnails
        if pictures is None or row >= len(pictures):
            return None
        return "data:image/png;base64," + base64.b64encode(png_bytes(pictures[row])).decode()

    def info(self) -> dict:
        """What `GET /info` says: the bundle's run, metrics, code length, index and database size."""
        manifest = self.retriever.manifest
        provenance = manifest.get("provenance", {})
        return {
            "bundle": self.label,
            "mlflow_run_id": provenance.get("mlflow_run_id"),
            "experiment": provenance.get("experiment"),
            "metrics": provenance.get("run_metrics", {}),
            "bundle_test_mAP": manifest.get("bundle_test_mAP"),
            "bits": self.retriever.bits,
            "index": index_type(self.retriever.index),
            "database_size": len(self.retriever),
            "channels": self.channels,
            "img_size": self.retriever.preprocess_spec["img_size"],
            "thumbnails": self.retriever.thumbnails is not None,
        }
