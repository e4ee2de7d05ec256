"""Exact retrieval metrics for binary codes, computed in one compiled pass per query.

Conventions (the same in every function here):

* Codes are in {-1, +1} (any sign-valued array; a code element >= 0 is bit 1, see `pack_codes`), as numpy arrays or
  torch tensors. Labels are class indices (shape (n,)) or multi-hot rows (shape (n, classes)); a
  database item is relevant to a query iff they share at least one class.
* The database is ranked by Hamming distance ascending, **ties broken by database index ascending**
  (what a stable argsort gives; protocols store the database in a seeded shuffled order) with
  `ties="index"`, or **averaged** with `ties="average"`: the exact expected AP over uniformly random
  orders within each tie group (McSherry & Najork, ECIR 2008), from the same pass's distance histograms.
* `AP@K = sum_{i<=K} P@i * rel_i / R_K`, `R_K` the number of relevant items in the top K; a query
  with no relevant item in its top K has AP 0 (it still counts in the mean). `topk=None` means the
  whole database (no item is dropped, unlike DeepHash-pytorch's `gnd[0:-1]`).
* Precision within Hamming radius r of a query that retrieves nothing within r is 0 (`p_r2`, as in
  DPSH/DeepHash); in the precision-recall curve such queries are left out of that radius' mean.

Hamming distances take only `bits + 1` values, so no sort is needed: with codes packed into 64-bit
words, one pass computes distances (popcount of xor) and a per-distance histogram, and a loop over the
relevant items gives each its rank as "items in closer buckets + earlier items in its own bucket"
(`hashtune.ranking` holds the compiled kernels: a single-label one and a multi-label one).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from hashtune.config import MAX_BITS
from hashtune.ranking import rank_multi_label, rank_single_label

# numba's default OpenMP layer shares libgomp with torch: its first parallel region resets torch's
# thread count (1 -> all cores in a 1-CPU Ray trial), and concurrent trials then oversubscribe the
# machine about 5x. The workqueue layer has its own threads and leaves torch's settings alone.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

__all__ = [
    "pack_codes",
    "unpack_codes",
    "pack_labels",
    "average_precisions",
    "mean_average_precision",
    "RetrievalMetrics",
    "retrieval_metrics",
]


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def pack_codes(codes) -> np.ndarray:
    """Sign codes (n, bits) -> uint8 (n, ceil(bits / 8)), numpy `packbits` order; bit set where code >= 0.

    The one packing of hashtune: bundles store it, faiss indexes it, the mAP kernel reads it. The
    `>= 0` rule is the trainer's binarisation (`sign` with 0 -> +1), so continuous codes pack as
    their binary codes. Short codes are padded with zero bits, which leave Hamming distances unchanged.
    """
    codes = _as_numpy(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-d (items, bits) array, got shape {codes.shape}")
    return np.packbits(codes >= 0, axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 (n, bytes) from `pack_codes` -> float32 codes in {-1, +1} of shape (n, bits)."""
    return np.unpackbits(packed, axis=1, count=bits).astype(np.float32) * 2 - 1


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed bytes viewed as 64-bit words (zero-padded), the unit the popcount kernel reads."""
    padded = np.zeros((packed.shape[0], -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def pack_labels(labels, num_classes: int | None = None) -> np.ndarray:
    """Class indices (n,) or multi-hot rows (n, classes) -> the multi-hot rows packed like codes."""
    labels = _as_numpy(labels)
    if labels.ndim == 1:
        num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
        multi_hot = np.zeros((labels.shape[0], num_classes), dtype=bool)
        multi_hot[np.arange(labels.shape[0]), labels.astype(np.int64)] = True
        labels = multi_hot
    elif labels.ndim != 2:
        raise ValueError(f"labels must be class indices (n,) or multi-hot (n, classes), got shape {labels.shape}")
    return np.packbits(labels > 0, axis=1)  # what pack_codes makes of the +-1 rows, without building them


def _class_ids(labels: np.ndarray) -> np.ndarray | None:
    """Class indices of single-label data (indices, or multi-hot rows with exactly one class), else None."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if labels.ndim == 2 and ((labels > 0).sum(axis=1) == 1).all():
        return (labels > 0).argmax(axis=1)
    return None


