"""Datasets, retrieval protocols and transforms (no download ever happens here).

Exports load lazily (PEP 562): `hashtune.data.protocol` and `hashtune.data.sources` need no torch, and the
study report reads protocols without loading it; `hashtune.data.datasets` (torch, torchvision) loads on
first use of its names.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HashingDataset": "datasets",
    "Preprocessing": "datasets",
    "RetrievalData": "datasets",
    "build_retrieval_data": "datasets",
    "build_transform": "datasets",
    "LIST_PROTOCOLS": "protocol",
    "PROTOCOLS": "protocol",
    "ProtocolSpec": "protocol",
    "Splits": "protocol",
    "build_splits": "protocol",
    "protocol_topk": "protocol",
    "SOURCES": "sources",
    "ImageSource": "sources",
    "load_source": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hashtune.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hashtune.data.{_EXPORTS[name]}"), name)
