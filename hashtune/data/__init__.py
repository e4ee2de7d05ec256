"""Datasets, retrieval protocols and transforms (no download ever happens here)."""

from hashtune.data.datasets import HashingDataset, Preprocessing, RetrievalData, build_retrieval_data, build_transform
from hashtune.data.protocol import LIST_PROTOCOLS, PROTOCOLS, ProtocolSpec, Splits, build_splits, protocol_topk
from hashtune.data.sources import SOURCES, ImageSource, load_source

__all__ = [
    "HashingDataset",
    "ImageSource",
    "LIST_PROTOCOLS",
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
    "protocol_topk",
]
