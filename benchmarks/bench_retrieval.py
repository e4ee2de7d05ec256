"""Hamming search throughput: hashtune's `Retriever.search` vs faiss directly vs a numpy popcount scan.

Run: `python -m benchmarks.bench_retrieval` (writes results/bench_retrieval.md). Random 64-bit codes
(10^5 and 10^6 database items), a fixed set of random queries, top-10 and top-1000; the three paths
run side by side in one process on the same codes and their distances are checked equal. Each cell
is the median of `--repeats` timed runs. Target: hashtune adds under 10% to faiss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from benchmarks._table import markdown_table, write_report
from hashtune.retrieval import Retriever


def numpy_scan(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by popcount of XOR, one query at a time over 64-bit words (numpy >= 2.0's bitwise_count)."""
    words = database.view(np.uint64)
    distances, rows = np.empty((len(queries), k), np.int32), np.empty((len(queries), k), np.int64)
    for i, query in enumerate(queries.view(np.uint64)):
        d = np.bitwise_count(words ^ query).sum(axis=1)
        top = np.argpartition(d, k - 1)[:k]
        order = np.lexsort((top, d[top]))
        rows[i], distances[i] = top[order], d[top][order]
    return distances, rows


def interleaved_medians(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in alternation (after one warm-up call each) so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default="results/bench_retrieval.md")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        database = rng.integers(0, 256, (size, args.bits // 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (args.queries, args.bits // 8), dtype=np.uint8)
        index = faiss.IndexBinaryFlat(args.bits)
        index.add(database)
        retriever = Retriever.from_codes(database, args.bits, labels=rng.integers(0, 2, (size, 10), dtype=np.uint8))
        for k in args.ks:
            faiss_d, _ = index.search(queries, k)
            ours = retriever.search(queries, k)
            scan_d, _ = numpy_scan(database, queries, k)
            agree = np.array_equal(faiss_d, ours.distances) and np.array_equal(faiss_d, scan_d)
            seconds = interleaved_medians({
                "faiss": lambda: index.search(queries, k),
                "hashtune": lambda: retriever.search(queries, k).ids,  # ids are what a caller always reads
            }, args.repeats)
            seconds |= interleaved_medians({"numpy": lambda: numpy_scan(database, queries, k)}, max(1, args.repeats // 5))
            qps = {name: args.queries / value for name, value in seconds.items()}
            rows.append([
                f"{size:,}", k, f"{qps['hashtune']:,.0f}", f"{qps['faiss']:,.0f}", f"{qps['numpy']:,.0f}",
                f"{seconds['hashtune'] / seconds['faiss'] - 1:+.1%}", f"{qps['faiss'] / qps['numpy']:.1f}x", agree,
            ])
    header = ["database", "k", "hashtune q/s", "faiss q/s", "numpy scan q/s", "hashtune overhead vs faiss", "faiss vs numpy", "distances agree"]
    notes = (
        f"{args.queries} queries of {args.bits} bits, median of {args.repeats} runs, faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} OpenMP threads. hashtune's search is faiss's `IndexBinaryFlat.search` plus "
        "mapping rows to ids (timed, as every caller reads them; labels are looked up only when read). Target: overhead under 10%."
    )
    command = f"python -m benchmarks.bench_retrieval --sizes {' '.join(map(str, args.sizes))} --ks {' '.join(map(str, args.ks))} --queries {args.queries}"
    write_report(args.out, "Hamming search throughput", command, markdown_table(header, rows), notes)


if __name__ == "__main__":
    main()