def _prepare(query_codes, db_codes, query_labels, db_labels) -> dict:
    query_codes, db_codes = _as_numpy(query_codes), _as_numpy(db_codes)
    if query_codes.ndim != 2 or db_codes.ndim != 2 or query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query and database codes must be (n, bits) with the same bits, got {query_codes.shape} and "
            f"{db_codes.shape}"
        )
    query_labels, db_labels = _as_numpy(query_labels), _as_numpy(db_labels)
    if len(query_labels) != len(query_codes) or len(db_labels) != len(db_codes):
        raise ValueError(
            f"got {len(query_labels)} query labels for {len(query_codes)} query codes and "
            f"{len(db_labels)} database labels for {len(db_codes)} database codes"
        )
    prepared = {
        "query_words": _words(pack_codes(query_codes)),
        "db_words": _words(pack_codes(db_codes)),
        "bits": query_codes.shape[1],
    }
    query_class, db_class = _class_ids(query_labels), _class_ids(db_labels)
    if query_class is not None and db_class is not None:
        n_classes = int(max(query_class.max(initial=0), db_class.max(initial=0))) + 1
        return prepared | {"query_class": query_class, "db_class": db_class, "n_classes": n_classes}
    num_classes = (
        int(max(query_labels.max(initial=0), db_labels.max(initial=0))) + 1 if query_labels.ndim == 1 else None
    )
    return prepared | {
        "query_labels": _words(pack_labels(query_labels, num_classes)),
        "db_labels": _words(pack_labels(db_labels, num_classes)),
    }


@numba.njit(cache=True)
def _group_precision_sum(before: int, relevant_before: int, k: int, relevant: float, harmonic) -> float:
    """Expected sum of precisions at the relevant items among the first `k` positions of a tie group whose
    order is uniformly random, given `relevant` of those k positions hold relevant items (McSherry & Najork)."""
    h1 = harmonic[before + k] - harmonic[before]  # sum_{i=1..k} 1 / (before + i)
    h2 = k - (before + 1) * h1  # sum_{i=1..k} (i - 1) / (before + i)
    spread = (relevant - 1.0) / (k - 1.0) if k > 1 else 0.0
    return (relevant / k) * ((relevant_before + 1.0) * h1 + spread * h2)


@numba.njit(cache=True)
def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)


@numba.njit(cache=True)
def _cut_group_ap(before: int, relevant_before: int, expected_sum: float, n: int, r: int, k: int, harmonic) -> float:
    """Expected AP@K when the K-th position falls inside a tie group of n items (r relevant), k of them inside K.

    The number m of relevant items inside the cut-off is hypergeometric; AP = E[(S_before + S_group) / (R + m)].
    """
    total = 0.0
    for m in range(max(0, k - (n - r)), min(r, k) + 1):
        if relevant_before + m == 0:
            continue
        weight = math.exp(_log_choose(r, m) + _log_choose(n - r, k - m) - _log_choose(n, k))
        total += (
            weight
            * (expected_sum + _group_precision_sum(before, relevant_before, k, float(m), harmonic))
            / (relevant_before + m)
        )
    return total


@numba.njit(cache=True)
def _tie_averaged_ap(counts, relevant_counts, topk: int, harmonic):
    """Per query, the exact expected AP@topk over uniformly random orders within each Hamming-distance tie group."""
    n_query = counts.shape[0]
    ap = np.zeros(n_query)
    for q in range(n_query):
        before, relevant_before, expected_sum, done = 0, 0, 0.0, False
        for d in range(counts.shape[1]):
            n, r = counts[q, d], relevant_counts[q, d]
            if before == topk:  # the cut-off falls on a group boundary
                break
            if n == 0:
                continue
            if before + n > topk:  # the cut-off falls inside this group
                ap[q] = _cut_group_ap(before, relevant_before, expected_sum, n, r, topk - before, harmonic)
                done = True
                break
            expected_sum += _group_precision_sum(before, relevant_before, n, float(r), harmonic)
            before, relevant_before = before + n, relevant_before + r
        if not done and relevant_before > 0:
            ap[q] = expected_sum / relevant_before
    return ap


TIES = ("index", "average")
MAX_DATABASE = 1 << 23


def _average_precisions(statistics, topk: int, n_db: int, ties: str) -> np.ndarray:
    """AP per query from the kernel's statistics: index tie-break as computed, or averaged over tie orders."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}; expected one of {', '.join(TIES)}")
    if ties == "index":
        return statistics[0]
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_db + 1))])
    return _tie_averaged_ap(statistics[2], statistics[3], topk, harmonic)


def _run(query_codes, db_codes, query_labels, db_labels, topk, cutoffs=()):
    prepared = _prepare(query_codes, db_codes, query_labels, db_labels)
    words, db_words, bits = prepared["query_words"], prepared["db_words"], prepared["bits"]
    n_db = db_words.shape[0]
    if bits > MAX_BITS or n_db >= MAX_DATABASE:  # the kernels pack (place, distance) into an int32
        raise ValueError(
            f"mAP takes codes of at most {MAX_BITS} bits and databases under {MAX_DATABASE:,} items, "
            f"got {bits} bits and {n_db:,} items"
        )
    if topk is not None and topk < 1:
        raise ValueError(f"topk={topk} must be a positive number of items or None for the whole database")
    topk = n_db if topk is None else min(int(topk), n_db)
    cutoff_array = np.asarray(list(cutoffs), dtype=np.int64)
    threads = max(1, min(numba.config.NUMBA_NUM_THREADS, _torch_threads()))  # the process's CPU share, as for torch
    numba.set_num_threads(threads)
    if "query_class" in prepared:
        statistics = rank_single_label(
            words,
            db_words,
            prepared["query_class"],
            prepared["db_class"],
            prepared["n_classes"],
            bits,
            topk,
            cutoff_array,
            threads,
        )
    else:
        statistics = rank_multi_label(
            words, db_words, prepared["query_labels"], prepared["db_labels"], bits, topk, cutoff_array, threads
        )
    return statistics, topk, n_db


def _torch_threads() -> int:
    """torch's intra-op thread count (OMP_NUM_THREADS in a Ray worker) when torch is loaded, else all cores."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else (os.cpu_count() or 1)


