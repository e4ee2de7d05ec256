"""The compiled ranking kernels behind `hashtune.metrics`: per query, every database item's Hamming distance,
the distance histogram, and the exact rank of each relevant item (ties by database index).

Ranks need no sort: distances take only `bits + 1` values, so an item's rank is "items in closer buckets
+ items before it in its own bucket". One pass over the database (pass A) gives each item its distance
and its place in its bucket; a second loop over the relevant items alone turns places into ranks.

* Single-label data (CIFAR-10, ImageNet-100, digits): pass A does what the floor does (popcount and
  histogram) plus one sequential store of `place << 8 | distance` per item, for two queries per read of
  each database word; the relevant items are the query's class, read from per-class index lists, so no
  label is touched in the hot loop.
* Multi-label data (NUS-WIDE, COCO): pass A also ANDs the label words and keeps the relevant items'
  `place << 8 | distance` in a list, branch-free; 64-bit codes with up to 64 labels stream two contiguous
  columns and nothing else.
* Ranking skips the relevant items whose bucket starts past the last position any output needs (topk and
  the cutoffs): for mAP@K that is most of them.
* `distance_histograms` is the floor itself (popcount and histogram, no ranking): benchmarks report the
  kernels as multiples of it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["popcount", "rank_single_label", "rank_multi_label", "distance_histograms", "class_members"]


@numba.njit(inline="always")
def popcount(word):
    word = word - ((word >> np.uint64(1)) & np.uint64(0x5555555555555555))
    word = (word & np.uint64(0x3333333333333333)) + ((word >> np.uint64(2)) & np.uint64(0x3333333333333333))
    word = (word + (word >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (word * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(inline="always")
def _distance(query_words, q, db_words, j, n_words):
    d = 0
    for w in range(n_words):
        d += popcount(query_words[q, w] ^ db_words[j, w])
    return d


@numba.njit(inline="always")
def _rank_relevant(
    q,
    places,
    relevant,
    count,
    bits,
    topk,
    reach,
    cutoffs,
    ap,
    hits_at,
    counts,
    relevant_counts,
    scratch,
    values,
    inverse,
):
    """`_rank` for the relevant items listed by database index: their values are gathered once into `values`."""
    relevant_count = scratch[0]
    relevant_count[:] = 0
    n_relevant = relevant.shape[0]
    for i in range(n_relevant):
        value = places[relevant[i]]
        values[i] = value
        relevant_count[value & 255] += 1
    _rank(
        q,
        values,
        n_relevant,
        relevant_count,
        count,
        bits,
        topk,
        reach,
        cutoffs,
        ap,
        hits_at,
        counts,
        relevant_counts,
        scratch,
        inverse,
    )


@numba.njit(inline="always")
def _rank(
    q,
    values,
    n_values,
    relevant_count,
    count,
    bits,
    topk,
    reach,
    cutoffs,
    ap,
    hits_at,
    counts,
    relevant_counts,
    scratch,
    inverse,
):
    """AP@topk and hits@cutoffs of query q from its histograms and its relevant items' `place << 8 | d`, in index order.

    Only items that can rank before `reach` (the largest of topk and the cutoffs) are ranked: past the bucket
    that holds position `reach - 1` every position is >= reach. `inverse[p]` is 1 / (p + 1), so no division per item.
    """
    closer, relevant_closer, seen = scratch[1], scratch[2], scratch[3]
    closer[0] = 0
    relevant_closer[0] = 0
    for d in range(1, bits + 1):
        closer[d] = closer[d - 1] + count[d - 1]
        relevant_closer[d] = relevant_closer[d - 1] + relevant_count[d - 1]
    farthest = bits
    while farthest > 0 and closer[farthest] >= reach:
        farthest -= 1
    seen[:] = 0
    precision_sum, relevant_in_topk = 0.0, 0
    for i in range(n_values):
        value = values[i]
        d = value & 255
        if d > farthest:
            continue
        position = closer[d] + (value >> 8)  # 0-based rank
        seen[d] += 1
        if position < topk:
            relevant_in_topk += 1
            precision_sum += (relevant_closer[d] + seen[d]) * inverse[position]
        for c in range(cutoffs.shape[0]):
            if position < cutoffs[c]:
                hits_at[q, c] += 1
    if relevant_in_topk > 0:
        ap[q] = precision_sum / relevant_in_topk
    counts[q] = count
    relevant_counts[q] = relevant_count


@numba.njit(inline="always")
def _place(places, slot, count, d):
    places[slot] = (count[d] << 8) | d
    count[d] += 1


@numba.njit(inline="always")
def _reach(topk, cutoffs):
    """The last position any output needs, plus one: the largest of topk and the cutoffs."""
    reach = topk
    for c in range(cutoffs.shape[0]):
        reach = max(reach, cutoffs[c])
    return reach


def _outputs(n_query: int, bits: int, n_cutoffs: int):
    return (
        np.zeros(n_query),
        np.zeros((n_query, n_cutoffs), dtype=np.int64),
        np.zeros((n_query, bits + 1), dtype=np.int64),
        np.zeros((n_query, bits + 1), dtype=np.int64),
    )


@numba.njit(parallel=True, cache=True)
def _single_label(query_words, db_words, query_class, members, member_offsets, bits, topk, cutoffs, n_threads, out):
    ap, hits_at, counts, relevant_counts = out
    n_query, n_db, n_words = query_words.shape[0], db_words.shape[0], db_words.shape[1]
    first = db_words[:, 0].copy()  # 64-bit codes (one word): the query words sit in registers, the database streams
    inverse = 1.0 / np.arange(1, n_db + 1)
    reach = _reach(topk, cutoffs)
    n_pairs = (n_query + 1) // 2
    chunk = (n_pairs + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        places_a, places_b, values = (
            np.empty(n_db, dtype=np.int32),
            np.empty(n_db, dtype=np.int32),
            np.empty(n_db, dtype=np.int32),
        )
        count_a, count_b = np.empty(bits + 1, dtype=np.int64), np.empty(bits + 1, dtype=np.int64)
        scratch = np.empty((4, bits + 1), dtype=np.int64)
        for pair in range(t * chunk, min(n_pairs, (t + 1) * chunk)):
            qa = 2 * pair
            qb = min(qa + 1, n_query - 1)  # an odd last query is paired with itself
            count_a[:] = 0
            count_b[:] = 0
            if n_words == 1:  # pass A for two queries: each database word is read once
                xa, xb = query_words[qa, 0], query_words[qb, 0]
                for j in range(n_db):
                    _place(places_a, j, count_a, np.int64(popcount(xa ^ first[j])))
                    _place(places_b, j, count_b, np.int64(popcount(xb ^ first[j])))
            else:
                for j in range(n_db):
                    _place(places_a, j, count_a, _distance(query_words, qa, db_words, j, n_words))
                    _place(places_b, j, count_b, _distance(query_words, qb, db_words, j, n_words))
            for side in range(2 if qb != qa else 1):  # the self-paired last query is ranked once
                q, places, count = (qa, places_a, count_a) if side == 0 else (qb, places_b, count_b)
                c = query_class[q]
                _rank_relevant(
                    q,
                    places,
                    members[member_offsets[c] : member_offsets[c + 1]],
                    count,
                    bits,
                    topk,
                    reach,
                    cutoffs,
                    ap,
                    hits_at,
                    counts,
                    relevant_counts,
                    scratch,
                    values,
                    inverse,
                )


def rank_single_label(query_words, db_words, query_class, db_class, n_classes, bits, topk, cutoffs, n_threads):
    """(AP, hits@cutoffs, histograms, relevant histograms) per query for class-index labels."""
    members, offsets = class_members(db_class, n_classes)
    out = _outputs(query_words.shape[0], bits, cutoffs.shape[0])
    _single_label(
        query_words,
        db_words,
        np.asarray(query_class, dtype=np.int64),
        members,
        offsets,
        bits,
        topk,
        cutoffs,
        n_threads,
        out,
    )
    return out


def class_members(db_class: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Database indices grouped by class, each group in index order, and the groups' offsets."""
    db_class = np.asarray(db_class, dtype=np.int64)
    order = np.argsort(db_class, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(db_class, minlength=n_classes))])
    return order.astype(np.int64), offsets.astype(np.int64)


