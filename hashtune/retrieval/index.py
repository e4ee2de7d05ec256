"""The bundle's faiss binary index: exact brute force (`flat`) or approximate (`ivf`, `hnsw`).

* `flat`: `IndexBinaryFlat`, every code compared (popcount scan). Exact; the default, and the right
  choice up to about a million codes.
* `ivf`: `IndexBinaryIVF` with a coarse quantizer trained by k-means on a sample of the codes (64 per
  list, 10 iterations), `nlist` lists (about 4 sqrt(n), at most 4,096), searching `nprobe` (32) of them.
  Approximate; quick to build; range search works.
* `hnsw`: `IndexBinaryHNSW`, a graph of `m` links per node searched with `ef_search` candidates.
  Approximate; slower to build, fast to query; no range search.

The manifest records the type and parameters (`index` in manifest.json); faiss keeps `nprobe` and
`efSearch` in the file, and `Retriever.load` checks the file is the type the manifest says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashtune.errors import InputError

__all__ = ["INDEX_TYPES", "build_index", "check_nlist", "index_type", "index_params"]

INDEX_TYPES = ("flat", "ivf", "hnsw")
DEFAULTS = {"flat": {}, "ivf": {"nlist": None, "nprobe": 32}, "hnsw": {"m": 32, "ef_search": 64, "ef_construction": 64}}
MAX_NLIST = 4096
TRAIN_POINTS_PER_LIST, TRAIN_ITERATIONS = 64, 10  # k-means on a sample: seconds, not hours, at 10M codes


def index_params(kind: str, **given: Any) -> dict[str, Any]:
    """The parameters of an index type: its defaults, updated with the non-None `given` values it takes."""
    if kind not in INDEX_TYPES:
        raise InputError(f"index {kind!r} is not an index type; expected one of {', '.join(INDEX_TYPES)}")
    params = dict(DEFAULTS[kind])
    params.update({key: value for key, value in given.items() if key in params and value is not None})
    return params


def check_nlist(nlist: int | None, database_size: int) -> None:
    """Refuse more IVF lists than database codes (faiss's k-means needs a code per list; 39 per list trains well)."""
    if nlist is not None and nlist > database_size:
        raise InputError(
            f"--nlist {nlist:,} exceeds the {database_size:,} database codes: an inverted list needs codes to train "
            "on; "
            f"give at most {max(1, database_size // 39):,} (39 codes per list) or leave it out for about 4 sqrt(n)"
        )


def build_index(codes: np.ndarray, kind: str = "flat", params: dict[str, Any] | None = None):
    """A faiss binary index of `kind` over packed uint8 codes (n, bytes); IVF lists default to about 4 sqrt(n)."""
    import faiss

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    params = index_params(kind, **(params or {}))
    d = codes.shape[1] * 8
    if kind == "flat":
        index = faiss.IndexBinaryFlat(d)
    elif kind == "ivf":
        check_nlist(params["nlist"], len(codes))
        nlist = params["nlist"] or max(
            1, min(len(codes) // 39, int(4 * np.sqrt(len(codes))), MAX_NLIST)
        )  # faiss wants >= 39 per list
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, nlist)
        index.cp.niter, index.cp.max_points_per_centroid = TRAIN_ITERATIONS, TRAIN_POINTS_PER_LIST
        index.train(codes)
        index.nprobe = min(params["nprobe"], nlist)
    else:
        index = faiss.IndexBinaryHNSW(d, params["m"])
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
    index.add(codes)
    return index


def index_type(index) -> str:
    """`flat`, `ivf` or `hnsw` for a faiss binary index (as read back from a file)."""
    import faiss

    for kind, cls in (("ivf", faiss.IndexBinaryIVF), ("hnsw", faiss.IndexBinaryHNSW), ("flat", faiss.IndexBinaryFlat)):
        if isinstance(index, cls):
            return kind
    return type(index).__name__
