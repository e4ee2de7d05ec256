"""Screenshot MLflow's run-comparison view of a sweep with headless Chromium (for the README).

Run: `python scripts/mlflow_screenshot.py --experiment ablations --out results/ablations/mlflow_compare.png`
Starts `mlflow ui` on 127.0.0.1 over the store, opens the compare view of the experiment's finished
trial runs in Debian's `chromium --headless`, saves the PNG, and stops the server (by its process group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="ablations")
    parser.add_argument("--mlflow-uri", default=f"sqlite:///{RESULTS / 'mlflow.db'}")
    parser.add_argument("--out", type=Path, default=RESULTS / "ablations" / "mlflow_compare.png")
    parser.add_argument("--size", default="1600,2400")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print(
            "mlflow_screenshot: error: no chromium on PATH; install Debian's (apt-get install chromium)",
            file=sys.stderr,
        )
        return 2
    client = MlflowClient(args.mlflow_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"mlflow_screenshot: error: no experiment {args.experiment!r} in {args.mlflow_uri}", file=sys.stderr)
        return 2
    runs = client.search_runs([experiment.experiment_id], "tags.`hashtune.status` = 'finished'", max_results=100)
    port = _free_port()
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            args.mlflow_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        ids = json.dumps([run.info.run_id for run in runs])
        experiments = urllib.parse.quote(json.dumps([experiment.experiment_id]))
        url = f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={experiments}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={args.size}",
                "--virtual-time-budget=20000",
                f"--screenshot={args.out.absolute()}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"{len(runs)} runs compared: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
