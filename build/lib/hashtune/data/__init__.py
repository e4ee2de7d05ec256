"""Datasets, retrieval protocols and transforms (no download ever happens here)."""

from hashtune.data.datasets import HashingDataset, Preprocessing, RetrievalData, build_retrieval_data, build_transform
from hashtune.data.protocol import PROTOCOLS, ProtocolSpec, Splits, build_splits
from hashtune.data.sources import SOURCES, ImageSource, load_source

__all__ = [
    "HashingDataset",
    "ImageSource",
    "PROTOCOLS",
    "Preprocessing",
    "ProtocolSpec",
    "RetrievalData",
    "SOURCES",
    "Splits",
    "build_retrieval_data",
    "build_splits",
    "build_transform",
    "load_source",
]
