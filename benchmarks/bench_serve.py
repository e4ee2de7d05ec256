"""The retrieval service under closed-loop load, beside the in-process limit of the same work.

Run: `python -m benchmarks.bench_serve` (writes results/bench_serve.md and results/serve/page.png).
Trains a small digits model at 32 bits, exports it twice (a `flat` and an `ivf` index, with thumbnails),
then for each bundle: starts `python -m hashtune.serve --bundle B` on 127.0.0.1 (start-up = command to
the first answered search), and drives `/search` (one digits PNG per request, k = 10, JSON body) from 1,
8 and 32 concurrent clients for `--seconds` each, every client sending its next request when the last one
is answered (aiohttp, one event loop); then `GET /healthz` from 8 clients, which does no work: what Ray
Serve's proxy and replica cost a request by themselves on this machine. Beside it, in the same run, the
in-process limit: `Retriever.encode` + `search` on the same PNG bytes, one image per call as the requests
carry, in a loop for the same time, with one torch thread as the service's one replica has. Targets (issue
25): at 8 clients >= 0.5x the in-process queries/s; at 1 client p99 <= 50 ms; no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._table import markdown_table, write_report
from benchmarks.servers import free_port
from hashtune.config import load_config
from hashtune.data import load_source
from hashtune.paths import RESULTS_DIR
from hashtune.retrieval import Retriever
from hashtune.retrieval.export import main as export_main
from hashtune.train.trainer import fit

MODEL = ["model.depth=2", "model.embed_dim=32", "model.num_heads=2", "model.bits=32", "train.warmup_epochs=1"]
TARGET_RATIO, TARGET_P99_MS = 0.5, 50.0


def build_bundles(root: Path, epochs: int) -> dict[str, Path]:
    """A digits model at 32 bits, exported with a flat and an ivf index (thumbnails for the page)."""
    fit(load_config(overrides=[*MODEL, f"train.epochs={epochs}"]), run_dir=root / "run")
    bundles = {}
    for index in ("flat", "ivf"):
        bundles[index] = root / f"bundle-{index}"
        argv = ["--run-dir", str(root / "run"), "--index", index, "--thumbnails", "--out", str(bundles[index])]
        assert export_main(argv) == 0
    return bundles


def query_pngs(bundle: Path, count: int = 32) -> list[bytes]:
    """The bundle's first test queries as PNG bytes, as a client would upload them."""
    pixels = load_source("digits").pixels
    files = []
    for identifier in np.load(bundle / "query_ids.npy")[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels[identifier, :, :, 0], mode="L").save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def in_process(bundle: Path, pngs: list[bytes], seconds: float) -> dict:
    """Queries/s and latencies of decode + encode + search in this process, one image per call."""
    retriever = Retriever.load(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    latencies, deadline, position = [], time.perf_counter() + seconds, 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            image = Image.open(io.BytesIO(pngs[position % len(pngs)]))
            retriever.search([image], k=10)
            latencies.append(time.perf_counter() - start)
            position += 1
    finally:
        torch.set_num_threads(threads)
    return {"queries": len(latencies), "seconds": seconds, "latencies": latencies, "errors": 0}


async def _closed_loop(url: str, bodies: list[bytes] | None, clients: int, seconds: float) -> dict:
    """`clients` concurrent loops of POST `url` (a body each, in turn), or GET `url` without bodies, for `seconds`."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(session, number: int) -> None:
        nonlocal errors
        position = number
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                body = bodies[position % len(bodies)] if bodies else None
                request = session.post(url, data=body, headers=_JSON) if body else session.get(url)
                async with request as answer:
                    await answer.read()
                    ok = answer.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
            position += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session, number) for number in range(clients)))
    return {"queries": len(latencies), "seconds": seconds, "latencies": latencies, "errors": errors}


_JSON = {"content-type": "application/json"}


class Service:
    """`python -m hashtune.serve --bundle B` in its own session, stopped by SIGTERM (its Ray with it)."""

    def __init__(self, bundle: Path) -> None:
        self.port, self.temp = free_port(), tempfile.mkdtemp(prefix="bs", dir="/tmp")
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "hashtune.serve", "--bundle", str(bundle), "--port", str(self.port)]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=os.environ | {"RAY_TMPDIR": self.temp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def first_answer_s(self, body: bytes, timeout: float = 300.0) -> float:
        import urllib.request

        while time.perf_counter() - self.started < timeout:
            request = urllib.request.Request(f"{self.url}/search", data=body, headers=_JSON, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the service gave no answer in {timeout:.0f} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def _row(index: str, what: str, measured: dict, startup: float | None = None) -> list:
    milliseconds = np.asarray(measured["latencies"]) * 1000
    return [
        index,
        what,
        f"{measured['queries'] / measured['seconds']:.1f}",
        f"{np.percentile(milliseconds, 50):.1f}" if len(milliseconds) else "-",
        f"{np.percentile(milliseconds, 99):.1f}" if len(milliseconds) else "-",
        str(measured["errors"]),
        f"{startup:.1f}" if startup is not None else "",
    ]


def measure(bundle: Path, index: str, pngs: list[bytes], seconds: float, clients: list[int]) -> tuple[list, dict]:
    bodies = [json.dumps({"images": [base64.b64encode(png).decode()], "k": 10}).encode() for png in pngs]
    limit = in_process(bundle, pngs, seconds)
    rows, figures = [_row(index, "in process (1 thread)", limit)], {"in_process": limit}
    service = Service(bundle)
    try:
        startup = service.first_answer_s(bodies[0])
        asyncio.run(_closed_loop(f"{service.url}/search", bodies, 2, 2.0))  # warm-up, not counted
        for count in clients:
            figures[count] = asyncio.run(_closed_loop(f"{service.url}/search", bodies, count, seconds))
            rows.append(
                _row(index, f"served, {count} clients", figures[count], startup if count == clients[0] else None)
            )
        figures["healthz"] = asyncio.run(_closed_loop(f"{service.url}/healthz", None, 8, seconds))
        rows.append(_row(index, "GET /healthz, 8 clients (Serve alone)", figures["healthz"]))
    finally:
        service.stop()
    figures["startup"] = startup
    return rows, figures


def screenshot(bundle: Path, png: bytes, out: Path) -> None:
    """The page after a query, in headless Chromium: the README's picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from benchmarks.browser import headless_chromium

    service = Service(bundle)
    query = Path(service.temp) / "query.png"
    query.write_bytes(png)
    try:
        service.first_answer_s(json.dumps({"images": [base64.b64encode(png).decode()]}).encode())
        with headless_chromium(1000, 660) as driver:
            driver.get(service.url)
            driver.find_element(By.ID, "file").send_keys(str(query))
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.neighbour")) == 10)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
    finally:
        service.stop()


def _verdicts(figures: dict) -> list[str]:
    lines = []
    for index, measured in figures.items():
        limit = measured["in_process"]["queries"] / measured["in_process"]["seconds"]
        at_8 = measured[8]["queries"] / measured[8]["seconds"] if 8 in measured else None
        p99 = np.percentile(np.asarray(measured[1]["latencies"]) * 1000, 99) if 1 in measured else None
        errors = sum(m["errors"] for key, m in measured.items() if isinstance(key, int) or key == "healthz")
        if at_8 is not None:
            met = "met" if at_8 >= TARGET_RATIO * limit else "not met"
            lines.append(f"- {index}: 8 clients {at_8:.1f} q/s = {at_8 / limit:.2f}x in-process {limit:.1f} ({met}).")
        if p99 is not None:
            met = "met" if p99 <= TARGET_P99_MS else "not met"
            lines.append(f"- {index}: 1 client p99 {p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms: {met}).")
        floor = measured["healthz"]["queries"] / measured["healthz"]["seconds"]
        lines.append(
            f"- {index}: Serve alone (GET /healthz, no work, 8 clients) answers {floor:.1f} q/s = {floor / limit:.2f}x "
            f"the in-process limit; searches at 8 clients reach {at_8 / floor if at_8 else float('nan'):.2f}x that."
        )
        lines.append(
            f"- {index}: {errors} errors ({'met' if errors == 0 else 'not met'}); start-up "
            f"{measured['startup']:.1f} s from the command to the first answered search."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="load time per row (default 15)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the served model")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_serve.md")
    parser.add_argument("--screenshot", type=Path, default=RESULTS_DIR / "serve" / "page.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        bundles = build_bundles(Path(scratch), args.epochs)
        pngs = query_pngs(bundles["flat"])
        rows, figures = [], {}
        for index, bundle in bundles.items():
            index_rows, figures[index] = measure(bundle, index, pngs, args.seconds, args.clients)
            rows += index_rows
        if args.screenshot:
            screenshot(bundles["flat"], pngs[0], args.screenshot)
    table = markdown_table(["index", "load", "queries/s", "p50 ms", "p99 ms", "errors", "start-up s"], rows)
    command = "python -m benchmarks.bench_serve" + (" " + " ".join(argv) if argv else "")
    notes = "\n".join(["Targets (issue 25), measured side by side in this run:", *_verdicts(figures)])
    write_report(args.out, "Serving: queries/s and latency of hashtune.serve", command, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
