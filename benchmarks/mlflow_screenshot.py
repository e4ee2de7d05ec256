"""Screenshot MLflow's run-comparison view of a sweep with headless Chromium (for the README).

Run: `python -m benchmarks.mlflow_screenshot --experiment ablations --out results/ablations/mlflow_compare.png`
Starts `mlflow ui` on 127.0.0.1 over the store, opens the compare view of the experiment's finished
trial runs in Debian's `chromium --headless`, saves the PNG, and stops the server (by its process group).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

from benchmarks.servers import mlflow_server

RESULTS = Path(__file__).resolve().parent.parent / "results"


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
    with mlflow_server(args.mlflow_uri, ui=True) as server:
        ids = json.dumps([run.info.run_id for run in runs])
        experiments = urllib.parse.quote(json.dumps([experiment.experiment_id]))
        url = f"{server.url}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={experiments}"
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
    print(f"{len(runs)} runs compared: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