@numba.njit(parallel=True, cache=True)
def _multi_label(query_words, db_words, query_labels, db_labels, bits, topk, cutoffs, n_threads, out):
    ap, hits_at, counts, relevant_counts = out
    n_query, n_db = query_words.shape[0], db_words.shape[0]
    n_words, n_label_words = db_words.shape[1], db_labels.shape[1]
    first, first_labels = db_words[:, 0].copy(), db_labels[:, 0].copy()
    inverse = 1.0 / np.arange(1, n_db + 1)
    reach = _reach(topk, cutoffs)
    chunk = (n_query + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        places = np.empty(n_db + 1, dtype=np.int32)
        count = np.empty(bits + 1, dtype=np.int64)
        scratch = np.empty((4, bits + 1), dtype=np.int64)
        relevant_count = scratch[0]
        for q in range(t * chunk, min(n_query, (t + 1) * chunk)):
            count[:] = 0
            n_relevant = 0
            if n_words == 1 and n_label_words == 1:  # 64-bit codes, up to 64 labels: both columns stream, nothing else
                x, labels = query_words[q, 0], query_labels[q, 0]
                for j in range(n_db):
                    _place(places, n_relevant, count, np.int64(popcount(x ^ first[j])))  # branch-free: the slot is kept
                    n_relevant += np.int64((labels & first_labels[j]) != 0)  # only if the item is relevant
            else:
                for j in range(n_db):
                    shared = np.uint64(0)
                    for w in range(n_label_words):
                        shared |= query_labels[q, w] & db_labels[j, w]
                    _place(places, n_relevant, count, _distance(query_words, q, db_words, j, n_words))
                    n_relevant += shared != 0
            relevant_count[:] = 0
            for i in range(n_relevant):
                relevant_count[places[i] & 255] += 1
            _rank(
                q,
                places,
                n_relevant,
                relevant_count,
                count,
                bits,
                topk,
                reach,
                cutoffs,
                ap,
                hits_at,
                counts,
                relevant_counts,
                scratch,
                inverse,
            )


def rank_multi_label(query_words, db_words, query_labels, db_labels, bits, topk, cutoffs, n_threads):
    """(AP, hits@cutoffs, histograms, relevant histograms) per query for multi-hot label words."""
    out = _outputs(query_words.shape[0], bits, cutoffs.shape[0])
    _multi_label(query_words, db_words, query_labels, db_labels, bits, topk, cutoffs, n_threads, out)
    return out


@numba.njit(parallel=True, cache=True)
def _histograms(query_words, db_words, n_threads, counts):
    n_query, n_db, n_words = query_words.shape[0], db_words.shape[0], db_words.shape[1]
    first = db_words[:, 0].copy()  # the kernels' own one-word fast path: the floor gets every trick they get
    chunk = (n_query + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        for q in range(t * chunk, min(n_query, (t + 1) * chunk)):
            count = counts[q]
            if n_words == 1:
                x = query_words[q, 0]
                for j in range(n_db):
                    count[popcount(x ^ first[j])] += 1
            else:
                for j in range(n_db):
                    count[_distance(query_words, q, db_words, j, n_words)] += 1


def distance_histograms(query_words, db_words, bits: int, n_threads: int) -> np.ndarray:
    """The floor of any exact mAP: every query-database popcount distance and its histogram, nothing else."""
    counts = np.zeros((query_words.shape[0], bits + 1), dtype=np.int64)
    _histograms(query_words, db_words, n_threads, counts)
    return counts
