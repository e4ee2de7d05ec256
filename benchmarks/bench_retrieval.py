"""Hamming search throughput: hashtune's `Retriever.search` vs faiss directly vs a numpy popcount scan.

Run: `python -m benchmarks.bench_retrieval` (writes results/bench_retrieval.md). Random 64-bit codes
(10^5 and 10^6 database items), a fixed set of random queries, top-10 and top-1000; the three paths
run side by side in one process on the same codes and their distances are checked equal. Each cell
is the median of `--repeats` timed runs. Target: hashtune adds under 10% to faiss.

Past brute force (`--approx-sizes`, default 10,000,000): clustered synthetic codes (drawn around a few
thousand centres with bit-flip noise, so neighbours exist as they do for real hash codes), searched by
the bundle's `flat`, `ivf` and `hnsw` indexes through `Retriever`: queries/s, recall@10 and @100 against
the exact flat search (tie-aware: a returned item counts when its distance is at most the exact k-th
distance), build seconds and bytes per code. Target: an approximate index at >= 0.95 recall@10 and >=
10x flat's queries/s at 10M codes on 2 cores.
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


def clustered_codes(
    n: int, bits: int, centres: int = 4000, flip: float = 0.05, seed: int = 0, chunk: int = 1_000_000
) -> np.ndarray:
    """Packed codes around `centres` random centres, each bit flipped with probability `flip` (built in chunks)."""
    rng = np.random.default_rng(seed)
    centre_codes = rng.integers(0, 256, (centres, bits // 8), dtype=np.uint8)
    out = np.empty((n, bits // 8), dtype=np.uint8)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        out[start : start + size] = centre_codes[rng.integers(0, centres, size)] ^ np.packbits(
            rng.random((size, bits)) < flip, axis=1
        )
    return out


def tie_aware_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of returned items whose distance is at most the exact k-th distance of their query."""
    return float((found <= exact[:, -1:]).mean())


def approximate_rows(
    size: int, bits: int, n_queries: int, indexes: list[str], hnsw_max: int, repeats: int
) -> list[list]:
    """One row per index type at `size` clustered codes (flat first: it is the exact reference)."""
    database, queries = clustered_codes(size, bits), clustered_codes(n_queries, bits, seed=1)
    rows, exact = [], {}
    for kind in ["flat"] + [kind for kind in indexes if kind != "flat"]:
        if kind == "hnsw" and size > hnsw_max:
            continue
        start = time.perf_counter()
        retriever = Retriever.from_codes(database, bits, index=kind)
        build_s = time.perf_counter() - start
        found = {k: retriever.search(queries, k).distances for k in (10, 100)}
        exact = exact or found
        seconds = interleaved_medians({"search": lambda index=retriever: index.search(queries, 10).ids}, repeats)[
            "search"
        ]
        bytes_per_code = len(faiss.serialize_index_binary(retriever.index)) / size
        rows.append(
            [
                f"{size:,}",
                kind,
                f"{n_queries / seconds:,.0f}",
                f"{tie_aware_recall(found[10], exact[10]):.3f}",
                f"{tie_aware_recall(found[100], exact[100]):.3f}",
                f"{build_s:.1f}",
                f"{bytes_per_code:.1f}",
            ]
        )
        del retriever
    flat_qps = float(rows[0][2].replace(",", ""))
    for row in rows:
        row.append(f"{float(row[2].replace(',', '')) / flat_qps:.1f}x")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument(
        "--approx-sizes", type=int, nargs="*", default=[10_000_000], help="clustered databases for flat vs ivf vs hnsw"
    )
    parser.add_argument(
        "--indexes", nargs="+", default=["ivf", "hnsw"], help="approximate index types to compare with flat"
    )
    parser.add_argument(
        "--hnsw-max", type=int, default=10_000_000, help="skip hnsw above this size (its build is the slowest)"
    )
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
            seconds = interleaved_medians(
                {
                    "faiss": lambda: index.search(queries, k),
                    "hashtune": lambda: retriever.search(queries, k).ids,  # ids are what a caller always reads
                },
                args.repeats,
            )
            seconds |= interleaved_medians(
                {"numpy": lambda: numpy_scan(database, queries, k)}, max(1, args.repeats // 5)
            )
            qps = {name: args.queries / value for name, value in seconds.items()}
            rows.append(
                [
                    f"{size:,}",
                    k,
                    f"{qps['hashtune']:,.0f}",
                    f"{qps['faiss']:,.0f}",
                    f"{qps['numpy']:,.0f}",
                    f"{seconds['hashtune'] / seconds['faiss'] - 1:+.1%}",
                    f"{qps['faiss'] / qps['numpy']:.1f}x",
                    agree,
                ]
            )
    header = [
        "database",
        "k",
        "hashtune q/s",
        "faiss q/s",
        "numpy scan q/s",
        "hashtune overhead vs faiss",
        "faiss vs numpy",
        "distances agree",
    ]
    notes = (
        f"{args.queries} queries of {args.bits} bits, median of {args.repeats} runs, faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} OpenMP threads. hashtune's search is faiss's `IndexBinaryFlat.search` plus "
        "mapping rows to ids (timed, as every caller reads them; labels are looked up only when read). Target: "
        "overhead under 10%."
    )
    approx = [
        row
        for size in args.approx_sizes
        for row in approximate_rows(
            size, args.bits, args.queries, args.indexes, args.hnsw_max, max(3, args.repeats // 4)
        )
    ]
    if approx:
        approx_header = [
            "clustered codes",
            "index",
            "q/s (k=10)",
            "recall@10",
            "recall@100",
            "build s",
            "bytes per code",
            "q/s vs flat",
        ]
        notes += (
            "\n\n## Past brute force\n\n"
            + markdown_table(approx_header, approx)
            + f"\n{args.queries} queries; index parameters are the bundle defaults (`hashtune.retrieval.index`: ivf "
            "nlist about "
            "4 sqrt(n), at most 4,096 and 39+ codes per list, k-means on 64 codes per list for 10 iterations, nprobe "
            "32; hnsw m 32, "
            "ef_search 64). Recall is tie-aware."
        )
    command = (
        f"python -m benchmarks.bench_retrieval --sizes {' '.join(map(str, args.sizes))} --ks "
        f"{' '.join(map(str, args.ks))} "
        f"--queries {args.queries} --approx-sizes {' '.join(map(str, args.approx_sizes))} --indexes "
        f"{' '.join(args.indexes)}"
    )
    write_report(args.out, "Hamming search throughput", command, markdown_table(header, rows), notes)


if __name__ == "__main__":
    main()