def average_precisions(
    query_codes, db_codes, query_labels, db_labels, topk: int | None = None, ties: str = "index"
) -> np.ndarray:
    """AP@topk of every query (see the module docstring for the exact definition and `ties`)."""
    statistics, topk, n_db = _run(query_codes, db_codes, query_labels, db_labels, topk)
    return _average_precisions(statistics, topk, n_db, ties)


def mean_average_precision(
    query_codes, db_codes, query_labels, db_labels, topk: int | None = None, ties: str = "index"
) -> float:
    """mAP@topk over all queries; `topk=None` ranks the whole database.

    Args:
        query_codes, db_codes: codes in {-1, +1}, shapes (q, bits) and (n, bits).
        query_labels, db_labels: class indices or multi-hot rows.
        topk: number of top-ranked items that count, or None for all.
        ties: `index` (equal distances ranked by database index, DeepHash-pytorch's stable sort) or
            `average` (the exact expected AP over uniformly random orders within each tie group).
    """
    return float(average_precisions(query_codes, db_codes, query_labels, db_labels, topk, ties).mean())


@dataclass(frozen=True)
class RetrievalMetrics:
    """Everything `retrieval_metrics` measures for one query set against one database."""

    map: float
    topk: int | None
    """The cut-off the mAP was measured at (None: the whole database)."""
    map_by_ties: dict[str, float]
    """The mAP under each tie rule (`index`, `average`); `map` is the one asked for."""
    precision_at: dict[int, float]
    precision_within_radius: dict[int, float]
    pr_radius: np.ndarray
    pr_precision: np.ndarray
    pr_recall: np.ndarray

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Flat names: `test/mAP`, `test/mAP_at_5000` (or `_at_all`), `test/mAP_ties_index`, `test/mAP_ties_average`,
        `test/precision_at_100`, `test/p_r2`."""
        flat = {f"{prefix}/mAP": self.map, f"{prefix}/mAP_at_{self.topk or 'all'}": self.map}
        flat.update({f"{prefix}/mAP_ties_{rule}": value for rule, value in self.map_by_ties.items()})
        flat.update({f"{prefix}/precision_at_{n}": value for n, value in self.precision_at.items()})
        flat.update({f"{prefix}/p_r{r}": value for r, value in self.precision_within_radius.items()})
        return flat


def retrieval_metrics(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    topk: int | None = None,
    precision_at: tuple[int, ...] = (100,),
    radii: tuple[int, ...] = (2,),
    ties: str = "index",
) -> RetrievalMetrics:
    """mAP@topk, precision@N, precision within Hamming radius r, and the precision-recall curve by radius.

    The curve has one point per radius 0..bits: precision is the mean over queries that retrieve
    something within the radius, recall the mean over queries with any relevant item.
    """
    statistics, cut, n_db_items = _run(query_codes, db_codes, query_labels, db_labels, topk, precision_at)
    _, hits_at, count, relevant_count = statistics
    by_rule = {rule: _average_precisions(statistics, cut, n_db_items, rule) for rule in TIES}
    if ties not in by_rule:
        raise ValueError(f"ties={ties!r}; expected one of {', '.join(TIES)}")
    ap = by_rule[ties]
    n_db = count.sum(axis=1)
    retrieved = np.cumsum(count, axis=1)
    relevant_retrieved = np.cumsum(relevant_count, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # radii that no query reaches are NaN
        precision = relevant_retrieved / retrieved
        recall = relevant_retrieved / relevant_retrieved[:, -1:]
        pr_precision = np.nanmean(np.where(retrieved > 0, precision, np.nan), axis=0)
        pr_recall = np.nanmean(np.where(relevant_retrieved[:, -1:] > 0, recall, np.nan), axis=0)
    precision_within = {r: float(np.nan_to_num(precision[:, min(r, precision.shape[1] - 1)]).mean()) for r in radii}
    precision_at_n = {n: float((hits_at[:, i] / np.minimum(n, n_db)).mean()) for i, n in enumerate(precision_at)}
    return RetrievalMetrics(
        map=float(ap.mean()),
        topk=topk,
        map_by_ties={rule: float(values.mean()) for rule, values in by_rule.items()},
        precision_at=precision_at_n,
        precision_within_radius=precision_within,
        pr_radius=np.arange(count.shape[1]),
        pr_precision=pr_precision,
        pr_recall=pr_recall,
    )
