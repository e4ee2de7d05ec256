"""mAP speed: hashtune's compiled single-pass kernel vs DeepHash-pytorch's per-query argsort loop.

Run: `python -m benchmarks.bench_metrics` (writes results/bench_metrics.md). Both implementations see
the same codes in the same run, so the ratio is measured side by side; they must agree to 1e-9.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._table import markdown_table, write_report
from hashtune.metrics import mean_average_precision


def argsort_map_loop(query_codes, db_codes, query_labels, db_labels, topk):
    """DeepHash-pytorch's `CalcTopMap` with a stable argsort (ties by database index) and no `[0:-1]` slip."""
    bits = query_codes.shape[1]
    total = 0.0
    for q in range(len(query_codes)):
        relevant = (db_labels @ query_labels[q] > 0).astype(np.float32)
        hamming = 0.5 * (bits - db_codes @ query_codes[q])
        top = relevant[np.argsort(hamming, kind="stable")][:topk]
        hits = int(top.sum())
        if hits:
            total += np.mean(np.arange(1, hits + 1) / (np.flatnonzero(top) + 1.0))
    return total / len(query_codes)


def clustered_codes(n: int, bits: int, classes: np.ndarray, centres: np.ndarray, flip: float, rng) -> np.ndarray:
    """Codes near their class centre (each bit flipped with probability `flip`): realistic distance spreads."""
    flips = np.where(rng.random((n, bits)) < flip, -1.0, 1.0)
    return (centres[classes] * flips).astype(np.float32)


def problem(n_query: int, n_db: int, bits: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.where(rng.random((n_classes, bits)) > 0.5, 1.0, -1.0)
    query_classes, db_classes = rng.integers(0, n_classes, n_query), rng.integers(0, n_classes, n_db)
    eye = np.eye(n_classes, dtype=np.float32)
    return (
        clustered_codes(n_query, bits, query_classes, centres, 0.3, rng),
        clustered_codes(n_db, bits, db_classes, centres, 0.3, rng),
        eye[query_classes],
        eye[db_classes],
    )


def timed(function, *args, repeats: int = 1):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function(*args)
        best = min(best, time.perf_counter() - start)
    return value, best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper-sized problems (tests use 0.01)")
    parser.add_argument("--out", default="results/bench_metrics.md")
    args = parser.parse_args(argv)
    cases = [("CIFAR-10-sized, mAP@all", 1000, 54_000, 64, 10, None), ("ImageNet-100-sized, mAP@1000", 5000, 128_503, 64, 100, 1000)]
    mean_average_precision(*problem(10, 100, 64, 10))  # compile (or load the cached kernel) outside the timings
    rows = []
    for name, n_query, n_db, bits, n_classes, topk in cases:
        n_query, n_db = max(2, int(n_query * args.scale)), max(10, int(n_db * args.scale))
        data = problem(n_query, n_db, bits, n_classes)
        fast, fast_s = timed(mean_average_precision, *data, topk, repeats=3)
        slow, slow_s = timed(argsort_map_loop, *data, topk or n_db)
        agree = abs(fast - slow) < 1e-9
        rows.append([name, f"{n_query:,} x {n_db:,}", bits, f"{fast:.6f}", f"{fast_s:.3f}", f"{slow_s:.3f}", f"{slow_s / fast_s:.1f}x", agree])
        if not agree:
            raise SystemExit(f"{name}: kernel mAP {fast!r} != argsort loop {slow!r}")
    table = markdown_table(
        ["problem", "queries x database", "bits", "mAP", "hashtune s (best of 3)", "argsort loop s", "speed-up", "agree to 1e-9"], rows
    )
    command = "python -m benchmarks.bench_metrics" + (f" --scale {args.scale}" if args.scale != 1.0 else "")
    write_report(args.out, "mAP kernel vs per-query argsort loop", command, table)


if __name__ == "__main__":
    main()
