"""Retrieve with a bundle from the command line.

    python -m hashtune.retrieve --bundle BUNDLE --image q1.png [--image q2.png ...] [-k 10] [--radius R] [--json]
                                [--show neighbours.png]
    python -m hashtune.retrieve --bundle BUNDLE --eval

`--json` prints one object::

    {"bundle": "...", "k": 10, "radius": null,
     "results": [{"image": "q1.png", "code": "9f03...",            # packed code, hex
                  "neighbours": [{"id": 17, "distance": 0, "labels": [3]}, ...]}]}

`labels` are the class indices of the neighbour's multi-hot label. `--eval` recomputes the test mAP
from the bundle's stored codes and compares it with the exporting run's `test/mAP`: exit 0 when they
agree (to 1e-9), 1 when not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from hashtune.errors import HashtuneError
from hashtune.metric_names import TEST_MAP
from hashtune.paths import no_world_write
from hashtune.retrieval.retriever import Retriever, evaluate_bundle, query_answers
from hashtune.retrieval.show import draw_neighbours

TOLERANCE = 1e-9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hashtune.retrieve", description="Search a bundle's database with query images."
    )
    parser.add_argument("--bundle", type=Path, required=True, help="a folder written by python -m hashtune.export")
    parser.add_argument("--image", type=Path, action="append", default=[], help="a query image file (repeatable)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--radius", type=int, help="return everything within this Hamming radius instead of the top k")
    parser.add_argument(
        "--show", type=Path, help="also draw each query beside its neighbours' thumbnails into this PNG (matplotlib)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the documented shape) instead of a table")
    parser.add_argument(
        "--eval", action="store_true", help="recompute the test mAP from the stored codes and compare with the run's"
    )
    return parser


def _picture(path: Path) -> np.ndarray:
    """A query file as it looks (already read once by the encoder, so it is a readable, bounded image)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _evaluate(bundle: Path) -> int:
    recomputed = evaluate_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    run_map = manifest.get("provenance", {}).get("run_metrics", {}).get(TEST_MAP)
    report = {"bundle": str(bundle), "test_mAP_from_codes": recomputed, "run_test_mAP": run_map}
    report["equal"] = run_map is not None and abs(recomputed - run_map) <= TOLERANCE
    print(json.dumps(report))
    return 0 if report["equal"] or run_map is None else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_world_write()
    try:
        if args.eval:
            return _evaluate(args.bundle)
        if not args.image:
            print("hashtune.retrieve: error: give at least one --image (or --eval)", file=sys.stderr)
            return 2
        retriever = Retriever.load(args.bundle)
        codes = retriever.encode(args.image)
        per_query, rows = query_answers(retriever, codes, k=args.k, radius=args.radius)
        if args.show is not None:
            queries = [_picture(image) for image in args.image]
            draw_neighbours(queries, per_query, rows, retriever.thumbnails, args.show)
    except HashtuneError as error:
        print(f"hashtune.retrieve: error: {error}", file=sys.stderr)
        return error.exit_code
    output = {
        "bundle": str(args.bundle),
        "k": None if args.radius is not None else args.k,
        "radius": args.radius,
        "results": [
            {"image": str(image), "code": code.tobytes().hex(), "neighbours": neighbours}
            for image, code, neighbours in zip(args.image, codes, per_query)
        ],
    }
    if args.json:
        print(json.dumps(output))
    else:
        for entry in output["results"]:
            print(f"{entry['image']} (code {entry['code']}):")
            for rank, n in enumerate(entry["neighbours"], 1):
                print(f"  {rank:>3}. id {n['id']}  distance {n['distance']}  labels {n['labels']}")
    return 0
